/* ttycheck: prints whether stdin is a terminal and its name, e.g.
 * "isatty=1 ttyname=/dev/pts/0" or "isatty=0 ttyname=-". */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    int t = isatty(0);
    const char *name = t ? ttyname(0) : NULL;
    printf("isatty=%d ttyname=%s\n", t, name ? name : "-");
    fflush(stdout);
    return 0;
}
