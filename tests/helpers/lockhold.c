/* lockhold FLOCKFILE POSIXFILE CMD [ARG...]: takes an exclusive flock(2) on FLOCKFILE and
 * an exclusive POSIX record lock (fcntl F_SETLK) on the whole of POSIXFILE, then execs
 * CMD with both descriptors still open, so CMD holds both locks (what CRIU's
 * --file-locks is about). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: lockhold FLOCKFILE POSIXFILE CMD [ARG...]\n");
        return 2;
    }
    int a = open(argv[1], O_RDWR | O_CREAT, 0644);
    int b = open(argv[2], O_RDWR | O_CREAT, 0644);
    if (a < 0 || b < 0) {
        perror("lockhold: open");
        return 1;
    }
    if (flock(a, LOCK_EX | LOCK_NB) < 0) {
        perror("lockhold: flock");
        return 1;
    }
    struct flock l;
    memset(&l, 0, sizeof l);
    l.l_type = F_WRLCK;
    l.l_whence = SEEK_SET;
    if (fcntl(b, F_SETLK, &l) < 0) {
        perror("lockhold: fcntl F_SETLK");
        return 1;
    }
    execv(argv[3], argv + 3);
    perror("lockhold: exec");
    return 1;
}
