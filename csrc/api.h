/* The C API the Python package sees (through cffi). Narrow and coarse: open,
 * filter, attach, poll a whole batch, stats, close. No per-event calls cross
 * the boundary. Plain C, no system headers: the cffi build passes it to cdef
 * after preprocessing. */
#ifndef RG_API_H
#define RG_API_H

#include "events.h"

/* The kinds table (RG_EVENT_KINDS in events.h), for Python. */
struct rg_kind_info {
	const char *name;         /* NULL: no kind has this id */
	unsigned int record_size; /* 0: made in user space */
	unsigned int decision;    /* a guard's decision */
};
extern const struct rg_kind_info rg_kinds[RG_KIND_SLOTS];

/* Room one encoded record may take at most (exec: argv and four paths, each
 * invalid byte escaped as three and sent again as bytes, and up to
 * RG_IDENTITY_MAX identity names). */
#define RG_MAX_ENCODED_RECORD 16384

struct rg_options {
	unsigned long long event_mask;   /* bit per RG_KIND_* the sensors emit */
	unsigned long long wanted_mask;  /* those the caller asked for; the others only feed the process table */
	unsigned long long ring_bytes;   /* ring buffer size: a power of two, >= page size */
	unsigned long long wakeup_bytes; /* unread bytes past which a record wakes the consumer */
	unsigned int max_latency_ms;     /* the timed drain: longest a record waits unread */
	unsigned int filter_flags;       /* RG_FILTER_* */
	unsigned int self_tgid;          /* never traced: the consuming process */
	unsigned int batch_limit;        /* most events one poll returns */
	int guard_cgroup_fd;             /* >= 0: load the guard, its socket hooks on this cgroup */
	unsigned int guard_lsm;          /* 1: the guard judges by BPF LSM hooks, 0: at tracepoints */
	unsigned int guard_fanotify;     /* 1: files and decoys by fanotify permission events (not LSM) */
	char cgroup_root[256];           /* the cgroup2 mount: the fanotify judge's opener scope */
};

struct rg_stats {
	unsigned long long delivered[RG_KIND_SLOTS]; /* records decoded, per kind */
	unsigned long long lost[RG_KIND_SLOTS];      /* ring-buffer reservation failures, per kind */
	unsigned long long malformed;  /* records too short or of unknown kind: skipped */
	unsigned long long bytes;      /* ring-buffer bytes consumed */
	unsigned long long polls;
	unsigned long long poll_cpu_ns; /* CPU the polls took (drain, encode, process table): the rest is Python's */
	unsigned long long ring_size;
	unsigned long long ring_used;  /* unread bytes right now */
	unsigned long long file_judge_asked;  /* fanotify permission events answered */
	unsigned long long file_judge_denied; /* of them, refused (EPERM) */
	unsigned long long file_judge_marks;  /* inodes marked */
	unsigned long long file_judge_pre_content_marks; /* of them, refusing truncate(2) too */
};

/* An event's header in a columnar batch (the batch API: one row per event,
 * read by Python as a numpy structured array). The batch's data holds each
 * row's record (rg_encode_details makes its details when asked), or, for a
 * lost notice, its details already made. */
struct rg_event_row {
	long long timestamp;            /* ns since the Unix epoch */
	unsigned long long seq;
	unsigned long long entity_id;   /* 0: the program could not read the task */
	unsigned long long cgroup_id;
	long long result;               /* the kind's result (retval, -errno; exit: wait status; lost: count), else 0 */
	unsigned int id;                /* event id (RG_KIND_*) */
	unsigned int cpu;
	unsigned int pid;
	unsigned int tid;
	unsigned int uid;               /* RG_ID_UNKNOWN where the program could not read it */
	unsigned int gid;
	unsigned int details_offset;    /* the event's record (lost: details) in the batch's data */
	unsigned int details_len;
};

/* One poll's events, valid until the next poll: a msgpack array of events,
 * or (columnar) rows, with data holding each row's record. */
/* What the process table learns from an exec, fork or exit, without
 * decoding the event (runtimeguard.processes): a fork's whole story is here,
 * so a fork or exit nobody asked for is not made into an event at all. A
 * failed exec has no entry. */
#define RG_NO_EVENT 0xffffffffU
struct rg_table_entry {
	unsigned int event;           /* its index in the batch; RG_NO_EVENT: not made into one */
	unsigned int kind;            /* RG_KIND_PROCESS_EXEC, _FORK or _EXIT */
	unsigned int pid;             /* the process; for a fork, the child */
	unsigned int ns_pid;          /* fork: the child's pid in its pid namespace */
	unsigned int pid_ns;          /* fork: that namespace's inode */
	unsigned int parent_pid;      /* the parent */
	unsigned long long entity_id; /* the process; for a fork, the child */
	long long since;              /* ns since the epoch: the exec, or the child's start */
	unsigned long long cgroup_id;
	unsigned long long parent_entity_id; /* the parent (an exec's, or the forking process) */
	long long at;                 /* the event's time, ns since the epoch */
	unsigned int details_offset;  /* an exec's details in the batch's data (the batch API: its record) */
	unsigned int details_len;
	unsigned long long boot_ns;   /* since, on the boot clock: an exec's exec_id is made of it */
};

struct rg_batch {
	const unsigned char *data;
	size_t len;
	const struct rg_event_row *rows; /* columnar only */
	unsigned int count;
	unsigned int unwanted;           /* events of kinds outside wanted_mask */
	const struct rg_table_entry *table; /* the exec, fork and exit events, in order */
	unsigned int table_count;
	/* What the process table met first in this batch, for the consumer to
	 * look up while it exists: cgroups, and parents it did not know. */
	unsigned int fresh_cgroup_count;
	unsigned int stranger_count;
	const unsigned long long *fresh_cgroups;
	const unsigned int *stranger_pids;
	const unsigned long long *stranger_entities;
};

struct rg_tracer;

/* Opens and loads every sensor the event mask needs; nothing is attached. */
int rg_tracer_open(const struct rg_options *opts, struct rg_tracer **out, char *err, size_t errlen);
int rg_tracer_add_pid(struct rg_tracer *t, unsigned int pid, char *err, size_t errlen);
int rg_tracer_add_comm(struct rg_tracer *t, const char *comm, char *err, size_t errlen);
int rg_tracer_add_cgroup(struct rg_tracer *t, unsigned long long cgroup_id, char *err, size_t errlen);
/* Watches the file st_dev/ino name (as stat(2) gives them) for file_open
 * events whatever the filters, before attach. */
int rg_tracer_watch_inode(struct rg_tracer *t, unsigned long long st_dev, unsigned long long ino, char *err,
			  size_t errlen);
/* The fanotify judge (guard_fanotify): marks path, a file or a directory
 * and every entry beneath it, as protected by rule rule_index of kind
 * RG_PROTECT_*. */
int rg_tracer_protect_path(struct rg_tracer *t, const char *path, unsigned int kind, unsigned int rule_index,
			   char *err, size_t errlen);
/* Attaches every program; on any failure detaches those already attached. */
int rg_tracer_attach(struct rg_tracer *t, char *err, size_t errlen);
/* Waits up to timeout_ms (-1: no limit) for events; returns their count or
 * -errno. columnar: rows and details (the batch API), else msgpack events. */
int rg_tracer_poll(struct rg_tracer *t, int timeout_ms, int columnar, struct rg_batch *out);
int rg_tracer_epoll_fd(struct rg_tracer *t);
void rg_tracer_stats(struct rg_tracer *t, struct rg_stats *out);
/* The guard (tracepoint backend): destroys every TCP socket whose connecting
 * process is tainted, living or exited (tcp_abort: its queued data is
 * discarded, never sent). Returns how many, or -errno with err saying why:
 * the destroyer's load error where it did not load (no bpf_sock_destroy
 * kfunc), -EOPNOTSUPP where it was not loaded (the LSM backend needs none). */
int rg_tracer_destroy_tainted_sockets(struct rg_tracer *t, char *err, size_t errlen);
/* Detaches and frees everything. */
void rg_tracer_close(struct rg_tracer *t);

/* ---- the guard's policy maps (csrc/guardmaps.c). The guard passes
 * policy-level values (addresses as text, prefix lengths, port ranges,
 * RG_GUARD_PROTO_*, a path's st_dev and st_ino as stat(2) gives them, pids,
 * host patterns as text) and these calls build the kernel's keys and values
 * from them: address families, IPPROTO_* numbers, IPv4-mapped IPv6
 * addresses folded to IPv4 (as the socket hooks see them), the kernel's
 * dev_t, host-name hashes (bpf/namehash.h, the DNS programs' own). Each
 * returns 0, or -errno with err saying what was refused and why:
 * -EOPNOTSUPP where the tracer was opened without the guard. Called before
 * attach (the configuration last: it switches the guard on), or while
 * running (mode switches, addresses opened by confirmed PTR names). ---- */

/* The protocol a network rule names. */
#define RG_GUARD_PROTO_ANY 0
#define RG_GUARD_PROTO_TCP 1
#define RG_GUARD_PROTO_UDP 2

/* What a network rule matches besides its destination, and what it decides. */
struct rg_guard_rule_terms {
	unsigned int port_lo;    /* inclusive; 0-65535 */
	unsigned int port_hi;
	unsigned int protocol;   /* RG_GUARD_PROTO_* */
	unsigned int action;     /* RG_NET_ALLOW or RG_NET_DENY */
	unsigned int rule_index; /* the policy rule it comes from: decisions name it */
};
/* Network rule number slot (matched in order, below the configuration's
 * net_rule_count) for destinations in address/prefix_len: "10.0.0.0", 8;
 * "2001:db8::", 32; an IPv4-mapped network ("::ffff:10.0.0.0", 104) is
 * the IPv4 one it carries. Address bits past the prefix are ignored. */
int rg_guard_set_address_rule(struct rg_tracer *t, unsigned int slot, const char *address, unsigned int prefix_len,
			      const struct rg_guard_rule_terms *terms, char *err, size_t errlen);
/* Network rule number slot for destinations a DNS answer gave for a name
 * that host pattern (added before, rg_guard_add_host_pattern) matches. */
int rg_guard_set_host_rule(struct rg_tracer *t, unsigned int slot, const char *pattern,
			   const struct rg_guard_rule_terms *terms, char *err, size_t errlen);
/* A host pattern ("api.example.com", "*.example.com": lower case, labels
 * of [a-z0-9_-]) holds the bit numbered bit (below RG_HOST_PATTERNS) of
 * the marks the DNS programs give the addresses answered for names it
 * matches. */
int rg_guard_add_host_pattern(struct rg_tracer *t, const char *pattern, unsigned int bit, char *err, size_t errlen);
/* A DNS server whose answers count ("192.0.2.53", "2001:db8::53"). */
int rg_guard_trust_dns_server(struct rg_tracer *t, const char *address, char *err, size_t errlen);
/* Opens address to the host patterns in patterns (a bit each, as added)
 * for ttl_ns from now, as an observed answer for name would: its
 * decisions are named name. */
int rg_guard_allow_resolved(struct rg_tracer *t, const char *address, unsigned long long patterns, const char *name,
			    unsigned long long ttl_ns, char *err, size_t errlen);
/* The name the DNS programs last recorded under name_hash (a decision's
 * target name_hash), into name (size >= RG_DNS_NAME_LEN): 1 found, 0 not
 * (never answered, or pushed out since), or -errno. */
int rg_guard_answered_name(struct rg_tracer *t, unsigned long long name_hash, char *name, size_t size, char *err,
			   size_t errlen);
/* The file or directory (is_dir: everything beneath it too) that stat(2)
 * gives st_dev and st_ino for is protected by rule rule_index, of kind
 * RG_PROTECT_*. */
int rg_guard_protect_inode(struct rg_tracer *t, unsigned long long st_dev, unsigned long long st_ino,
			   unsigned int kind, unsigned int rule_index, int is_dir, char *err, size_t errlen);
/* Process pid is protected from ptrace and memory access by rule rule_index. */
int rg_guard_protect_pid(struct rg_tracer *t, unsigned int pid, unsigned int rule_index, char *err, size_t errlen);
/* The guard's settings, written whole: the first write switches the
 * guard on, a later one changes it in place (a mode switch). */
int rg_guard_configure(struct rg_tracer *t, const struct rg_guard_config *cfg, char *err, size_t errlen);
/* The kernel's key for a host name or pattern of len bytes (bpf/namehash.h). */
unsigned long long rg_host_name_hash(const char *text, size_t len);

/* ---- function probes: the calls sensor, loaded when the event mask has
 * RG_KIND_FUNCTION_CALL. A probe is an index below RG_CALL_PROBES_MAX:
 * configure it, then attach it to one or more places. ---- */
int rg_tracer_set_probe(struct rg_tracer *t, unsigned int probe, const struct rg_call_probe *config, char *err,
			size_t errlen);
/* A uprobe (is_return: a uretprobe) at a file offset of path; pid -1: every
 * process that maps the file, now or later. */
int rg_tracer_attach_uprobe(struct rg_tracer *t, unsigned int probe, const char *path, unsigned long long offset,
			    int is_return, int pid, char *err, size_t errlen);
/* Every site of the USDT probe provider:name in path (libbpf reads the notes). */
int rg_tracer_attach_usdt(struct rg_tracer *t, unsigned int probe, const char *path, const char *provider,
			  const char *name, int pid, char *err, size_t errlen);
int rg_tracer_probe_state(struct rg_tracer *t, unsigned int probe, struct rg_call_state *out, char *err,
			  size_t errlen);
/* Up to cap of the (probe, process, stack) counts; returns how many, or -errno. */
int rg_tracer_call_paths(struct rg_tracer *t, struct rg_call_path_key *keys, struct rg_call_path_count *counts,
			 unsigned int cap, char *err, size_t errlen);
/* A stored stack's frames, innermost first; returns how many, or -errno. */
int rg_tracer_call_stack(struct rg_tracer *t, int stack_id, struct rg_stack_frame *frames, unsigned int cap,
			 char *err, size_t errlen);
/* Bytes the kernel charges for the calls sensor's maps. */
unsigned long long rg_tracer_calls_memory(struct rg_tracer *t);

/* What a program has cost, while BPF run-time statistics are on. */
struct rg_program_stats {
	char name[64];
	unsigned long long run_time_ns;
	unsigned long long run_count;
	unsigned long long recursion_misses; /* runs skipped: the program was already running on that CPU */
};
/* The programs of sensor ("calls", "process", ...); returns how many, or -errno. */
int rg_tracer_program_stats(struct rg_tracer *t, const char *sensor, struct rg_program_stats *out, unsigned int cap,
			    char *err, size_t errlen);
/* Turns the kernel's per-program run-time statistics on while the returned
 * descriptor is open; -errno where refused. */
int rg_enable_bpf_stats(char *err, size_t errlen);

/* The path of cgroup cgroup_id, as the cgroup2 mount open in mount_fd shows
 * it (the mount's own path first), in O(1): open_by_handle_at with the
 * cgroup's kernfs handle. Length, or -errno (EPERM without
 * CAP_DAC_READ_SEARCH; ESTALE for a cgroup that is gone). */
int rg_cgroup_path(int mount_fd, unsigned long long cgroup_id, char *path, size_t size);

/* Stable process identity: unique across pid reuse and reboots. */
unsigned long long rg_entity_id(unsigned int pid, unsigned long long start_boottime_ns);
/* CLOCK_REALTIME minus CLOCK_BOOTTIME, in ns, right now. */
long long rg_realtime_offset_ns(void);
/* This boot's id (/proc/sys/kernel/random/boot_id, 128 random bits, as
 * text): with a pid and a time it names an exec across hosts. */
const char *rg_boot_id(void);

/* Machine identity (csrc/identity.c): the patterns processes are recognised
 * by, one registry per process. An environment pattern ("NAME", "PREFIX*",
 * "*SUFFIX") holds a bit of the exec record's identity_mask, named
 * "env:<pattern>"; an argv pattern, a substring of the arguments, a slot
 * named "argv:<pattern>". Holding returns the bit or slot (the same one for a
 * pattern held again), or -EINVAL, -ENAMETOOLONG, -ENOSPC (every slot held);
 * each hold is released once. */
int rg_identity_hold_env(const char *pattern);
int rg_identity_hold_argv(const char *pattern);
void rg_identity_release(unsigned long long env_bits, unsigned long long argv_bits);
/* The kernel's lookup key for a held environment pattern (rg_identity_names). */
int rg_identity_env_key(unsigned int bit, unsigned long long *key, unsigned int *kind, unsigned int *len);
/* The names of the identities an exec shows: its environment bits, then the
 * argv patterns its arguments hold. */
unsigned int rg_identity_names(unsigned long long env_mask, const char *args, size_t args_len,
			       char names[][RG_IDENTITY_NAME_MAX + 8], unsigned int max);
/* This tracer's exec sensor scans for an environment pattern, or its
 * arguments are matched against an argv pattern; held until it closes. */
int rg_tracer_watch_env(struct rg_tracer *t, const char *pattern, char *err, size_t errlen);
int rg_tracer_watch_argv(struct rg_tracer *t, const char *pattern, char *err, size_t errlen);

/* The process table's store (csrc/proctable.c; runtimeguard.processes):
 * each process's versions in time order, learned from the entries of exec,
 * fork and exit events (a Tracer given one learns as it polls), and versions
 * made in Python (RG_VERSION_MADE: a msgpack Process). Thread-safe. */
#define RG_VERSION_MADE 0
#define RG_MAX_CGROUPS 65536
#define RG_FRESH_CGROUPS 256
struct rg_proc_version {
	long long since;
	long long until;              /* the next version's since; LLONG_MAX after the last */
	unsigned int kind;            /* RG_KIND_PROCESS_EXEC, _FORK, or RG_VERSION_MADE */
	unsigned int pid;
	unsigned int ns_pid;          /* a fork's */
	unsigned int pid_ns;
	unsigned int parent_pid;
	unsigned int details_len;     /* an exec's details, a made Process: they follow */
	unsigned long long parent_entity_id;
	long long at;                 /* the event's time */
	unsigned long long boot_ns;   /* since, on the boot clock (0: not known, a made version) */
};
struct rg_proc_table;
struct rg_proc_table *rg_proc_table_new(unsigned int max_processes, unsigned int keep_exited,
					unsigned int max_versions);
void rg_proc_table_free(struct rg_proc_table *pt);
/* Learns entries in stream order; data: the batch they index (raw: records kept by the batch API). */
void rg_proc_table_learn(struct rg_proc_table *pt, const struct rg_table_entry *entries, unsigned int n,
			 const unsigned char *data, int raw);
/* A version made in Python: process is a msgpack Process of len bytes. */
/* Something the consumer caches beside the store changed (a digest came):
 * moves the generation, so answers cached while it held are made again. */
void rg_proc_table_touch(struct rg_proc_table *pt);
int rg_proc_table_add(struct rg_proc_table *pt, unsigned long long entity, unsigned int pid, long long since,
		      const unsigned char *process, unsigned int len);
/* The version of entity in effect at ts (the earliest, when ts precedes
 * them all), written to out as a struct rg_proc_version and its details
 * right after it (cap: sizeof(struct rg_proc_version) +
 * RG_MAX_ENCODED_RECORD holds any). The details' length, or -ENOENT for an
 * unknown entity. */
int rg_proc_table_find(struct rg_proc_table *pt, unsigned long long entity, long long ts, unsigned char *out,
		       size_t cap);
/* Only the since of that version: 1, or 0 for an unknown entity. */
int rg_proc_table_since(struct rg_proc_table *pt, unsigned long long entity, long long ts, long long *since);
unsigned long long rg_proc_table_by_pid(struct rg_proc_table *pt, unsigned int pid);
/* A counter that changes whenever a version is added: read it, unlocked, to
 * know whether an answer found before still holds. */
const unsigned long long *rg_proc_table_generation(struct rg_proc_table *pt);
unsigned int rg_proc_table_count(struct rg_proc_table *pt);
/* Parents the table did not know when a child of theirs was learned (they
 * predate the tracer), since the last call: to read from /proc at once. */
unsigned int rg_proc_table_strangers(struct rg_proc_table *pt, unsigned int *pids, unsigned long long *entities,
				     unsigned int cap);
/* Cgroups seen first since the last call (at most cap of them). */
unsigned int rg_proc_table_fresh_cgroups(struct rg_proc_table *pt, unsigned long long *out, unsigned int cap);
/* The table this tracer's polls teach (NULL: none); it must outlive the tracer. */
void rg_tracer_set_proc_table(struct rg_tracer *t, struct rg_proc_table *pt);

/* Encodes records laid out as [u32 length][record]... exactly as the ring
 * buffer consumer would (msgpack events); used to test the encoder with
 * synthetic records. */
int rg_encode_records(const unsigned char *records, size_t len, unsigned char *out, size_t cap,
		      size_t *out_len, unsigned long long *malformed);

/* The details of one record a columnar batch kept, as a msgpack poll makes
 * them; timestamp is the row's (its epoch time gives the other times). Their
 * length, or -EINVAL for a record that is not one, -ENOBUFS below
 * RG_MAX_ENCODED_RECORD bytes. */
int rg_encode_details(const void *record, size_t len, long long timestamp, unsigned char *out, size_t cap);

/* Loads (and where meaningful attaches) the named probe program alone. */
int rg_probe(const char *program, char *err, size_t errlen);
/* Loads the guard's socket destroyer on its own and runs it once (it destroys
 * nothing: its maps are empty). */
int rg_probe_sock_destroy(char *err, size_t errlen);
/* Opens (and closes) a fanotify group for permission events. */
int rg_probe_fanotify_permission(char *err, size_t errlen);

#endif
