/* wait: waits as long as its input says (milliseconds, default 100, at most 10,000) in a
 * host call (WASI poll_oneoff), using no CPU meanwhile, and says how long, followed by
 * whatever came after the number ("50 #7" answers "waited 50 ms #7"). An I/O-bound
 * function: what a worker holds is calls in flight, not cores (bench/swarm.py's burst). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    buf[n] = 0;
    char *rest = buf;
    long ms = n > 0 ? strtol(buf, &rest, 10) : 100;
    if (ms < 0) ms = 0;
    if (ms > 10000) ms = 10000;
    while (*rest && isspace((unsigned char)*rest)) rest++;
    size_t len = strlen(rest);
    while (len > 0 && isspace((unsigned char)rest[len - 1])) rest[--len] = 0;
    usleep((useconds_t)ms * 1000);
    if (len > 0) {
        printf("waited %ld ms %s\n", ms, rest);
    } else {
        printf("waited %ld ms\n", ms);
    }
    return 0;
}
