/* dgramlog PATH: connects one datagram unix socket to PATH (a syslog-style listener
 * outside the container) and sends "tick N" on it every 100 ms, N counting from 1, for
 * ever. The socket stays connected: it is the "external unix socket" CRIU's --ext-unix-sk
 * is about. */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: dgramlog PATH\n");
        return 2;
    }
    int sk = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (sk < 0 || connect(sk, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("dgramlog: connect");
        return 1;
    }
    struct timespec t = {0, 100 * 1000 * 1000};
    for (unsigned long n = 1;; n++) {
        char msg[32];
        int len = snprintf(msg, sizeof msg, "tick %lu", n);
        send(sk, msg, len, 0); /* a listener gone for a while loses ticks, no more */
        nanosleep(&t, NULL);
    }
}
