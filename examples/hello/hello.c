/* hello: echoes its request body back, prefixed with "hello, ".
 * WASI command ABI: request on stdin, response on stdout. */
#include <stdio.h>

int main(void) {
    char buf[65536];
    size_t n;
    fputs("hello, ", stdout);
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        fwrite(buf, 1, n, stdout);
    }
    return 0;
}
