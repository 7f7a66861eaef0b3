/* memhold MIB SEED DIR: holds MIB MiB filled with a pseudo-random pattern from SEED and writes,
 * (a SEED written zSEED makes every other MiB compressible: a value per 512 bytes)
 * each file replaced atomically (written as a temp file, then renamed):
 *   DIR/checksum  the pattern's checksum, once at start
 *   DIR/count     "RUNID COUNT", every 100 ms; RUNID is fixed at start, so a restarted process
 *                 (rather than a restored one) shows a new RUNID and a count from 1
 *   DIR/rehash    "N CHECKSUM" after the Nth SIGUSR1: the memory hashed again, now
 * SIGTERM makes it exit 0. Used to prove that a restored process has its memory and goes on. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop, rehash_wanted;
static void on_term(int sig) { (void)sig; stop = 1; }
static void on_usr1(int sig) { (void)sig; rehash_wanted = 1; }

static uint64_t checksum(const uint64_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void put(const char *dir, const char *name, const char *text) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    size_t len = strlen(text);
    if (write(fd, text, len) == (ssize_t)len) rename(tmp, path);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: memhold MIB SEED DIR\n");
        return 2;
    }
    size_t n = strtoul(argv[1], NULL, 10) * 1024 * 1024 / sizeof(uint64_t);
    int mixed = argv[2][0] == 'z';
    uint64_t x = strtoull(argv[2] + mixed, NULL, 0) | 1;
    const char *dir = argv[3];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    uint64_t *mem = malloc((n ? n : 1) * sizeof(uint64_t));
    if (!mem) { perror("malloc"); return 2; }
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17; /* xorshift64 */
        mem[i] = mixed && !((i >> 17) & 1) ? i >> 6 : x;
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%016llx\n", (unsigned long long)checksum(mem, n));
    put(dir, "checksum", buf);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long long runid = (unsigned long long)now.tv_sec * 1000000000ULL + now.tv_nsec;
    unsigned long long rehashes = 0;
    for (unsigned long long c = 1; !stop; c++) {
        if (rehash_wanted) {
            rehash_wanted = 0;
            rehashes++;
            snprintf(buf, sizeof buf, "%llu %016llx\n", rehashes,
                     (unsigned long long)checksum(mem, n));
            put(dir, "rehash", buf);
        }
        snprintf(buf, sizeof buf, "%llu %llu\n", runid, c);
        put(dir, "count", buf);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}
