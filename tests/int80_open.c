/* Opens a file with the 32-bit open syscall (int 0x80) from a 64-bit process,
 * bypassing the 64-bit syscalls' tracepoints, then reads it. Built -no-pie,
 * so the path's static buffer has a 32-bit address. Exit: 0 read ok, 2 no
 * 32-bit syscalls here, 3 the open or the read failed (error on stderr). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char path[4096];

int main(int argc, char **argv)
{
	long fd;
	char buf[64];

	if (argc < 2 || (unsigned long)path > 0xffffffffUL)
		return 2;
	snprintf(path, sizeof(path), "%s", argv[1]);
	/* ia32 open(path, O_RDONLY, 0) */
	__asm__ volatile("int $0x80" : "=a"(fd) : "a"(5L), "b"(path), "c"(0L), "d"(0L) : "memory");
	if (fd == -ENOSYS)
		return 2;
	if (fd < 0) {
		fprintf(stderr, "int 0x80 open: %s\n", strerror(-fd));
		return 3;
	}
	if (read(fd, buf, sizeof(buf)) < 0) {
		perror("read");
		return 3;
	}
	printf("read through int 0x80\n");
	return 0;
}
