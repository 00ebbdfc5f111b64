/* Loading the sensors and attaching them.
 *
 * Sensors are separate BPF objects sharing one ring buffer, one counter map
 * and the filter maps (bpf_map__reuse_fd). Everything a tracer owns is held
 * by file descriptors: nothing is pinned, so a killed consumer leaves nothing
 * attached. Errors name the step and the program or map, and carry what
 * libbpf (and the verifier) said (errors.c). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>

#include "tracer.h"
#include "process.skel.h"
#include "file.skel.h"
#include "net.skel.h"
#include "ptrace.skel.h"
#include "guard.skel.h"
#include "calls.skel.h"

static const char *const sensor_names[SENSOR_COUNT] = { "process", "file", "net", "ptrace", "guard", "calls" };

const char *const rg_shared_map_names[] = {
	[SHARED_EVENTS] = "rg_events",
	[SHARED_COUNTERS] = "rg_counters",
	[SHARED_FILTER_PIDS] = "rg_filt_pids",
	[SHARED_FILTER_COMMS] = "rg_filt_comms",
	[SHARED_FILTER_CGROUPS] = "rg_filt_cgroups",
};
_Static_assert(RG_COUNT(rg_shared_map_names) == SHARED_MAP_COUNT,
	       "rg_shared_map_names names every enum shared_map, and nothing past it");

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
	rg_ring_close(t);
	/* No record of this tracer is decoded any more: its patterns' slots may
	 * be reused. */
	rg_identity_release(t->identity_env_bits, t->identity_argv_bits);
	t->identity_env_bits = t->identity_argv_bits = 0;
	/* Before the maps it reads go. */
	rg_file_judge_close(t->judge);
	if (t->destroyer)
		rg_destroyer_close(t->destroyer);
	for (int i = SENSOR_COUNT - 1; i >= 0; i--)
		if (t->sensors[i].skel)
			t->sensors[i].destroy(t->sensors[i].skel);
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

	for (size_t i = 0; i < RG_COUNT(optional); i++) {
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

/* An observing program whose kind nobody asked for is not loaded: attached,
 * it would run on every such syscall on the host only for its record to be
 * dropped by the consumer (a sensor makes two kinds; a tracer may want one). */
static void load_only_wanted_kinds(struct rg_tracer *t, int i)
{
	unsigned long long mask = t->opts.event_mask;
	int connects = !!(mask & 1ULL << RG_KIND_NET_CONNECT), sends = !!(mask & 1ULL << RG_KIND_NET_SENDMSG);
	int ptraces = !!(mask & 1ULL << RG_KIND_PTRACE), memory = !!(mask & 1ULL << RG_KIND_PROCESS_MEMORY);

	if (i == SENSOR_NET) {
		struct rg_net *net = t->sensors[i].skel;

		bpf_program__set_autoload(net->progs.rg_connect_exit, connects);
		bpf_program__set_autoload(net->progs.rg_sendto_exit, sends);
		bpf_program__set_autoload(net->progs.rg_sendmsg_exit, sends);
	} else if (i == SENSOR_PTRACE) {
		struct rg_ptrace *ptrace = t->sensors[i].skel;

		bpf_program__set_autoload(ptrace->progs.rg_ptrace_exit, ptraces);
		bpf_program__set_autoload(ptrace->progs.rg_vm_readv_exit, memory);
		bpf_program__set_autoload(ptrace->progs.rg_vm_writev_exit, memory);
	}
}

static int load_sensor(struct rg_tracer *t, int i, char *err, size_t errlen)
{
	struct sensor *s = &t->sensors[i];
	int first = t->shared_fds[SHARED_EVENTS] < 0;
	int ret = sensor_open[i](t, s);

	if (ret)
		return rg_fail(err, errlen, ret, "opening the %s sensor", sensor_names[i]);
	for (size_t m = 0; m < SHARED_MAP_COUNT; m++) {
		struct bpf_map *map = bpf_object__find_map_by_name(s->obj, rg_shared_map_names[m]);
		if (!map)
			return rg_fail(err, errlen, -ENOENT, "%s sensor: map %s", sensor_names[i],
				       rg_shared_map_names[m]);
		if (first) {
			if (m == SHARED_EVENTS && (ret = bpf_map__set_max_entries(map, t->opts.ring_bytes)))
				return rg_fail(err, errlen, ret, "sizing ring buffer %s to %llu bytes",
					       rg_shared_map_names[m], t->opts.ring_bytes);
		} else if ((ret = bpf_map__reuse_fd(map, t->shared_fds[m]))) {
			return rg_fail(err, errlen, ret, "%s sensor: sharing map %s", sensor_names[i],
				       rg_shared_map_names[m]);
		}
	}
	if (i == SENSOR_GUARD && (ret = choose_guard_backend(s->skel, t->opts.guard_lsm, err, errlen)))
		return ret;
	load_only_wanted_kinds(t, i);
	skip_missing_hooks(s->obj);
	if ((ret = bpf_object__load(s->obj)))
		return rg_fail(err, errlen, ret, "loading the %s sensor's BPF programs", sensor_names[i]);
	if (first)
		for (size_t m = 0; m < SHARED_MAP_COUNT; m++)
			t->shared_fds[m] = bpf_map__fd(bpf_object__find_map_by_name(s->obj, rg_shared_map_names[m]));
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
		t->destroyer_error = rg_destroyer_open(t->sensors[SENSOR_GUARD].obj, &t->destroyer, t->destroyer_why,
						       sizeof(t->destroyer_why));
		rg_log_reset();
	}
	if (t->sensors[SENSOR_GUARD].obj && opts->guard_fanotify && (ret = open_judge(t, err, errlen)))
		goto error;
	if ((ret = rg_ring_open(t, err, errlen)))
		goto error;
	*out = t;
	return 0;
error:
	tracer_free(t);
	return ret;
}

void rg_tracer_close(struct rg_tracer *t)
{
	if (t)
		tracer_free(t);
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
