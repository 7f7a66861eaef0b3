/* ferry's benchmark workload: holds SIZE MiB of memory filled with a pseudo-random pattern,
 * writes "ready <checksum>" to DIR/ready, then a counter to DIR/count every 100 ms.
 * With "mixed", every other MiB holds a value per 512 bytes instead (it compresses).
 * Usage: memhold SIZE_MIB DIR [mixed] */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static void put(const char *dir, const char *name, const char *text) {
    char path[4096], tmp[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: memhold SIZE_MIB DIR\n"); return 2; }
    size_t n = (size_t)atol(argv[1]) << 20;
    int mixed = argc > 3 && strcmp(argv[3], "mixed") == 0;
    uint64_t *mem = malloc(n), x = 88172645463325252ULL, sum = 0;
    if (!mem) return 1;
    for (size_t i = 0; i < n / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        mem[i] = mixed && !((i >> 17) & 1) ? i >> 6 : x;
        sum += mem[i];
    }
    char buf[64];
    snprintf(buf, sizeof buf, "ready %llu\n", (unsigned long long)sum);
    put(argv[2], "ready", buf);
    for (unsigned long c = 1;; c++) {
        snprintf(buf, sizeof buf, "%lu\n", c);
        put(argv[2], "count", buf);
        struct timespec t = {0, 100 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
}
