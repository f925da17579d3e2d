/* openfile: tries to read /etc/passwd. Without a granted directory the
 * sandbox has no filesystem, so this must fail. */
#include <stdio.h>

int main(void) {
    FILE *f = fopen("/etc/passwd", "r");
    if (!f) {
        perror("open /etc/passwd");
        return 1;
    }
    char line[256];
    if (fgets(line, sizeof line, f)) fputs(line, stdout);
    fclose(f);
    return 0;
}
