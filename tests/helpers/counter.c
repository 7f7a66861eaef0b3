/* counter MIB [FILE]: holds MIB MiB of memory filled with a known pattern, prints the
 * pattern's checksum, then every 100 ms increments a counter and writes it to stdout and
 * (replacing it atomically) to FILE. SIGTERM makes it exit 0. Used to see that a container runs, is
 * paused, and (later) that a restored one continues rather than restarts. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static uint64_t checksum(const uint64_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
    const char *file = argc > 2 ? argv[2] : NULL;
    size_t n = mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *mem = NULL;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);

    if (n) {
        mem = malloc(n * sizeof(uint64_t));
        if (!mem) { perror("malloc"); return 2; }
        for (size_t i = 0; i < n; i++) mem[i] = i * 0x9E3779B97F4A7C15ULL;
    }
    uint64_t first = checksum(mem, n);
    printf("checksum %016llx\n", (unsigned long long)first);
    fflush(stdout);

    for (unsigned long long c = 1; !stop; c++) {
        printf("%llu\n", c);
        fflush(stdout);
        if (file) {
            /* Write a temp file and rename it, so a reader never sees a half-written value. */
            char buf[32], tmp[4096];
            int len = snprintf(buf, sizeof buf, "%llu\n", c);
            snprintf(tmp, sizeof tmp, "%s.tmp", file);
            int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) {
                if (write(fd, buf, len) == len) rename(tmp, file);
                close(fd);
            }
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* The memory must still hold the pattern when we leave. */
    if (checksum(mem, n) != first) return 3;
    return 0;
}
