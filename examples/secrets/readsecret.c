/* readsecret: prints the secret named on stdin, as a function reads it from
 * /var/openfaas/secrets/NAME. With "write:NAME" it tries to overwrite the file instead,
 * which must fail: a function's secrets are read-only. With "ls" it lists the folder. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    char name[256] = {0}, path[512];
    size_t n = fread(name, 1, sizeof name - 1, stdin);
    while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == '\r')) name[--n] = 0;
    if (!strcmp(name, "ls")) {
        DIR *d = opendir("/var/openfaas/secrets");
        if (!d) {
            perror("opendir /var/openfaas/secrets");
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') printf("%s\n", e->d_name);
        closedir(d);
        return 0;
    }
    int write = !strncmp(name, "write:", 6);
    snprintf(path, sizeof path, "/var/openfaas/secrets/%s", write ? name + 6 : name);
    FILE *f = fopen(path, write ? "w" : "r");
    if (!f) {
        perror(path);
        return 1;
    }
    if (write) {
        fputs("overwritten", f);
        fclose(f);
        printf("wrote %s\n", path);
        return 0;
    }
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, got, stdout);
    fclose(f);
    return 0;
}
