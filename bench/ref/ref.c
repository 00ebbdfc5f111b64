/* Consumer for the C reference: loads the programs of one event from
 * ref.bpf.c, filtered to one pid or one cgroup, drains the ring buffer in
 * batches every few milliseconds, and prints one JSON line when told to stop
 * (SIGTERM/SIGINT, or after --seconds).
 *
 *   ref (--pid PID | --cgroup ID) [--event openat|connect|exec] [--drain-ms 5]
 *       [--ring-bytes 8388608] [--seconds N]
 *
 * Prints "ready" on stdout once attached; CPU time is counted from then.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include "ref.skel.h"

static volatile sig_atomic_t stop;
static unsigned long long consumed;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx; (void)data;
	if (size == 64)
		consumed++;
	return 0;
}

static long long tv_ns(struct timeval tv) { return tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL; }

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int pid = 0, drain_ms = 5;
	unsigned long long cgroup = 0;
	const char *event = "openat";
	unsigned ring_bytes = 8u << 20;
	double seconds = 0;
	static const struct option opts[] = {
		{"pid", required_argument, 0, 'p'}, {"drain-ms", required_argument, 0, 'd'},
		{"ring-bytes", required_argument, 0, 'r'}, {"seconds", required_argument, 0, 's'},
		{"cgroup", required_argument, 0, 'c'}, {"event", required_argument, 0, 'e'}, {0},
	};
	for (int c; (c = getopt_long(argc, argv, "p:d:r:s:c:e:", opts, NULL)) != -1;) {
		switch (c) {
		case 'p': pid = atoi(optarg); break;
		case 'd': drain_ms = atoi(optarg); break;
		case 'r': ring_bytes = strtoul(optarg, NULL, 0); break;
		case 's': seconds = atof(optarg); break;
		case 'c': cgroup = strtoull(optarg, NULL, 0); break;
		case 'e': event = optarg; break;
		default:
			fprintf(stderr, "usage: %s (--pid PID | --cgroup ID) [--event openat|connect|exec] [--drain-ms MS] "
				"[--ring-bytes N] [--seconds S]\n", argv[0]);
			return 2;
		}
	}
	if (pid <= 0 && !cgroup) {
		fprintf(stderr, "ref: --pid or --cgroup is required\n");
		return 2;
	}
	if (strcmp(event, "openat") && strcmp(event, "connect") && strcmp(event, "exec")) {
		fprintf(stderr, "ref: unknown --event %s (openat, connect, exec)\n", event);
		return 2;
	}

	struct ref_bpf *skel = ref_bpf__open();
	if (!skel) {
		fprintf(stderr, "ref: open: %s\n", strerror(errno));
		return 1;
	}
	skel->rodata->target_pid = pid;
	skel->rodata->target_cgroup = cgroup;
	/* The programs of the measured event only. */
	struct bpf_program *prog;
	bpf_object__for_each_program(prog, skel->obj)
		bpf_program__set_autoload(prog, strstr(bpf_program__name(prog), event) != NULL);
	bpf_map__set_max_entries(skel->maps.ref_events, ring_bytes);
	int err = ref_bpf__load(skel);
	if (!err)
		err = ref_bpf__attach(skel);
	if (err) {
		fprintf(stderr, "ref: load/attach: %s\n", strerror(-err));
		ref_bpf__destroy(skel);
		return 1;
	}
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.ref_events), on_record, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "ref: ring_buffer__new: %s\n", strerror(errno));
		ref_bpf__destroy(skel);
		return 1;
	}

	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	double t0 = now_s();
	printf("ready\n");
	fflush(stdout);

	struct timespec nap = {.tv_sec = drain_ms / 1000, .tv_nsec = (drain_ms % 1000) * 1000000L};
	unsigned long long drains = 0;
	while (!stop && !(seconds > 0 && now_s() - t0 >= seconds)) {
		nanosleep(&nap, NULL);
		if (ring_buffer__consume(rb) < 0 && errno != EINTR)
			break;
		drains++;
	}
	ring_buffer__consume(rb);
	getrusage(RUSAGE_SELF, &ru1);

	long long user_ns = tv_ns(ru1.ru_utime) - tv_ns(ru0.ru_utime);
	long long sys_ns = tv_ns(ru1.ru_stime) - tv_ns(ru0.ru_stime);
	printf("{\"events\": %llu, \"lost\": %llu, \"user_ns\": %lld, \"sys_ns\": %lld, \"cpu_ns\": %lld, "
	       "\"drains\": %llu, \"wall_s\": %.6f}\n",
	       consumed, (unsigned long long)skel->bss->ref_lost, user_ns, sys_ns, user_ns + sys_ns, drains,
	       now_s() - t0);
	fflush(stdout);
	ring_buffer__free(rb);
	ref_bpf__destroy(skel);
	return 0;
}
