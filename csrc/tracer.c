/* Loading the sensors, attaching them, and draining the ring buffer.
 *
 * Sensors are separate BPF objects sharing one ring buffer, one counter map
 * and the filter maps (bpf_map__reuse_fd). Everything a tracer owns is held
 * by file descriptors: nothing is pinned, so a killed consumer leaves nothing
 * attached. Errors name the step and the program or map, and carry what
 * libbpf (and the verifier) said. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>

#include "api.h"
#include "encode.h"
#include "filejudge.h"
#include "loader.h"
#include "process.skel.h"
#include "file.skel.h"
#include "net.skel.h"
#include "ptrace.skel.h"
#include "guard.skel.h"
#include "probe.skel.h"
#include "sockdestroy.skel.h"
#include "calls.skel.h"

/* ---- libbpf's messages, kept for error reports ---- */

#define RG_LOG_KEEP 6144
static __thread char libbpf_log[RG_LOG_KEEP];
static __thread size_t libbpf_log_len;

static int capture_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	static __thread char line[65536];
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, args);
	if (n <= 0)
		return 0;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (getenv("RUNTIMEGUARD_LIBBPF_LOG"))
		fputs(line, stderr);
	/* Keep the tail: the verifier's verdict comes last. */
	if (n >= RG_LOG_KEEP) {
		memmove(line, line + n - (RG_LOG_KEEP - 1), RG_LOG_KEEP - 1);
		n = RG_LOG_KEEP - 1;
		line[n] = 0;
	}
	if (libbpf_log_len + n >= RG_LOG_KEEP) {
		size_t drop = libbpf_log_len + n - RG_LOG_KEEP + 1;
		if (drop > libbpf_log_len)
			drop = libbpf_log_len;
		memmove(libbpf_log, libbpf_log + drop, libbpf_log_len - drop);
		libbpf_log_len -= drop;
	}
	memcpy(libbpf_log + libbpf_log_len, line, n);
	libbpf_log_len += n;
	libbpf_log[libbpf_log_len] = 0;
	return 0;
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_globals(void)
{
	libbpf_set_print(capture_libbpf);
}

void rg_log_reset(void)
{
	pthread_once(&init_once, init_globals);
	libbpf_log_len = 0;
	libbpf_log[0] = 0;
}

int rg_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list args;
	size_t n;

	if (code > 0)
		code = -code;
	if (!code)
		code = -EINVAL;
	va_start(args, fmt);
	n = vsnprintf(err, errlen, fmt, args);
	va_end(args);
	if (n < errlen)
		n += snprintf(err + n, errlen - n, ": %s", strerror(-code));
	if (libbpf_log_len && n < errlen)
		snprintf(err + n, errlen - n, "\n%s", libbpf_log);
	return code;
}

/* ---- sensors ---- */

enum { SENSOR_PROCESS, SENSOR_FILE, SENSOR_NET, SENSOR_PTRACE, SENSOR_GUARD, SENSOR_CALLS, SENSOR_COUNT };

static const char *const sensor_names[SENSOR_COUNT] = { "process", "file", "net", "ptrace", "guard", "calls" };

static const char *const shared_maps[] = { "rg_events", "rg_counters", "rg_filt_pids", "rg_filt_comms",
					   "rg_filt_cgroups" };
#define SHARED_MAP_COUNT (sizeof(shared_maps) / sizeof(shared_maps[0]))

struct sensor {
	void *skel;
	struct bpf_object *obj;
	void (*destroy)(void *skel);
};

#define MAX_LINKS 64
#define RG_JUDGED_BATCH 32

struct rg_tracer {
	struct rg_options opts;
	struct rg_proc_table *proc_table; /* taught by every poll; not ours */
	unsigned long long fresh_cgroups[RG_FRESH_CGROUPS];
	unsigned int stranger_pids[RG_FRESH_CGROUPS];
	unsigned long long stranger_entities[RG_FRESH_CGROUPS];
	unsigned long long poll_cpu_ns;
	struct sensor sensors[SENSOR_COUNT];
	struct bpf_link *links[MAX_LINKS];
	int n_links;
	/* The function probes' links (uprobes, USDT), as many as asked for. */
	struct bpf_link **probe_links;
	int n_probe_links, probe_links_cap;
	int shared_fds[SHARED_MAP_COUNT];
	struct ring_buffer *ring;
	int epoll_fd;
	/* The ring's positions, mapped read-only for the fill level. */
	void *consumer_page, *producer_page;
	size_t page_size;

	struct rg_output out;
	struct rg_encoder enc;
	unsigned int batch_unwanted;
	/* The timed drain: when the ring was last drained, and whether that drain
	 * stopped on a full batch with records left behind. */
	long long last_drain_ms;
	int backlog;
	unsigned long long lost_seen[RG_KIND_SLOTS];
	unsigned long long delivered[RG_KIND_SLOTS];
	unsigned long long bytes, polls;
	int ncpus;
	struct rg_counters *percpu;
	/* The guard's socket destroyer (tracepoint backend), or why it is not loaded. */
	struct rg_sockdestroy *destroyer;
	int destroyer_error;
	char destroyer_why[512];
	/* The guard's fanotify file judge (guard_fanotify), and its decisions
	 * taken from its queue, merged into the ring's records by time. */
	struct rg_file_judge *judge;
	/* The environment scan's settings, as last written to rg_identity_cfg. */
	struct rg_identity_config identity;
	/* The identity patterns this tracer holds (released when it closes). */
	unsigned long long identity_env_bits, identity_argv_bits;
	struct rg_block_record judged[RG_JUDGED_BATCH];
	unsigned int judged_pos, judged_count;
};

/* Sets the rodata every sensor shares, then loads with the shared maps. */
#define OPEN_SENSOR(name)                                                                     \
	static int open_##name(struct rg_tracer *t, struct sensor *s)                            \
	{                                                                                         \
		struct rg_##name *skel = rg_##name##__open();                                      \
		if (!skel)                                                                        \
			return -errno;                                                            \
		skel->rodata->rg_self_tgid = t->opts.self_tgid;                                   \
		skel->rodata->rg_filter_flags = t->opts.filter_flags;                             \
		skel->rodata->rg_event_mask = t->opts.event_mask;                                 \
		skel->rodata->rg_wakeup_bytes = t->opts.wakeup_bytes;                             \
		s->skel = skel;                                                                   \
		s->obj = skel->obj;                                                               \
		s->destroy = (void (*)(void *))rg_##name##__destroy;                               \
		return 0;                                                                         \
	}

OPEN_SENSOR(process)
OPEN_SENSOR(file)
OPEN_SENSOR(net)
OPEN_SENSOR(ptrace)
OPEN_SENSOR(guard)
OPEN_SENSOR(calls)

static int (*const sensor_open[SENSOR_COUNT])(struct rg_tracer *, struct sensor *) = {
	open_process, open_file, open_net, open_ptrace, open_guard, open_calls,
};

static unsigned long long sensor_kinds[SENSOR_COUNT] = {
	[SENSOR_PROCESS] = 1ULL << RG_KIND_PROCESS_EXEC | 1ULL << RG_KIND_PROCESS_FORK | 1ULL << RG_KIND_PROCESS_EXIT,
	[SENSOR_FILE] = 1ULL << RG_KIND_FILE_OPEN | 1ULL << RG_KIND_PROCESS_MEMORY,
	[SENSOR_NET] = 1ULL << RG_KIND_NET_CONNECT | 1ULL << RG_KIND_NET_SENDMSG,
	[SENSOR_PTRACE] = 1ULL << RG_KIND_PTRACE | 1ULL << RG_KIND_PROCESS_MEMORY,
	[SENSOR_CALLS] = 1ULL << RG_KIND_FUNCTION_CALL,
};

static int handle_record(void *ctx, void *data, size_t len);

#define DETACH_THREADS MAX_LINKS

struct detach_job {
	struct bpf_link **links;
	int first, count, stride;
};

static void *detach_some(void *arg)
{
	struct detach_job *job = arg;

	for (int i = job->first; i < job->count; i += job->stride)
		bpf_link__destroy(job->links[i]);
	return NULL;
}

/* Each tracepoint detach waits for an RCU grace period; detached one after
 * another, three dozen take seconds. Detached from parallel threads, the
 * waits overlap and share grace periods. */
static void detach_all(struct bpf_link **links, int count)
{
	pthread_t threads[DETACH_THREADS];
	struct detach_job jobs[DETACH_THREADS];
	int started[DETACH_THREADS] = {};
	int n = count < DETACH_THREADS ? count : DETACH_THREADS;

	for (int k = 0; k < n; k++) {
		jobs[k] = (struct detach_job){ links, k, count, n };
		started[k] = pthread_create(&threads[k], NULL, detach_some, &jobs[k]) == 0;
		if (!started[k])
			detach_some(&jobs[k]);
	}
	for (int k = 0; k < n; k++)
		if (started[k])
			pthread_join(threads[k], NULL);
}

static void tracer_free(struct rg_tracer *t)
{
	detach_all(t->links, t->n_links);
	t->n_links = 0;
	detach_all(t->probe_links, t->n_probe_links);
	t->n_probe_links = 0;
	free(t->probe_links);
	if (t->ring)
		ring_buffer__free(t->ring);
	/* No record of this tracer is decoded any more: its patterns' slots may
	 * be reused. */
	rg_identity_release(t->identity_env_bits, t->identity_argv_bits);
	t->identity_env_bits = t->identity_argv_bits = 0;
	if (t->consumer_page)
		munmap(t->consumer_page, t->page_size);
	if (t->producer_page)
		munmap(t->producer_page, t->page_size);
	/* Before the maps it reads go. */
	rg_file_judge_close(t->judge);
	if (t->destroyer)
		rg_sockdestroy__destroy(t->destroyer);
	for (int i = SENSOR_COUNT - 1; i >= 0; i--)
		if (t->sensors[i].skel)
			t->sensors[i].destroy(t->sensors[i].skel);
	free(t->out.w.buf);
	free(t->out.rows);
	free(t->out.table);
	free(t->percpu);
	free(t);
}

/* Programs for kernel features a kernel may be built without, or whose
 * tracepoint arguments changed: left unloaded there instead of failing the
 * whole sensor or reading the wrong argument. args: the tracepoint's BTF
 * prototype's parameter count (its first is the probe's data pointer). */
static void skip_missing_hooks(struct bpf_object *obj)
{
	static const struct {
		const char *prog, *typedef_name;
		unsigned short args;
	} optional[] = {
		{ "rg_guard_uring", "btf_trace_io_uring_complete", 4 }, /* (ring, req, cqe); older kernels: 7 fields */
		{ "rg_guard_uring_overflow", "btf_trace_io_uring_cqe_overflow", 6 },
	};
	struct btf *vmlinux = NULL;

	for (size_t i = 0; i < sizeof(optional) / sizeof(optional[0]); i++) {
		struct bpf_program *prog = bpf_object__find_program_by_name(obj, optional[i].prog);
		const struct btf_type *proto = NULL;
		int id;

		if (!prog || !bpf_program__autoload(prog))
			continue;
		if (!vmlinux)
			vmlinux = btf__load_vmlinux_btf();
		if (vmlinux && (id = btf__find_by_name_kind(vmlinux, optional[i].typedef_name, BTF_KIND_TYPEDEF)) > 0) {
			const struct btf_type *t = btf__type_by_id(vmlinux, btf__type_by_id(vmlinux, id)->type); /* pointer */
			proto = t && btf_is_ptr(t) ? btf__type_by_id(vmlinux, t->type) : NULL;
		}
		if (!proto || !btf_is_func_proto(proto) || btf_vlen(proto) != optional[i].args)
			bpf_program__set_autoload(prog, false);
	}
	btf__free(vmlinux);
}

#define RG_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Which backend each guard program belongs to, declared once through the
 * skeleton's typed program pointers (a renamed program does not compile).
 * Every program is in exactly one list, or the guard does not load: a new
 * program cannot end up in both backends and judge one operation twice.
 * The fanotify backend is the tracepoint one with files judged elsewhere
 * (rg_guard_config.files_by_fanotify). */
static int choose_guard_backend(struct rg_guard *g, int lsm, char *err, size_t errlen)
{
	struct bpf_program *both[] = {
		g->progs.rg_guard_connect4, g->progs.rg_guard_connect6, g->progs.rg_guard_sendmsg4,
		g->progs.rg_guard_sendmsg6, g->progs.rg_guard_sock_create, g->progs.rg_guard_fork,
		g->progs.rg_guard_exit, g->progs.rg_guard_dns_query, g->progs.rg_guard_dns_answer,
		/* No LSM hook sees these: killed at syscall entry in every backend. */
		g->progs.rg_guard_unshare, g->progs.rg_guard_setns, g->progs.rg_guard_fsmount,
		g->progs.rg_guard_open_tree, g->progs.rg_guard_mount_setattr,
	};
	struct bpf_program *lsm_hooks[] = {
		g->progs.rg_lsm_socket_sendmsg, g->progs.rg_lsm_socket_create, g->progs.rg_lsm_ptrace_access,
		g->progs.rg_lsm_ptrace_traceme, g->progs.rg_lsm_task_alloc, g->progs.rg_lsm_file_open,
		g->progs.rg_lsm_unlink, g->progs.rg_lsm_rmdir, g->progs.rg_lsm_rename, g->progs.rg_lsm_truncate,
		g->progs.rg_lsm_chmod, g->progs.rg_lsm_chown, g->progs.rg_lsm_mknod, g->progs.rg_lsm_mkdir,
		g->progs.rg_lsm_symlink, g->progs.rg_lsm_link, g->progs.rg_lsm_sb_mount, g->progs.rg_lsm_move_mount,
		g->progs.rg_lsm_pivotroot,
	};
	struct bpf_program *tracepoint_judges[] = {
		g->progs.rg_guard_open, g->progs.rg_guard_creat, g->progs.rg_guard_openat, g->progs.rg_guard_openat2,
		g->progs.rg_guard_by_handle, g->progs.rg_guard_uring, g->progs.rg_guard_uring_overflow,
		g->progs.rg_guard_socket, g->progs.rg_guard_ptrace, g->progs.rg_guard_vm_readv,
		g->progs.rg_guard_vm_writev, g->progs.rg_guard_pidfd_getfd, g->progs.rg_guard_clone,
		g->progs.rg_guard_clone3, g->progs.rg_guard_tainted_egress, g->progs.rg_guard_mount,
		g->progs.rg_guard_move_mount, g->progs.rg_guard_pivot_root,
	};
	const struct {
		struct bpf_program **progs;
		size_t count;
		int load;
	} backends[] = {
		{ both, RG_COUNT(both), 1 },
		{ lsm_hooks, RG_COUNT(lsm_hooks), lsm },
		{ tracepoint_judges, RG_COUNT(tracepoint_judges), !lsm },
	};
	struct bpf_program *prog;

	bpf_object__for_each_program(prog, g->obj) {
		int lists = 0;

		for (size_t b = 0; b < RG_COUNT(backends); b++) {
			for (size_t i = 0; i < backends[b].count; i++) {
				if (backends[b].progs[i] != prog)
					continue;
				lists++;
				bpf_program__set_autoload(prog, backends[b].load);
			}
		}
		if (lists != 1)
			return rg_fail(err, errlen, -EINVAL, "guard program %s is in %d backend lists, not exactly one",
				    bpf_program__name(prog), lists);
	}
	return 0;
}

static int load_sensor(struct rg_tracer *t, int i, char *err, size_t errlen)
{
	struct sensor *s = &t->sensors[i];
	int first = t->shared_fds[0] < 0;
	int ret = sensor_open[i](t, s);

	if (ret)
		return rg_fail(err, errlen, ret, "opening the %s sensor", sensor_names[i]);
	for (size_t m = 0; m < SHARED_MAP_COUNT; m++) {
		struct bpf_map *map = bpf_object__find_map_by_name(s->obj, shared_maps[m]);
		if (!map)
			return rg_fail(err, errlen, -ENOENT, "%s sensor: map %s", sensor_names[i], shared_maps[m]);
		if (first) {
			if (m == 0 && (ret = bpf_map__set_max_entries(map, t->opts.ring_bytes)))
				return rg_fail(err, errlen, ret, "sizing ring buffer %s to %llu bytes", shared_maps[m],
					    t->opts.ring_bytes);
		} else if ((ret = bpf_map__reuse_fd(map, t->shared_fds[m]))) {
			return rg_fail(err, errlen, ret, "%s sensor: sharing map %s", sensor_names[i], shared_maps[m]);
		}
	}
	if (i == SENSOR_GUARD && (ret = choose_guard_backend(s->skel, t->opts.guard_lsm, err, errlen)))
		return ret;
	skip_missing_hooks(s->obj);
	if ((ret = bpf_object__load(s->obj)))
		return rg_fail(err, errlen, ret, "loading the %s sensor's BPF programs", sensor_names[i]);
	if (first)
		for (size_t m = 0; m < SHARED_MAP_COUNT; m++)
			t->shared_fds[m] = bpf_map__fd(bpf_object__find_map_by_name(s->obj, shared_maps[m]));
	return 0;
}

/* The guard's socket destroyer shares the guard's taint and socket owner
 * maps. Optional: where it does not load (no bpf_sock_destroy kfunc before
 * Linux 6.5), the guard runs without it and says why. */
static const char *const destroyer_maps[] = { "rg_tainted", "rg_tainted_gone", "rg_sock_owners" };

static int open_destroyer(struct bpf_object *guard, struct rg_sockdestroy **out, char *err, size_t errlen)
{
	struct rg_sockdestroy *skel;
	int ret;

	rg_log_reset();
	*out = NULL;
	if (!(skel = rg_sockdestroy__open()))
		return rg_fail(err, errlen, -errno, "opening the socket destroyer");
	for (size_t m = 0; guard && m < sizeof(destroyer_maps) / sizeof(destroyer_maps[0]); m++) {
		struct bpf_map *theirs = bpf_object__find_map_by_name(guard, destroyer_maps[m]);
		struct bpf_map *ours = bpf_object__find_map_by_name(skel->obj, destroyer_maps[m]);
		if (!theirs || !ours || (ret = bpf_map__reuse_fd(ours, bpf_map__fd(theirs)))) {
			rg_sockdestroy__destroy(skel);
			return rg_fail(err, errlen, theirs && ours ? ret : -ENOENT, "socket destroyer: sharing map %s",
				    destroyer_maps[m]);
		}
	}
	if ((ret = rg_sockdestroy__load(skel))) {
		rg_sockdestroy__destroy(skel);
		return rg_fail(err, errlen, ret, "loading the socket destroyer (iter/tcp, kfunc bpf_sock_destroy)");
	}
	*out = skel;
	return 0;
}

/* Runs the destroyer once: creates an iterator over the TCP sockets of the
 * caller's network namespace and reads it to its end. Returns the number of
 * sockets destroyed or -errno. */
static int run_destroyer(struct rg_sockdestroy *skel, char *err, size_t errlen)
{
	struct bpf_link *link = bpf_program__attach_iter(skel->progs.rg_destroy_tainted, NULL);
	char buf[4096];
	int fd, count = 0, ret = 0;
	ssize_t n;

	if (!link)
		return rg_fail(err, errlen, -errno, "attaching the socket destroyer's iterator");
	if ((fd = bpf_iter_create(bpf_link__fd(link))) < 0) {
		ret = rg_fail(err, errlen, -errno, "creating the socket destroyer's iterator");
		bpf_link__destroy(link);
		return ret;
	}
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			ret = rg_fail(err, errlen, -errno, "reading the socket destroyer's iterator");
			break;
		}
		for (ssize_t i = 0; i < n; i++)
			count += buf[i] == '\n';
	}
	close(fd);
	bpf_link__destroy(link);
	return ret ? ret : count;
}

int rg_tracer_destroy_tainted_sockets(struct rg_tracer *t, char *err, size_t errlen)
{
	rg_log_reset();
	if (!t->destroyer) {
		snprintf(err, errlen, "%s", t->destroyer_why[0] ? t->destroyer_why : "no socket destroyer loaded");
		return t->destroyer_error ? t->destroyer_error : -EOPNOTSUPP;
	}
	return run_destroyer(t->destroyer, err, errlen);
}

int rg_probe_sock_destroy(char *err, size_t errlen)
{
	struct rg_sockdestroy *skel;
	int ret = open_destroyer(NULL, &skel, err, errlen);

	if (ret)
		return ret;
	/* Its own empty maps: every socket's owner is unknown, none is destroyed. */
	ret = run_destroyer(skel, err, errlen);
	rg_sockdestroy__destroy(skel);
	return ret < 0 ? ret : 0;
}

static int map_ring_positions(struct rg_tracer *t, char *err, size_t errlen)
{
	int fd = t->shared_fds[0];

	t->page_size = sysconf(_SC_PAGESIZE);
	t->consumer_page = mmap(NULL, t->page_size, PROT_READ, MAP_SHARED, fd, 0);
	if (t->consumer_page == MAP_FAILED) {
		t->consumer_page = NULL;
		return rg_fail(err, errlen, -errno, "mapping the ring buffer's consumer position");
	}
	t->producer_page = mmap(NULL, t->page_size, PROT_READ, MAP_SHARED, fd, t->page_size);
	if (t->producer_page == MAP_FAILED) {
		t->producer_page = NULL;
		return rg_fail(err, errlen, -errno, "mapping the ring buffer's producer position");
	}
	return 0;
}

/* The fanotify judge reads the guard's configuration and writes its taint. */
static int open_judge(struct rg_tracer *t, char *err, size_t errlen)
{
	struct bpf_object *guard = t->sensors[SENSOR_GUARD].obj;
	struct bpf_map *cfg = bpf_object__find_map_by_name(guard, "rg_guard_cfg");
	struct bpf_map *tainted = bpf_object__find_map_by_name(guard, "rg_tainted");
	char cgroup_root[sizeof(t->opts.cgroup_root) + 1] = "";

	if (!cfg || !tainted)
		return rg_fail(err, errlen, -ENOENT, "the guard sensor has no rg_guard_cfg or rg_tainted map");
	memcpy(cgroup_root, t->opts.cgroup_root, sizeof(t->opts.cgroup_root));
	return rg_file_judge_open(bpf_map__fd(cfg), bpf_map__fd(tainted), cgroup_root, &t->judge, err, errlen);
}

int rg_tracer_open(const struct rg_options *opts, struct rg_tracer **out, char *err, size_t errlen)
{
	struct rg_tracer *t;
	int ret;

	rg_log_reset();
	*out = NULL;
	if (opts->ring_bytes < 4096 || (opts->ring_bytes & (opts->ring_bytes - 1)))
		return rg_fail(err, errlen, -EINVAL, "ring buffer size %llu is not a power of two of at least 4096",
			    opts->ring_bytes);
	t = calloc(1, sizeof(*t));
	if (!t)
		return rg_fail(err, errlen, -ENOMEM, "allocating the tracer");
	t->opts = *opts;
	if (!t->opts.batch_limit)
		t->opts.batch_limit = 4096;
	if (!t->opts.max_latency_ms)
		t->opts.max_latency_ms = 20;
	t->epoll_fd = -1;
	for (size_t m = 0; m < SHARED_MAP_COUNT; m++)
		t->shared_fds[m] = -1;
	t->enc.delivered = t->delivered;

	for (int i = 0; i < SENSOR_COUNT; i++) {
		if (i == SENSOR_GUARD ? opts->guard_cgroup_fd < 0
				      : i != SENSOR_PROCESS && !(sensor_kinds[i] & opts->event_mask))
			continue;
		if ((ret = load_sensor(t, i, err, errlen)))
			goto error;
	}
	if (t->sensors[SENSOR_GUARD].obj && !opts->guard_lsm) {
		/* The LSM backend refuses a tainted process's sends before they queue. */
		t->destroyer_error = open_destroyer(t->sensors[SENSOR_GUARD].obj, &t->destroyer, t->destroyer_why,
						    sizeof(t->destroyer_why));
		rg_log_reset();
	}
	if (t->sensors[SENSOR_GUARD].obj && opts->guard_fanotify && (ret = open_judge(t, err, errlen)))
		goto error;
	t->ring = ring_buffer__new(t->shared_fds[0], handle_record, t, NULL);
	if (!t->ring) {
		ret = rg_fail(err, errlen, -errno, "opening ring buffer rg_events");
		goto error;
	}
	t->epoll_fd = ring_buffer__epoll_fd(t->ring);
	/* Edge-triggered: the ring's epoll then reports only the wake-ups the BPF
	 * side forces past the fill threshold, not "some data is there", so a
	 * consumer polling in a loop is not handed a few records per call. */
	struct epoll_event ring_event = { .events = EPOLLIN | EPOLLET, .data.fd = 0 };
	if (epoll_ctl(t->epoll_fd, EPOLL_CTL_MOD, t->shared_fds[0], &ring_event)) {
		ret = rg_fail(err, errlen, -errno, "making the ring buffer's wake-up edge-triggered");
		goto error;
	}
	if (t->judge) {
		struct epoll_event judge_event = { .events = EPOLLIN, .data.fd = 1 };
		if (epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, rg_file_judge_wake_fd(t->judge), &judge_event)) {
			ret = rg_fail(err, errlen, -errno, "watching the file judge's queue");
			goto error;
		}
	}
	if ((ret = map_ring_positions(t, err, errlen)))
		goto error;
	t->ncpus = libbpf_num_possible_cpus();
	t->percpu = calloc(t->ncpus > 0 ? t->ncpus : 1, sizeof(struct rg_counters));
	/* Room for the batch limit plus the judge's decisions and a loss notice
	 * past it (batch_has_room_for_two). */
	t->out.w.cap = (size_t)t->opts.batch_limit * 512 + 4 * RG_MAX_ENCODED_RECORD;
	t->out.w.buf = malloc(t->out.w.cap);
	t->out.rows = calloc(t->opts.batch_limit + 4, sizeof(*t->out.rows));
	t->out.table = calloc(t->opts.batch_limit + 4, sizeof(*t->out.table));
	if (t->ncpus <= 0 || !t->percpu || !t->out.w.buf || !t->out.rows || !t->out.table) {
		ret = rg_fail(err, errlen, -ENOMEM, "allocating the consumer's buffers");
		goto error;
	}
	/* Forks and exits nobody asked for only feed the process table; an
	 * exec is kept as an event either way (the table reads its details). */
	t->out.table_only = (1ULL << RG_KIND_PROCESS_FORK | 1ULL << RG_KIND_PROCESS_EXIT) & ~t->opts.wanted_mask;
	*out = t;
	return 0;
error:
	tracer_free(t);
	return ret;
}

static int add_filter(struct rg_tracer *t, int map_index, const void *key, char *err, size_t errlen)
{
	unsigned char one = 1;

	rg_log_reset();
	if (bpf_map_update_elem(t->shared_fds[map_index], key, &one, BPF_ANY))
		return rg_fail(err, errlen, -errno, "adding to filter map %s", shared_maps[map_index]);
	return 0;
}

int rg_tracer_add_pid(struct rg_tracer *t, unsigned int pid, char *err, size_t errlen)
{
	return add_filter(t, 2, &pid, err, errlen);
}

int rg_tracer_add_comm(struct rg_tracer *t, const char *comm, char *err, size_t errlen)
{
	char key[RG_COMM_LEN] = {};

	strncpy(key, comm, sizeof(key) - 1);
	return add_filter(t, 3, key, err, errlen);
}

int rg_tracer_add_cgroup(struct rg_tracer *t, unsigned long long cgroup_id, char *err, size_t errlen)
{
	return add_filter(t, 4, &cgroup_id, err, errlen);
}

int rg_tracer_map_update(struct rg_tracer *t, const char *map, const void *key, const void *value,
			 char *err, size_t errlen)
{
	rg_log_reset();
	for (int i = 0; i < SENSOR_COUNT; i++) {
		struct bpf_map *m = t->sensors[i].obj ? bpf_object__find_map_by_name(t->sensors[i].obj, map) : NULL;
		if (!m)
			continue;
		if (bpf_map_update_elem(bpf_map__fd(m), key, value, BPF_ANY))
			return rg_fail(err, errlen, -errno, "updating map %s", map);
		return 0;
	}
	return rg_fail(err, errlen, -ENOENT, "no loaded sensor has map %s", map);
}

static int identity_refused(int ret, const char *pattern, char *err, size_t errlen)
{
	if (ret == -ENOSPC)
		return rg_fail(err, errlen, ret, "identity pattern %s: all %d patterns of its kind are in use by live tracers",
			    pattern, RG_IDENTITY_MAX);
	return rg_fail(err, errlen, ret, "identity pattern %s", pattern);
}

int rg_tracer_watch_env(struct rg_tracer *t, const char *pattern, char *err, size_t errlen)
{
	unsigned long long key;
	unsigned int kind, len, zero = 0;
	int bit = rg_identity_hold_env(pattern), ret;

	if (bit < 0)
		return identity_refused(bit, pattern, err, errlen);
	if (t->identity_env_bits >> bit & 1) {
		rg_identity_release(1ULL << bit, 0); /* held already */
		return 0;
	}
	t->identity_env_bits |= 1ULL << bit;
	unsigned int value = bit;
	if ((ret = rg_identity_env_key(bit, &key, &kind, &len)) ||
	    (ret = rg_tracer_map_update(t, "rg_identity_names", &key, &value, err, errlen)))
		return ret;
	if (kind == RG_IDENTITY_PREFIX)
		t->identity.prefix_lengths |= 1ULL << len;
	else if (kind == RG_IDENTITY_SUFFIX)
		t->identity.suffix_lengths |= 1ULL << len;
	t->identity.enabled = 1;
	return rg_tracer_map_update(t, "rg_identity_cfg", &zero, &t->identity, err, errlen);
}

int rg_tracer_watch_argv(struct rg_tracer *t, const char *pattern, char *err, size_t errlen)
{
	int slot = rg_identity_hold_argv(pattern);

	if (slot < 0)
		return identity_refused(slot, pattern, err, errlen);
	if (t->identity_argv_bits >> slot & 1)
		rg_identity_release(0, 1ULL << slot);
	t->identity_argv_bits |= 1ULL << slot;
	return 0;
}

int rg_tracer_protect_path(struct rg_tracer *t, const char *path, unsigned int kind, unsigned int rule_index,
			   char *err, size_t errlen)
{
	if (!t->judge)
		return rg_fail(err, errlen, -EOPNOTSUPP, "protecting %s: the fanotify file judge is not running", path);
	return rg_file_judge_mark(t->judge, path, kind, rule_index, err, errlen);
}

int rg_tracer_attach(struct rg_tracer *t, char *err, size_t errlen)
{
	int code = 0;

	rg_log_reset();
	if (t->n_links)
		return 0;
	for (int i = 0; i < SENSOR_COUNT && !code; i++) {
		struct bpf_program *prog;

		/* Function probes are attached one by one, to the files they name. */
		if (!t->sensors[i].obj || i == SENSOR_CALLS)
			continue;
		bpf_object__for_each_program(prog, t->sensors[i].obj) {
			struct bpf_link *link = NULL;

			if (!bpf_program__autoload(prog))
				continue;

			enum bpf_prog_type type = bpf_program__type(prog);
			int on_cgroup = type == BPF_PROG_TYPE_CGROUP_SOCK_ADDR || type == BPF_PROG_TYPE_CGROUP_SOCK ||
					type == BPF_PROG_TYPE_CGROUP_SKB;

			if (t->n_links == MAX_LINKS)
				code = rg_fail(err, errlen, -E2BIG, "more than %d programs to attach", MAX_LINKS);
			else if (!(link = on_cgroup ? bpf_program__attach_cgroup(prog, t->opts.guard_cgroup_fd)
						    : bpf_program__attach(prog)))
				code = rg_fail(err, errlen, -errno, "attaching BPF program %s (%s) of the %s sensor",
					    bpf_program__name(prog), bpf_program__section_name(prog), sensor_names[i]);
			if (code)
				break;
			t->links[t->n_links++] = link;
		}
	}
	if (code) {
		/* All or nothing: detach what this call attached. */
		detach_all(t->links, t->n_links);
		t->n_links = 0;
	}
	return code;
}

struct bpf_object *rg_tracer_sensor_object(struct rg_tracer *t, const char *name)
{
	for (int i = 0; i < SENSOR_COUNT; i++)
		if (!strcmp(sensor_names[i], name))
			return t->sensors[i].obj;
	return NULL;
}

int rg_tracer_keep_link(struct rg_tracer *t, struct bpf_link *link, char *err, size_t errlen)
{
	if (t->n_probe_links == t->probe_links_cap) {
		int cap = t->probe_links_cap ? 2 * t->probe_links_cap : 16;
		struct bpf_link **grown = realloc(t->probe_links, cap * sizeof(*grown));
		if (!grown) {
			bpf_link__destroy(link);
			return rg_fail(err, errlen, -ENOMEM, "keeping a probe's link");
		}
		t->probe_links = grown;
		t->probe_links_cap = cap;
	}
	t->probe_links[t->n_probe_links++] = link;
	return 0;
}

/* ---- consuming ---- */

#define RG_STOP_BATCH (-ENOBUFS)

static int take_record(struct rg_tracer *t, const void *data, size_t len);

/* The file judge's decisions taken from its queue, not yet encoded. */
static int batch_has_room_for_two(struct rg_tracer *t)
{
	return t->out.count + 2 < t->opts.batch_limit && t->out.w.cap - t->out.w.len >= 3 * RG_MAX_ENCODED_RECORD;
}

/* Encodes the judge's decisions made up to ts first: the stream stays in
 * time order (a decoy's open before the sends it taints), as far as the
 * batch has room for them and the record that follows. */
static void take_judged_until(struct rg_tracer *t, unsigned long long ts)
{
	while (t->judged_pos < t->judged_count && t->judged[t->judged_pos].hdr.timestamp_ns <= ts &&
	       batch_has_room_for_two(t))
		take_record(t, &t->judged[t->judged_pos++], sizeof(t->judged[0]));
}

static int handle_record(void *ctx, void *data, size_t len)
{
	struct rg_tracer *t = ctx;

	t->bytes += len;
	if (t->judged_pos < t->judged_count && len >= sizeof(struct rg_header))
		take_judged_until(t, ((const struct rg_header *)data)->timestamp_ns);
	return take_record(t, data, len);
}

/* Encodes one record into the batch; RG_STOP_BATCH once the batch is full. */
static int take_record(struct rg_tracer *t, const void *data, size_t len)
{
	if (rg_encode_record(&t->enc, &t->out, data, len) == 1) {
		unsigned int kind = ((const struct rg_header *)data)->kind;
		if (!(t->opts.wanted_mask >> kind & 1))
			t->batch_unwanted++;
	}
	/* The record is consumed either way; stop while room remains for one
	 * more (forks and exits that only feed the process table take a table
	 * entry and no event). */
	if (t->out.count >= t->opts.batch_limit || t->out.table_count >= t->opts.batch_limit ||
	    t->out.w.cap - t->out.w.len < RG_MAX_ENCODED_RECORD)
		return RG_STOP_BATCH;
	return 0;
}

/* Decisions the file judge's queue could not hold count as lost too. */
static void add_judge_lost(struct rg_tracer *t, unsigned long long *total)
{
	unsigned long long lost[RG_KIND_SLOTS];

	if (!t->judge)
		return;
	rg_file_judge_lost(t->judge, lost);
	for (int k = 0; k < RG_KIND_SLOTS; k++)
		total[k] += lost[k];
}

static void refill_judged(struct rg_tracer *t)
{
	if (t->judge && t->judged_pos == t->judged_count) {
		t->judged_pos = 0;
		t->judged_count = rg_file_judge_take(t->judge, t->judged, RG_JUDGED_BATCH);
	}
}

/* The judge's decisions left after the ring's records, while the batch has room. */
static void take_judged(struct rg_tracer *t)
{
	for (refill_judged(t); !t->backlog && t->judged_pos < t->judged_count; refill_judged(t))
		t->backlog = take_record(t, &t->judged[t->judged_pos++], sizeof(t->judged[0])) == RG_STOP_BATCH;
}

static void check_lost(struct rg_tracer *t)
{
	unsigned int zero = 0;
	unsigned long long total[RG_KIND_SLOTS] = {}, delta[RG_KIND_SLOTS], sum = 0;

	if (bpf_map_lookup_elem(t->shared_fds[1], &zero, t->percpu))
		return;
	for (int c = 0; c < t->ncpus; c++)
		for (int k = 0; k < RG_KIND_SLOTS; k++)
			total[k] += t->percpu[c].lost[k];
	add_judge_lost(t, total);
	for (int k = 0; k < RG_KIND_SLOTS; k++) {
		delta[k] = total[k] - t->lost_seen[k];
		sum += delta[k];
	}
	if (!sum)
		return;
	memcpy(t->lost_seen, total, sizeof(total));
	rg_encode_lost(&t->enc, &t->out, delta, sum);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int drain(struct rg_tracer *t, long long now)
{
	refill_judged(t);
	int ret = ring_buffer__consume(t->ring);

	t->last_drain_ms = now;
	t->backlog = ret == RG_STOP_BATCH;
	if (ret < 0 && ret != RG_STOP_BATCH)
		return ret;
	if (t->judge)
		take_judged(t);
	if (t->out.w.cap - t->out.w.len >= RG_MAX_ENCODED_RECORD && t->out.count < t->opts.batch_limit + 4)
		check_lost(t);
	return 0;
}

/* Drains on a rhythm, not on every call: when the last drain left records
 * behind, when the BPF side forced a wake-up (the ring past its fill
 * threshold), when max_latency_ms has passed since the last drain, or when
 * the caller's timeout runs out. Batches stay large, and no record waits in
 * the ring much longer than max_latency_ms. */
static int poll_batch(struct rg_tracer *t, int timeout_ms, int columnar, struct rg_batch *out)
{
	long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct epoll_event ev;
	int ret;

	t->polls++;
	t->enc.realtime_offset_ns = rg_realtime_offset_ns();
	t->batch_unwanted = 0;
	t->out.count = 0;
	t->out.table_count = 0;
	t->out.columnar = columnar;
	t->out.raw = columnar;
	/* msgpack: room for an array32 header, written once the count is known. */
	t->out.w.len = columnar ? 0 : 5;
	for (;;) {
		long long now = now_ms();
		long long wait = t->backlog ? 0 : t->last_drain_ms + t->opts.max_latency_ms - now;

		if (deadline >= 0 && deadline - now < wait)
			wait = deadline - now;
		if (wait < 0)
			wait = 0;
		int woken = epoll_wait(t->epoll_fd, &ev, 1, (int)wait);
		if (woken < 0 && errno == EINTR)
			return -EINTR;
		now = now_ms();
		int timed_out = deadline >= 0 && now >= deadline;
		if (woken > 0 || t->backlog || now >= t->last_drain_ms + t->opts.max_latency_ms || timed_out) {
			if ((ret = drain(t, now)))
				return ret;
			/* A full batch ends the poll, events in it or not (forks and
			 * exits that only feed the process table fill it too). */
			if (t->out.count || t->backlog)
				break;
		}
		if (timed_out)
			break;
	}
	if (!columnar) {
		t->out.w.buf[0] = 0xdd;
		for (int i = 0; i < 4; i++)
			t->out.w.buf[1 + i] = t->out.count >> (24 - 8 * i);
	}
	out->data = t->out.w.buf;
	out->len = t->out.w.len;
	out->rows = columnar ? t->out.rows : NULL;
	out->count = t->out.count;
	out->unwanted = t->batch_unwanted;
	out->table = t->out.table;
	out->table_count = t->out.table_count;
	out->fresh_cgroup_count = out->stranger_count = 0;
	out->fresh_cgroups = t->fresh_cgroups;
	out->stranger_pids = t->stranger_pids;
	out->stranger_entities = t->stranger_entities;
	if (t->proc_table && t->out.table_count) {
		rg_proc_table_learn(t->proc_table, t->out.table, t->out.table_count, t->out.w.buf, columnar);
		out->fresh_cgroup_count = rg_proc_table_fresh_cgroups(t->proc_table, t->fresh_cgroups, RG_FRESH_CGROUPS);
		out->stranger_count = rg_proc_table_strangers(t->proc_table, t->stranger_pids, t->stranger_entities,
							      RG_FRESH_CGROUPS);
	}
	return t->out.count;
}

static long long thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int rg_tracer_poll(struct rg_tracer *t, int timeout_ms, int columnar, struct rg_batch *out)
{
	long long start = thread_cpu_ns();
	int ret = poll_batch(t, timeout_ms, columnar, out);

	t->poll_cpu_ns += thread_cpu_ns() - start;
	return ret;
}

void rg_tracer_set_proc_table(struct rg_tracer *t, struct rg_proc_table *pt)
{
	t->proc_table = pt;
}

int rg_tracer_epoll_fd(struct rg_tracer *t)
{
	return t->epoll_fd;
}

void rg_tracer_stats(struct rg_tracer *t, struct rg_stats *out)
{
	unsigned long long cons = *(volatile unsigned long *)t->consumer_page;
	unsigned long long prod = *(volatile unsigned long *)t->producer_page;

	memset(out, 0, sizeof(*out));
	memcpy(out->delivered, t->delivered, sizeof(out->delivered));
	/* Loss as the kernel counts it now, reported in the stream or not yet. */
	unsigned int zero = 0;
	if (bpf_map_lookup_elem(t->shared_fds[1], &zero, t->percpu) == 0) {
		for (int c = 0; c < t->ncpus; c++)
			for (int k = 0; k < RG_KIND_SLOTS; k++)
				out->lost[k] += t->percpu[c].lost[k];
		add_judge_lost(t, out->lost);
	} else {
		memcpy(out->lost, t->lost_seen, sizeof(out->lost));
	}
	if (t->judge)
		rg_file_judge_counts(t->judge, &out->file_judge_asked, &out->file_judge_denied, &out->file_judge_marks,
				     &out->file_judge_pre_content_marks);
	out->malformed = t->enc.malformed;
	out->bytes = t->bytes;
	out->polls = t->polls;
	out->poll_cpu_ns = t->poll_cpu_ns;
	out->ring_size = t->opts.ring_bytes;
	out->ring_used = prod - cons;
}

void rg_tracer_close(struct rg_tracer *t)
{
	if (t)
		tracer_free(t);
}

int rg_encode_records(const unsigned char *records, size_t len, unsigned char *out, size_t cap,
		      size_t *out_len, unsigned long long *malformed)
{
	unsigned long long delivered[RG_KIND_SLOTS] = {};
	struct rg_encoder enc = { .realtime_offset_ns = 0, .delivered = delivered };
	struct rg_output o = { .w = { .buf = out, .len = 5, .cap = cap } };
	unsigned int count = 0;
	size_t pos = 0;

	*out_len = 0;
	*malformed = 0;
	if (cap < o.w.len)
		return -ENOBUFS;
	while (pos + 4 <= len) {
		unsigned int n;
		memcpy(&n, records + pos, 4);
		pos += 4;
		if (n > len - pos)
			n = len - pos;
		if (o.w.cap - o.w.len < RG_MAX_ENCODED_RECORD) {
			*malformed = enc.malformed;
			return -ENOBUFS;
		}
		count += rg_encode_record(&enc, &o, records + pos, n);
		pos += n;
	}
	out[0] = 0xdd;
	for (int i = 0; i < 4; i++)
		out[1 + i] = count >> (24 - 8 * i);
	*out_len = o.w.len;
	*malformed = enc.malformed;
	return count;
}

/* ---- cgroup paths ---- */

int rg_cgroup_path(int mount_fd, unsigned long long cgroup_id, char *path, size_t size)
{
	/* A kernfs file handle is the node's 64-bit id: the cgroup id. */
	struct {
		struct file_handle handle;
		unsigned long long id;
	} h = { .handle = { .handle_bytes = sizeof(cgroup_id), .handle_type = 0xfe }, .id = cgroup_id };
	char link[64];
	int fd = open_by_handle_at(mount_fd, &h.handle, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, size - 1);
	int saved = errno;
	close(fd);
	if (n < 0)
		return -saved;
	path[n] = 0;
	return n;
}

/* ---- feature probes ---- */

int rg_probe_fanotify_permission(char *err, size_t errlen)
{
	return rg_file_judge_probe(err, errlen);
}

int rg_probe(const char *program, char *err, size_t errlen)
{
	struct rg_probe *skel;
	struct bpf_program *prog, *target = NULL;
	int ret;

	rg_log_reset();
	skel = rg_probe__open();
	if (!skel)
		return rg_fail(err, errlen, -errno, "opening the probe object");
	bpf_object__for_each_program(prog, skel->obj) {
		int match = strcmp(bpf_program__name(prog), program) == 0;
		bpf_program__set_autoload(prog, match);
		if (match)
			target = prog;
	}
	if (!target) {
		rg_probe__destroy(skel);
		return rg_fail(err, errlen, -ENOENT, "no probe program %s", program);
	}
	ret = bpf_object__load(skel->obj);
	if (ret) {
		ret = rg_fail(err, errlen, ret, "loading %s", bpf_program__section_name(target));
	} else {
		enum bpf_prog_type type = bpf_program__type(target);
		/* Cgroup and uprobe programs need a target to attach to: loading is the test. */
		if (type != BPF_PROG_TYPE_CGROUP_SOCK_ADDR && type != BPF_PROG_TYPE_CGROUP_SKB &&
		    type != BPF_PROG_TYPE_CGROUP_SOCK && strcmp(program, "rg_probe_uprobe") != 0) {
			struct bpf_link *link = bpf_program__attach(target);
			if (!link)
				ret = rg_fail(err, errlen, -errno, "attaching %s", bpf_program__section_name(target));
			else
				bpf_link__destroy(link);
		}
	}
	rg_probe__destroy(skel);
	return ret;
}
