/* The calls benchmark's workload: calls probed() N times and prints the
 * mean wall ns per call. Modes:
 *   loop N         as fast as it goes, from one call site;
 *   paced N RATE   at RATE calls/s (busy-waiting between batches of 100);
 *   stacks N D     each call from a recursion D deep, depth cycling 1..D,
 *                  so there are D distinct stacks. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) long probed(long x)
{
	__asm__ volatile("" ::: "memory");
	return x ^ 0x5a;
}

__attribute__((noinline)) long descend(long depth, long x)
{
	long r = depth <= 1 ? probed(x) : descend(depth - 1, x);
	__asm__ volatile("" ::: "memory");
	return r + 1;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	long n = atol(argv[2]), sum = 0;
	long long start = now_ns();
	if (!strcmp(argv[1], "loop")) {
		for (long i = 0; i < n; i++)
			sum += probed(i);
	} else if (!strcmp(argv[1], "paced") && argc > 3) {
		double rate = atof(argv[3]);
		for (long i = 0; i < n; i++) {
			if (i % 100 == 0)
				while (now_ns() - start < (long long)(i / rate * 1e9))
					;
			sum += probed(i);
		}
	} else if (!strcmp(argv[1], "stacks") && argc > 3) {
		long depth = atol(argv[3]);
		for (long i = 0; i < n; i++)
			sum += descend(1 + i % depth, i);
	} else {
		return 2;
	}
	long long elapsed = now_ns() - start;
	printf("%.3f %ld\n", (double)elapsed / n, sum & 1);
	return 0;
}
