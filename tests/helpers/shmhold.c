/* shmhold MIB DIR: fills MIB MiB of shared anonymous memory (MAP_SHARED) with a known
 * pattern, forks a child that keeps the mapping too, and every 100 ms writes
 * "<count> <sum of the bytes>" to DIR/shmsum (renamed into place). CRIU dumps such memory
 * as shared memory (pagemap-shmem-*.img), a path of its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: shmhold MIB DIR\n");
		return 2;
	}
	size_t n = (size_t)atol(argv[1]) << 20;
	unsigned char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 7 + 3);
	if (fork() == 0)
		for (;;)
			pause();
	char path[4096], tmp[4096];
	snprintf(path, sizeof(path), "%s/shmsum", argv[2]);
	snprintf(tmp, sizeof(tmp), "%s/shmsum.tmp", argv[2]);
	for (unsigned long k = 1;; k++) {
		unsigned long s = 0;
		for (size_t i = 0; i < n; i++)
			s += p[i];
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "%lu %lu\n", k, s);
			fclose(f);
			rename(tmp, path);
		}
		usleep(100000);
	}
}
