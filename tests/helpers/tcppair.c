/* tcppair PORT DIR: a TCP server and its client in one container, talking over 127.0.0.1.
 * The server (this process) listens, forks the client, accepts it, and writes each number it
 * receives to DIR/recv (replaced atomically). The client sends "1\n", "2\n", … every 100 ms
 * through the one connection. A broken connection ends both: the server writes DIR/error and
 * exits 1, so the numbers in DIR/recv stop. Used to prove an established connection survives
 * checkpoint/restore with --tcp-established. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

static void fail(const char *dir, const char *what) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s: %s\n", what, strerror(errno));
    put(dir, "error", buf);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: tcppair PORT DIR\n");
        return 2;
    }
    const char *dir = argv[2];
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 1) < 0)
        fail(dir, "server listen");

    pid_t child = fork();
    if (child < 0) fail(dir, "fork");
    if (child == 0) {
        close(ls);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
            fail(dir, "client connect");
        for (unsigned long long c = 1;; c++) {
            char buf[32];
            int len = snprintf(buf, sizeof buf, "%llu\n", c);
            if (write(s, buf, len) != len) fail(dir, "client send");
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }

    int s = accept(ls, NULL, NULL);
    if (s < 0) fail(dir, "server accept");
    close(ls);
    put(dir, "connected", "1\n");
    char line[64];
    size_t have = 0;
    for (;;) {
        char ch;
        ssize_t k = read(s, &ch, 1);
        if (k == 0) { errno = ECONNRESET; fail(dir, "server read: the client closed"); }
        if (k < 0) {
            if (errno == EINTR) continue;
            fail(dir, "server read");
        }
        if (ch == '\n') {
            line[have] = '\n';
            line[have + 1] = 0;
            put(dir, "recv", line);
            have = 0;
        } else if (have < sizeof line - 2) {
            line[have++] = ch;
        }
    }
}
