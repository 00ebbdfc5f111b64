/* Workload generator: a loop of one traced operation.
 *
 *   workload MODE N [RATE]
 *
 * MODE openat:  openat(AT_FDCWD, PATH, O_RDONLY) + close, PATH from the
 *               environment's WORKLOAD_PATH, else /dev/null (an open that
 *               fails counts as failed: a guard's refusal is timed too)
 *      connect: a TCP connect to a listener on 127.0.0.1 (this process's
 *               own), the accept, and both sockets closed with an RST (no
 *               TIME_WAIT, so ports never run out)
 *      exec:    posix_spawn of /bin/true, and the wait for it
 *
 * Prints "ready", waits for a line on stdin (so a tracer can attach to this
 * pid first), runs N operations as fast as possible or, with RATE > 0, paced
 * to RATE per second (busy-waiting on clock_gettime), then prints the elapsed
 * nanoseconds of the loop and the number of failed operations. With
 * WORKLOAD_LATENCIES set, each operation is timed too, and the median and
 * 99th percentile (ns) follow on the same line.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int listener = -1;
static struct sockaddr_in listen_addr;

static int setup_listener(void)
{
	socklen_t len = sizeof(listen_addr);

	listener = socket(AF_INET, SOCK_STREAM, 0);
	listen_addr.sin_family = AF_INET;
	listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (listener < 0 || bind(listener, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) ||
	    listen(listener, 64) || getsockname(listener, (struct sockaddr *)&listen_addr, &len)) {
		perror("workload: listener");
		return -1;
	}
	return 0;
}

static void close_with_reset(int fd)
{
	struct linger reset = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
	close(fd);
}

static const char *open_path = "/dev/null";

static int one_openat(void)
{
	int fd = openat(AT_FDCWD, open_path, O_RDONLY);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static int one_connect(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
	if (fd < 0)
		return -1;
	ok = connect(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) == 0;
	int peer = ok ? accept(listener, NULL, NULL) : -1;
	if (peer >= 0)
		close_with_reset(peer);
	close_with_reset(fd);
	return ok && peer >= 0 ? 0 : -1;
}

static int one_exec(void)
{
	static char *const argv[] = { "true", NULL };
	pid_t pid;
	int status;

	if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ))
		return -1;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		return -1;
	return 0;
}

static int by_value(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	int (*one)(void) = NULL;

	if (argc >= 3) {
		if (!strcmp(argv[1], "openat"))
			one = one_openat;
		else if (!strcmp(argv[1], "connect"))
			one = one_connect;
		else if (!strcmp(argv[1], "exec"))
			one = one_exec;
	}
	if (!one) {
		fprintf(stderr, "usage: %s openat|connect|exec N [RATE]\n", argv[0]);
		return 2;
	}
	long long n = atoll(argv[2]);
	double rate = argc > 3 ? atof(argv[3]) : 0;
	char line[64];

	if (one == one_connect && setup_listener())
		return 1;
	if (getenv("WORKLOAD_PATH"))
		open_path = getenv("WORKLOAD_PATH");
	long long *latencies = getenv("WORKLOAD_LATENCIES") ? calloc(n > 0 ? n : 1, sizeof(long long)) : NULL;
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	long long failed = 0;
	long long t0 = now_ns();
	double step = rate > 0 ? 1e9 / rate : 0;
	for (long long i = 0; i < n; i++) {
		if (step > 0) {
			long long due = t0 + (long long)(i * step);
			while (now_ns() < due)
				;
		}
		long long start = latencies ? now_ns() : 0;
		if (one())
			failed++;
		if (latencies)
			latencies[i] = now_ns() - start;
	}
	long long elapsed = now_ns() - t0;
	if (latencies && n > 0) {
		qsort(latencies, n, sizeof(long long), by_value);
		printf("%lld %lld %lld %lld\n", elapsed, failed, latencies[n / 2], latencies[n * 99 / 100]);
		fflush(stdout);
		return 0;
	}
	printf("%lld %lld\n", elapsed, failed);
	fflush(stdout);
	return failed ? 1 : 0;
}
