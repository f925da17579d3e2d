/* fail: writes a diagnostic to stderr and exits with status 3. */
#include <stdio.h>

int main(void) {
    fprintf(stderr, "something went wrong: bad input\n");
    return 3;
}
