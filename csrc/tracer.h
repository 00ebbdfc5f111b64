/* The tracer as its parts see it: loader.c opens, loads, attaches and frees
 * it; settings.c writes what a caller asks into its maps; ring.c drains its
 * ring buffer into batches; stats.c counts what it delivered and lost;
 * destroyer.c runs the guard's socket destroyer. Not part of the API Python
 * sees (api.h). */
#ifndef RG_TRACER_H
#define RG_TRACER_H

#include <stddef.h>
#include <bpf/libbpf.h>

#include "api.h"
#include "encode.h"
#include "filejudge.h"
#include "loader.h"

enum sensor_id { SENSOR_PROCESS, SENSOR_FILE, SENSOR_NET, SENSOR_PTRACE, SENSOR_GUARD, SENSOR_CALLS, SENSOR_COUNT };

/* The maps every sensor shares (the first sensor loaded creates them, the
 * others reuse their descriptors): indexes into rg_tracer.shared_fds and
 * rg_shared_map_names. */
enum shared_map {
	SHARED_EVENTS,          /* the ring buffer */
	SHARED_COUNTERS,        /* per-CPU struct rg_counters: what the ring could not take */
	SHARED_FILTER_PIDS,     /* the filters: process ids, */
	SHARED_FILTER_COMMS,    /* command names */
	SHARED_FILTER_CGROUPS,  /* and cgroup ids traced */
	SHARED_MAP_COUNT
};

/* Their names in the BPF objects, by enum shared_map (loader.c). */
extern const char *const rg_shared_map_names[];

struct sensor {
	void *skel;
	struct bpf_object *obj;
	void (*destroy)(void *skel);
};

#define RG_COUNT(a) (sizeof(a) / sizeof((a)[0]))

#define MAX_LINKS 64
#define RG_JUDGED_BATCH 32

struct rg_sockdestroy;

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

/* ring.c: sets up the consumer once the sensors are loaded (the ring buffer,
 * its wake-ups, the batch's buffers); the tracer's free undoes it with
 * rg_ring_close, which also takes a half-opened consumer. */
int rg_ring_open(struct rg_tracer *t, char *err, size_t errlen);
void rg_ring_close(struct rg_tracer *t);

/* stats.c: what the ring buffer and the file judge's queue could not take,
 * per kind, since the start, added into total; -errno when the kernel's
 * counters cannot be read (total is then unchanged). */
int rg_tracer_read_lost(struct rg_tracer *t, unsigned long long total[RG_KIND_SLOTS]);

/* destroyer.c: the guard's socket destroyer, sharing guard's taint and socket
 * owner maps (guard NULL: maps of its own, which are empty). */
int rg_destroyer_open(struct bpf_object *guard, struct rg_sockdestroy **out, char *err, size_t errlen);
/* Destroys the TCP sockets the maps mark in the caller's network namespace:
 * how many, or -errno. */
int rg_destroyer_run(struct rg_sockdestroy *destroyer, char *err, size_t errlen);
void rg_destroyer_close(struct rg_sockdestroy *destroyer);

#endif
