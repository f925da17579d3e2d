/* primes: reads a decimal N from stdin (default 100000) and prints how many
 * primes are <= N, counted with a sieve. A compute-bound function whose cost
 * grows with its input, for load and placement tests. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    buf[n] = 0;
    long limit = n ? strtol(buf, NULL, 10) : 100000;
    if (limit < 2) {
        printf("0\n");
        return 0;
    }
    if (limit > 50000000) {
        fprintf(stderr, "N too large: %ld (max 50000000)\n", limit);
        return 2;
    }
    unsigned char *composite = calloc((size_t)limit + 1, 1);
    if (!composite) {
        fprintf(stderr, "out of memory for N=%ld\n", limit);
        return 1;
    }
    long count = 0;
    for (long i = 2; i <= limit; i++) {
        if (composite[i]) continue;
        count++;
        if (i > limit / i) continue; /* i*i would pass limit (and overflow 32 bits) */
        for (long j = i * i; j <= limit; j += i) composite[j] = 1;
    }
    printf("%ld\n", count);
    free(composite);
    return 0;
}
