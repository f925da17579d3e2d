/* remember: looks for what an earlier call left in its memory (a counter in the data
 * segment, marks in a static array spanning several pages, a filled heap block) and
 * leaves its own. Every call runs in a fresh instance, so every call must print "fresh". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned calls = 0;
static char pages[3 * 65536];

int main(void) {
    char *heap = malloc(100000);
    int seen = calls != 0 || pages[0] != 0 || pages[100000] != 0 || pages[196607] != 0 ||
               (heap != NULL && heap[50000] == 'x');
    calls++;
    pages[0] = 1;
    pages[100000] = 1;
    pages[196607] = 1;
    if (heap != NULL) {
        memset(heap, 'x', 100000);
    }
    puts(seen ? "remembered" : "fresh");
    return 0;
}
