/* Workload generator: N x (openat(AT_FDCWD, "/dev/null", O_RDONLY) + close).
 *
 *   openat_loop N [RATE]
 *
 * Prints "ready", waits for a line on stdin (so a tracer can attach to this
 * pid first), runs the loop as fast as possible or, with RATE > 0, paced to
 * RATE calls per second (busy-waiting on clock_gettime), then prints the
 * elapsed nanoseconds of the loop.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s N [RATE]\n", argv[0]);
		return 2;
	}
	long long n = atoll(argv[1]);
	double rate = argc > 2 ? atof(argv[2]) : 0;
	char line[64];

	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	long long failed = 0;
	long long t0 = now_ns();
	if (rate > 0) {
		double step = 1e9 / rate;
		for (long long i = 0; i < n; i++) {
			long long due = t0 + (long long)(i * step);
			while (now_ns() < due)
				;
			int fd = openat(AT_FDCWD, "/dev/null", O_RDONLY);
			if (fd >= 0)
				close(fd);
			else
				failed++;
		}
	} else {
		for (long long i = 0; i < n; i++) {
			int fd = openat(AT_FDCWD, "/dev/null", O_RDONLY);
			if (fd >= 0)
				close(fd);
			else
				failed++;
		}
	}
	long long elapsed = now_ns() - t0;
	printf("%lld %lld\n", elapsed, failed);
	fflush(stdout);
	return failed ? 1 : 0;
}
