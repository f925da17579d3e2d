/* thumbnail: halves a binary PPM (P6) image, averaging each 2x2 block.
 *
 *   thumbnail            one image on stdin, the thumbnail on stdout (exec mode)
 *   thumbnail --stream   requests framed as a 4-byte big-endian length and the bytes on
 *                        stdin, responses framed the same way on stdout (stream mode)
 *   thumbnail --misbehave exit|flood|forkbomb|membomb|hang
 *                        ways a function goes wrong, for the node's tests
 *   thumbnail --cat PATH prints a file, e.g. a secret at /var/openfaas/secrets/NAME
 *
 * Built as a static binary for a FROM scratch image: see build.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *why) {
    fprintf(stderr, "thumbnail: %s\n", why);
    return 2;
}

/* Reads the next header number, skipping whitespace and # comments. */
static int number(const unsigned char *p, size_t n, size_t *i, long *out) {
    while (*i < n) {
        if (p[*i] == '#') {
            while (*i < n && p[*i] != '\n') (*i)++;
        } else if (p[*i] == ' ' || p[*i] == '\n' || p[*i] == '\r' || p[*i] == '\t') {
            (*i)++;
        } else {
            break;
        }
    }
    long v = 0;
    int digits = 0;
    while (*i < n && p[*i] >= '0' && p[*i] <= '9' && digits < 9) {
        v = v * 10 + (p[*i] - '0');
        (*i)++;
        digits++;
    }
    *out = v;
    return digits > 0;
}

/* Halves `in` into a newly allocated image; returns its size, or 0 with *err set. */
static size_t halve(const unsigned char *in, size_t n, unsigned char **out, const char **err) {
    size_t i = 2;
    long w, h, max;
    if (n < 2 || in[0] != 'P' || in[1] != '6') {
        *err = "input is not a binary PPM (P6)";
        return 0;
    }
    if (!number(in, n, &i, &w) || !number(in, n, &i, &h) || !number(in, n, &i, &max) ||
        w < 2 || h < 2 || max != 255 || i >= n) {
        *err = "bad PPM header (need width, height >= 2 and maxval 255)";
        return 0;
    }
    i++; /* the single whitespace after maxval */
    if (n - i < (size_t)(w * h * 3)) {
        *err = "PPM pixel data is shorter than its header says";
        return 0;
    }
    const unsigned char *px = in + i;
    long ow = w / 2, oh = h / 2;
    char head[64];
    int hl = snprintf(head, sizeof head, "P6\n%ld %ld\n255\n", ow, oh);
    size_t size = (size_t)hl + (size_t)(ow * oh * 3);
    unsigned char *o = malloc(size);
    if (!o) {
        *err = "out of memory";
        return 0;
    }
    memcpy(o, head, (size_t)hl);
    unsigned char *q = o + hl;
    for (long y = 0; y < oh; y++)
        for (long x = 0; x < ow; x++)
            for (int c = 0; c < 3; c++) {
                int s = px[((2 * y) * w + 2 * x) * 3 + c] + px[((2 * y) * w + 2 * x + 1) * 3 + c] +
                        px[((2 * y + 1) * w + 2 * x) * 3 + c] +
                        px[((2 * y + 1) * w + 2 * x + 1) * 3 + c];
                *q++ = (unsigned char)((s + 2) / 4);
            }
    *out = o;
    return size;
}

static int read_exact(unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(0, buf + got, n - got);
        if (r <= 0) return 0;
        got += (size_t)r;
    }
    return 1;
}

static int write_all(const unsigned char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(1, buf, n);
        if (w <= 0) return 0;
        buf += w;
        n -= (size_t)w;
    }
    return 1;
}

static int stream(void) {
    for (;;) {
        unsigned char len[4];
        if (!read_exact(len, 4)) return 0; /* stdin closed: done */
        size_t n = ((size_t)len[0] << 24) | ((size_t)len[1] << 16) | ((size_t)len[2] << 8) | len[3];
        unsigned char *in = malloc(n ? n : 1);
        if (!in || !read_exact(in, n)) return fail("short request");
        unsigned char *out = NULL;
        const char *err = NULL;
        size_t m = n == 0 ? 0 : halve(in, n, &out, &err);
        if (n > 0 && m == 0) {
            /* Answer with the error text; the exit code contract is exec mode's. */
            fprintf(stderr, "thumbnail: %s\n", err);
            out = (unsigned char *)strdup(err);
            m = strlen(err);
        }
        unsigned char h[4] = {(unsigned char)(m >> 24), (unsigned char)(m >> 16),
                              (unsigned char)(m >> 8), (unsigned char)m};
        if (!write_all(h, 4) || !write_all(out, m)) return 1;
        free(in);
        free(out);
    }
}

static int misbehave(const char *how) {
    if (!strcmp(how, "exit")) {
        fprintf(stderr, "thumbnail: giving up at once, as asked\n");
        return 3;
    }
    if (!strcmp(how, "flood")) {
        static char block[65536];
        memset(block, 'x', sizeof block);
        for (;;)
            if (write(1, block, sizeof block) <= 0) return 1;
    }
    if (!strcmp(how, "forkbomb")) {
        /* Forks until the pids limit has refused it 1000 times. */
        int made = 0, refused = 0;
        while (refused < 1000) {
            pid_t p = fork();
            if (p == 0) {
                pause();
                _exit(0);
            }
            if (p > 0) made++;
            else refused++;
        }
        printf("forked %d processes before the limit held\n", made);
        return 0;
    }
    if (!strcmp(how, "membomb")) {
        /* Every page touched and every block kept, so the compiler cannot drop the work. */
        static char *volatile keep;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) return 4;
            for (size_t i = 0; i < (1 << 20); i += 4096) ((volatile char *)p)[i] = 1;
            *(char **)p = keep;
            keep = p;
        }
    }
    if (!strcmp(how, "hang")) {
        for (;;) pause();
    }
    return fail("unknown --misbehave mode");
}

static int cat(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return 1;
    }
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, got, stdout);
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--stream")) return stream();
    if (argc > 2 && !strcmp(argv[1], "--cat")) return cat(argv[2]);
    if (argc > 2 && !strcmp(argv[1], "--misbehave")) return misbehave(argv[2]);
    size_t cap = 1 << 16, n = 0;
    unsigned char *in = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            in = realloc(in, cap);
            if (!in) return fail("out of memory");
        }
        ssize_t r = read(0, in + n, cap - n);
        if (r < 0) return fail("cannot read stdin");
        if (r == 0) break;
        n += (size_t)r;
    }
    unsigned char *out = NULL;
    const char *err = NULL;
    size_t m = halve(in, n, &out, &err);
    if (m == 0) return fail(err);
    return write_all(out, m) ? 0 : 1;
}
