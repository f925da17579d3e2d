/* membomb: allocates and touches memory until something stops it.
 * The node's memory cap must stop it with a clear error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keeping every block reachable stops the compiler eliding the allocations. */
char *volatile last_block;

int main(void) {
    size_t total = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) {
            fprintf(stderr, "malloc failed after %zu MiB\n", total >> 20);
            return 1;
        }
        memset(p, 0xAB, 1 << 20);
        last_block = p;
        total += 1 << 20;
    }
}
