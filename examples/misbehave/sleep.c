/* sleep: blocks in a host call (WASI poll_oneoff) for an hour, never running guest code in
 * between. The node must still stop it at its timeout. */
#include <unistd.h>

int main(void) {
    sleep(3600);
    return 0;
}
