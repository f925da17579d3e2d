/* flood: writes 64 MiB to stdout and to stderr. The node must keep only what its caps
 * allow, mark the response as truncated, and stay healthy. */
#include <stdio.h>
#include <string.h>

int main(void) {
    static char block[65536];
    memset(block, 'F', sizeof block);
    for (int i = 0; i < 1024; i++) {
        fwrite(block, 1, sizeof block, stdout);
        fwrite(block, 1, 1024, stderr);
    }
    return 0;
}
