/* wait: waits as long as its input says (milliseconds, default 100, at most 10,000) in a
 * host call (WASI poll_oneoff), using no CPU meanwhile, and says how long. An I/O-bound
 * function: what a worker holds is calls in flight, not cores (bench/swarm.py's burst). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void) {
    char buf[32] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    buf[n] = 0;
    long ms = n > 0 ? strtol(buf, NULL, 10) : 100;
    if (ms < 0) ms = 0;
    if (ms > 10000) ms = 10000;
    usleep((useconds_t)ms * 1000);
    printf("waited %ld ms\n", ms);
    return 0;
}
