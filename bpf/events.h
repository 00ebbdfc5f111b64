/* Wire records from the BPF programs to the native consumer.
 *
 * The one definition of every record layout: the BPF programs include it,
 * csrc/ includes it, and the cffi build feeds it (preprocessed) to cdef, so
 * Python tests build records with the very same layout.
 *
 * Plain C only (no kernel headers), fixed-width types, every record starting
 * with struct rg_header. Variable-length text sits at the end of a record.
 */
#ifndef RG_EVENTS_H
#define RG_EVENTS_H

/* The limits of what a record holds (README, "Limits"): strings keep this
 * many bytes, their NUL included, and say when they were cut. */
#define RG_COMM_LEN 16
#define RG_PATH_LEN 256
#define RG_ARGS_LEN 512
#define RG_ADDR_LEN 16
/* A failed exec's arguments are read one by one from the caller's memory:
 * at most this many, of at most RG_ARG_CHUNK bytes each (NUL included). */
#define RG_MAX_ARGS 32
#define RG_ARG_CHUNK 128
/* A path resolved in the kernel (a dentry walk) goes up at most this many
 * names and mount points; a deeper one is cut at its start. */
#define RG_PATH_DEPTH 40
/* A controlling terminal's name (tty->name: "pts3", "ttyS0"), NUL included. */
#define RG_TTY_LEN 32

/* Every event kind, the one table: X(NAME, id, name, record size,
 * decision). The ids are the stable event ids of the Python registry
 * (runtimeguard/schema.py reads this table through rg_kinds): add-only,
 * never renumbered. Record size 0: made in user space, never by a BPF
 * program. decision: a guard's decision (it carries an action and a target). */
#define RG_EVENT_KINDS(X)                                                                \
	X(PROCESS_EXEC, 1, "process_exec", sizeof(struct rg_exec_record), 0)               \
	X(PROCESS_FORK, 2, "process_fork", sizeof(struct rg_fork_record), 0)               \
	X(PROCESS_EXIT, 3, "process_exit", sizeof(struct rg_exit_record), 0)               \
	X(FILE_OPEN, 4, "file_open", sizeof(struct rg_file_record), 0)                     \
	X(NET_CONNECT, 5, "net_connect", sizeof(struct rg_net_record), 0)                  \
	X(NET_SENDMSG, 6, "net_sendmsg", sizeof(struct rg_net_record), 0)                  \
	X(PTRACE, 7, "ptrace", sizeof(struct rg_ptrace_record), 0)                         \
	X(PROCESS_MEMORY, 8, "process_memory", sizeof(struct rg_memory_record), 0)         \
	X(LOST, 9, "lost", 0, 0)                                                           \
	X(CONNECT_DENIED, 10, "connect_denied", sizeof(struct rg_block_record), 1)         \
	X(EXFIL_BLOCKED, 11, "exfil_blocked", sizeof(struct rg_block_record), 1)           \
	X(OPEN_INODE, 12, "open_inode", sizeof(struct rg_block_record), 1)                 \
	X(MIRAGE_TRAP, 13, "mirage_trap", sizeof(struct rg_block_record), 1)               \
	X(PTRACE_DENIED, 14, "ptrace_denied", sizeof(struct rg_block_record), 1)           \
	X(MODE_CHANGED, 15, "mode_changed", 0, 0)                                          \
	X(PROTECTED_FILE_CHANGED, 16, "protected_file_changed", sizeof(struct rg_block_record), 1) \
	X(NAMESPACE_DENIED, 17, "namespace_denied", sizeof(struct rg_block_record), 1) \
	X(DETECTION, 18, "detection", 0, 0)                                                \
	X(FUNCTION_CALL, 19, "function_call", sizeof(struct rg_call_record), 0)          \
	X(DNS_ANSWER, 20, "dns_answer", sizeof(struct rg_dns_record), 0)

enum rg_kind {
#define RG_KIND_ID(NAME, id, name, size, decision) RG_KIND_##NAME = id,
	RG_EVENT_KINDS(RG_KIND_ID)
#undef RG_KIND_ID
};

/* Size of the per-kind counter arrays; kinds stay below it. */
#define RG_KIND_SLOTS 32

/* Kernel-side filter switches (rg_filter_flags). */
#define RG_FILTER_PID 1
#define RG_FILTER_COMM 2
#define RG_FILTER_CGROUP 4
/* file_open only for watched files (rg_watch_inodes): a file whose own
 * inode, or whose directory's, is in the map. */
#define RG_FILTER_FILES 8
/* Files and directories a tracer watches at most (struct rg_inode_key). */
#define RG_WATCH_MAX 65536

/* How a process-memory access was made. */
#define RG_MEM_VM_READV 1
#define RG_MEM_VM_WRITEV 2
#define RG_MEM_PROC_MEM_OPEN 3
#define RG_MEM_PIDFD_GETFD 4       /* a descriptor taken from another process */
#define RG_MEM_PROC_ENVIRON_OPEN 5 /* /proc/<pid>/environ: the target's environment */
#define RG_MEM_CLONE_FILES 6       /* a process sharing the caller's descriptor table */

/* Which open syscall a file_open came from. */
#define RG_OPEN_OPEN 1
#define RG_OPEN_OPENAT 2
#define RG_OPEN_OPENAT2 3
#define RG_OPEN_CREAT 4

/* Which send syscall a net_sendmsg came from. */
#define RG_SEND_SENDTO 1
#define RG_SEND_SENDMSG 2

struct rg_header {
	unsigned long long timestamp_ns;   /* CLOCK_BOOTTIME */
	unsigned long long seq;            /* per-CPU, counts lost records too */
	unsigned long long cgroup_id;      /* cgroup v2 id of the task */
	unsigned long long start_boottime; /* process (thread group leader) start */
	unsigned int kind;
	unsigned int cpu;
	unsigned int pid; /* thread group id */
	unsigned int tid;
	/* The acting task's credentials and name when the record was made (a
	 * setuid() or prctl(PR_SET_NAME) after fork or exec shows at once);
	 * RG_ID_UNKNOWN where the program could not read them. */
	unsigned int uid;
	unsigned int euid;
	unsigned int gid;
	unsigned int pad;
	char comm[RG_COMM_LEN];
};

#define RG_ID_UNKNOWN 0xffffffffU

/* Machine identity: the environment variable names an exec's environment
 * is scanned for (values never leave the kernel). A pattern is a name
 * (exact), a prefix ("AWS_*") or a suffix ("*_TOKEN"); each has a bit in
 * the exec record's identity_mask. The kernel looks names up by a 64-bit
 * FNV-1a hash of the name, or of the prefix or suffix, its kind in the low
 * two bits, in a map the tracer fills (rg_identity_names). */
#define RG_IDENTITY_MAX 64        /* patterns, one bit each */
#define RG_IDENTITY_NAME_MAX 128  /* longer names are not matched */
#define RG_IDENTITY_AFFIX_MAX 32  /* prefixes and suffixes, at most this long */
#define RG_ENV_SCAN_MAX 32768     /* environment bytes scanned at most */
#define RG_ENV_VARS_MAX 512       /* variables scanned at most */
#define RG_IDENTITY_EXACT 0
#define RG_IDENTITY_PREFIX 1
#define RG_IDENTITY_SUFFIX 2
#define RG_FNV_OFFSET 0xcbf29ce484222325ULL
#define RG_FNV_PRIME 0x100000001b3ULL

#define RG_IDENTITY_KEY(fnv, kind) (((fnv) & ~3ULL) | (kind))

/* The scan's settings: which prefix and suffix lengths patterns have (bit n:
 * a pattern n bytes long), and whether any pattern is set. */
struct rg_identity_config {
	unsigned long long prefix_lengths;
	unsigned long long suffix_lengths;
	unsigned int enabled;
	unsigned int pad;
};

/* What a process's descriptors 0-2 were at exec. A shell whose stdin is an
 * internet socket is a reverse shell; sshd hands sessions without a
 * terminal a unix socket, so the two are told apart. */
#define RG_FD_KINDS(X)                 \
	X(NONE, 0, "none")             \
	X(FILE, 1, "file")             \
	X(DIRECTORY, 2, "directory")   \
	X(PIPE, 3, "pipe")             \
	X(TTY, 4, "tty")               \
	X(CHAR_DEVICE, 5, "char_device") \
	X(INET_SOCKET, 6, "inet_socket") \
	X(UNIX_SOCKET, 7, "unix_socket") \
	X(SOCKET, 8, "socket")         \
	X(OTHER, 9, "other")

enum rg_fd_kind {
#define RG_FD_KIND_ID(NAME, id, name) RG_FD_##NAME = id,
	RG_FD_KINDS(RG_FD_KIND_ID)
#undef RG_FD_KIND_ID
};

struct rg_exec_record {
	struct rg_header hdr;
	unsigned long long parent_start_boottime;
	int retval; /* 0: exec done; <0: the failed execve's -errno */
	unsigned int ppid;
	unsigned int args_len; /* valid bytes in args: NUL-separated argv */
	unsigned int ns_pid; /* the pid as the process sees it, in its own pid namespace */
	unsigned int pid_ns; /* that namespace's inode number (/proc/<pid>/ns/pid) */
	unsigned char args_truncated;
	unsigned char filename_truncated;
	/* The executed file itself (a done exec only): its device, inode and
	 * path, whatever name the caller passed (./x, /dev/fd/3, a symlink). */
	unsigned char exe_path_truncated;
	unsigned char exe_unlinked; /* no name on any filesystem: memfd, deleted */
	unsigned long long exe_dev; /* kernel dev_t */
	unsigned long long exe_ino;
	unsigned int exe_path_start; /* exe_path's text starts here, ends at its last byte */
	unsigned int cwd_path_start; /* as exe_path_start */
	/* The context the program starts in (a failed exec: the caller's). */
	unsigned int auid;  /* login uid (audit); RG_ID_UNKNOWN when never set */
	unsigned int suid;
	unsigned int fsuid;
	unsigned int pad;
	unsigned long long cap_effective; /* capability bit masks */
	unsigned long long cap_permitted;
	unsigned char secureexec; /* set-uid, set-gid or file capabilities raised privilege */
	unsigned char cwd_truncated;
	unsigned char stdio[3]; /* enum rg_fd_kind of descriptors 0, 1, 2 */
	unsigned char env_scan_cut; /* the environment was larger than the scan's bounds */
	unsigned char pad_bytes[2];
	unsigned long long identity_mask; /* bit i: identity pattern i is in the environment */
	char tty[RG_TTY_LEN]; /* the controlling terminal's name; empty: none */
	char exe_path[RG_PATH_LEN];
	char cwd_path[RG_PATH_LEN]; /* the working directory, written as exe_path is */
	char filename[RG_PATH_LEN]; /* as the caller passed it */
	char args[RG_ARGS_LEN];
};

struct rg_fork_record {
	struct rg_header hdr; /* the parent */
	unsigned long long child_start_boottime;
	unsigned int child_pid;
	unsigned int child_ns_pid; /* as the child sees itself, in its pid namespace */
	unsigned int child_pid_ns; /* that namespace's inode number */
	unsigned int pad;
};

struct rg_exit_record {
	struct rg_header hdr;
	unsigned int exit_code; /* wait(2) status word: code << 8 | signal */
	unsigned int pad;
};

/* Sent with only the bytes its text uses (a record of variable length, at
 * least offsetof(text)): most opens name short paths. */
struct rg_file_record {
	struct rg_header hdr;
	long long retval; /* fd, or -errno */
	unsigned long long dev; /* kernel dev_t of the opened inode's superblock */
	unsigned long long ino;
	unsigned int flags;
	unsigned int mode;
	unsigned int syscall; /* RG_OPEN_* */
	unsigned char path_truncated;
	unsigned char resolved_truncated;
	unsigned short path_len;     /* text's first bytes: the path as the caller passed it (no NUL) */
	unsigned short resolved_len; /* the bytes after it: the opened file's own path, whatever the
				      * caller passed (relative, through symlinks or /proc/self/fd);
				      * a successful open only */
	unsigned short pad[3];
	char text[2 * RG_PATH_LEN];
};

struct rg_net_record {
	struct rg_header hdr;
	long long retval;
	unsigned char addr[RG_ADDR_LEN]; /* network byte order, as in the sockaddr */
	unsigned short family; /* AF_INET or AF_INET6 */
	unsigned short port;   /* host byte order */
	unsigned short protocol; /* IPPROTO_* of the socket, 0 when unknown */
	unsigned short sock_type; /* SOCK_* of the socket, 0 when unknown */
	unsigned int fd;
	unsigned int syscall; /* RG_SEND_* for net_sendmsg, 0 for connect */
	/* The socket's own end after the call (0 family: not a socket we could read). */
	unsigned char local_addr[RG_ADDR_LEN]; /* network byte order */
	unsigned short local_family;
	unsigned short local_port; /* host byte order; 0: none bound */
	unsigned int pad;
};

struct rg_ptrace_record {
	struct rg_header hdr;
	long long request;
	long long retval;
	unsigned int target_pid;
	unsigned int pad;
};

struct rg_memory_record {
	struct rg_header hdr;
	long long retval;
	unsigned int target_pid;
	unsigned int method; /* RG_MEM_* */
	unsigned int flags;  /* open flags, for RG_MEM_PROC_MEM_OPEN */
	unsigned int pad;
};

/* What a guard decision did (rg_block_*_record.action). */
#define RG_ACTION_WOULD_BLOCK 1 /* audit mode: reported only */
#define RG_ACTION_BLOCKED 2     /* the caller got EPERM */
#define RG_ACTION_KILLED 3      /* the caller was sent SIGKILL */
#define RG_ACTION_REPORTED 4    /* enforce mode, but the rule only reports */

#define RG_MODE_AUDIT 0
#define RG_MODE_ENFORCE 1

/* How a protected file was changed (rg_block_record.flags of
 * RG_KIND_PROTECTED_FILE_CHANGED). */
#define RG_CHANGE_DELETE 1
#define RG_CHANGE_MOVE 2
#define RG_CHANGE_CREATE 3
#define RG_CHANGE_MODIFY 4
#define RG_CHANGE_ATTRIBUTES 5

/* What made or joined a namespace, or mounted (rg_block_record.operation of
 * RG_KIND_NAMESPACE_DENIED; its flags hold the CLONE_NEW* bits asked for). */
#define RG_NS_UNSHARE 1
#define RG_NS_CLONE 2
#define RG_NS_CLONE3 3
#define RG_NS_SETNS 4
#define RG_NS_MOUNT 5
#define RG_NS_MOVE_MOUNT 6
#define RG_NS_FSMOUNT 7
#define RG_NS_OPEN_TREE 8
#define RG_NS_MOUNT_SETATTR 9
#define RG_NS_PIVOT_ROOT 10

/* Protected inode kinds (rg_protected_value.kind). */
#define RG_PROTECT_FILE 1
#define RG_PROTECT_MIRAGE 2

#define RG_MAX_NET_RULES 256
#define RG_NET_ALLOW 1
#define RG_NET_DENY 2

/* Guard settings: one array slot, updated in place to switch mode. */
struct rg_guard_config {
	unsigned int mode;              /* RG_MODE_* */
	unsigned int net_default_deny;  /* 1: egress not allowed by a rule is denied */
	unsigned int net_rule_count;
	unsigned int file_kill;         /* enforce: kill on a protected open (else report) */
	unsigned int mirage_kill;       /* enforce: kill on a decoy open */
	unsigned int ptrace_deny;       /* deny every ptrace/memory access by guarded processes */
	unsigned int taint_from;        /* bit per RG_PROTECT_* kind that taints */
	unsigned int taint_blocks_egress;
	unsigned long long scope_cgroup_id; /* 0: the whole host */
	unsigned int scope_cgroup_level;
	unsigned int guard_tgid;        /* never guarded: the guard itself */
	unsigned int raw_socket_deny;   /* raw and packet sockets bypass the address hooks */
	unsigned int files_by_fanotify; /* protected files and decoys are judged by fanotify, not here */
	unsigned int ns_deny_flags;     /* CLONE_NEW* kinds no guarded process may make or join */
	unsigned int mount_deny;        /* no guarded process may mount */
	unsigned int dns_observe;       /* read DNS answers: hostname rules, target hostnames */
	unsigned int dns_refuse_untrusted; /* port 53 of servers outside rg_dns_servers is refused */
	unsigned long long dns_min_ttl_ns; /* an answer's addresses are held at least this long */
	unsigned long long dns_max_ttl_ns; /* and at most this long */
};

/* One egress rule, matched in order by the cgroup socket hooks. */
struct rg_net_rule {
	unsigned char addr[RG_ADDR_LEN]; /* network order; IPv4 in the first 4 bytes */
	unsigned short family;           /* AF_INET or AF_INET6 */
	unsigned short prefix_len;
	unsigned short port_lo;          /* host order, inclusive */
	unsigned short port_hi;
	unsigned short protocol;         /* IPPROTO_TCP, IPPROTO_UDP, 0: any */
	unsigned short action;           /* RG_NET_* */
	unsigned int rule_index;         /* into the policy's compiled rule list */
	unsigned short pattern;          /* 0: addr/prefix_len decide; n: host pattern bit n - 1 does
					  * (the destination was an answer for a name it matches) */
	unsigned short pad;
};

/* Hostname rules. A DNS answer to a guarded process is read by a cgroup_skb
 * ingress program before the process can read it: if it answers a query the
 * process's cgroup sent (the same id, name, server and port, seen at
 * egress), its A and AAAA addresses enter rg_resolved, marked with the host
 * patterns the question's name matches, until their TTL (bounded) runs out.
 * The connect and send hooks then match host rules by those marks. */
#define RG_DNS_NAME_LEN 256     /* a name as text, NUL included (253 bytes at most) */
#define RG_DNS_ADDRESSES 16     /* addresses one dns_answer record carries */
#define RG_HOST_PATTERNS 64     /* distinct host patterns (exact names and *.globs) */

/* What became of an answer (rg_dns_record.status). */
#define RG_DNS_COUNTED 1          /* its addresses entered rg_resolved */
#define RG_DNS_NO_QUERY 2         /* no query of this cgroup matches it (id, name, server, port) */
#define RG_DNS_UNTRUSTED_SERVER 3 /* from a server outside rg_dns_servers */
#define RG_DNS_MALFORMED 4        /* not a DNS answer the parser could read */

/* A query in flight, keyed by who sent it where. */
struct rg_dns_query_key {
	unsigned long long cgroup_id;
	unsigned char server[RG_ADDR_LEN]; /* network order; IPv4 in the first 4 bytes */
	unsigned short family;
	unsigned short local_port;         /* host order */
	unsigned short id;                 /* the message id */
	unsigned char protocol;            /* IPPROTO_UDP or IPPROTO_TCP */
	unsigned char pad;
};

struct rg_dns_query {
	unsigned long long name_hash; /* rg_name_hash() of the question's name */
	unsigned long long sent_ns;   /* boot clock */
	unsigned int tgid;            /* the socket's process (its last connect or addressed send) */
	unsigned short qtype;
	unsigned short pad;
};

struct rg_resolved_key {
	unsigned char addr[RG_ADDR_LEN]; /* network order; IPv4 in the first 4 bytes */
	unsigned int family;
};

struct rg_resolved_value {
	unsigned long long expires_ns; /* boot clock */
	unsigned long long patterns;   /* bit per host pattern a name answered with it matches */
	unsigned long long name_hash;  /* the last such name (rg_names) */
};

/* rg_host_patterns: rg_name_hash(text) -> the pattern. The text is compared
 * on a hit, so a name whose hash collides matches nothing. */
struct rg_host_pattern {
	unsigned long long bits; /* its bit (one per distinct text) */
	unsigned int len;        /* of text, without its NUL */
	unsigned int pad;
	char text[RG_DNS_NAME_LEN]; /* "api.example.com" or "*.example.com", lower case */
};

struct rg_dns_name {
	char text[RG_DNS_NAME_LEN];
};

struct rg_inode_key {
	unsigned long long dev; /* kernel dev_t */
	unsigned long long ino;
};

struct rg_protected_value {
	unsigned int kind;       /* RG_PROTECT_* */
	unsigned int rule_index;
	unsigned int is_dir;     /* protects everything beneath it */
	unsigned int pad;
};

/* A guard decision. Target is a network destination, an inode, or a pid. */
struct rg_block_record {
	struct rg_header hdr;
	unsigned int action;      /* RG_ACTION_* */
	unsigned int rule_index;  /* 0xffffffff: the network default; 0xfffffffe: taint */
	unsigned int target_pid;
	unsigned short family;
	unsigned short port;
	unsigned short protocol;
	unsigned short operation; /* namespace: RG_NS_* */
	unsigned int flags;       /* ptrace: RG_MEM_* method; raw socket: SOCK_* type; change: RG_CHANGE_*;
				   * namespace: CLONE_NEW* bits */
	unsigned char addr[RG_ADDR_LEN];
	unsigned long long dev;
	unsigned long long ino;
	unsigned long long name_hash; /* egress: the name answered with addr (rg_names), 0: none seen */
	char path[RG_PATH_LEN];
};

#define RG_RULE_NET_DEFAULT 0xffffffffU
#define RG_RULE_TAINT 0xfffffffeU
#define RG_RULE_PTRACE_DENY 0xfffffffdU
#define RG_RULE_RAW_SOCKET 0xfffffffcU
#define RG_RULE_NAMESPACES 0xfffffffbU
#define RG_RULE_DNS_UNTRUSTED 0xfffffffaU

/* Function calls: uprobes and USDT probes the tracer attaches. Each
 * attachment's BPF cookie names its probe (an index into rg_call_probes) and
 * whether it is the return probe. */
#define RG_CALL_PROBES_MAX 256
#define RG_CALL_COOKIE(probe, is_return) ((unsigned long long)(probe) << 1 | (is_return))
/* User stacks keep this many frames, innermost first; the stack map this
 * many stacks (a stack is stored once, however often it is seen). */
#define RG_CALL_STACK_DEPTH 32
#define RG_CALL_STACKS 4096
/* (probe, process, stack) triples counted in the kernel at most. */
#define RG_CALL_PATHS_MAX 32768
/* Bytes of a call's buffer (or a USDT probe's strings) a record holds. */
#define RG_CALL_DATA_MAX 4096
#define RG_CALL_ARGS 5
/* A stack frame the kernel named by its file: BPF_STACK_BUILD_ID_VALID.
 * Otherwise it holds the bare address (BPF_STACK_BUILD_ID_IP). */
#define RG_STACK_BUILD_ID_SIZE 20
struct rg_stack_frame {
	int status; /* 1: build_id and offset; 2: ip; 0: no frame */
	unsigned char build_id[RG_STACK_BUILD_ID_SIZE];
	unsigned long long offset_or_ip;
};

/* What a probe does (rg_call_probe.flags). */
#define RG_CALL_STACK 1    /* capture the user stack */
#define RG_CALL_RECORDS 2  /* send a record per call (rate-limited), besides counting it */
#define RG_CALL_USDT 4     /* a USDT probe: its arguments come from its note */
#define RG_CALL_CAPTURE 8  /* copy a buffer the call reads or writes */
#define RG_CALL_RETURNS 16 /* a return probe is attached too */

/* Where a captured buffer's length comes from (rg_call_probe.length_from). */
#define RG_LENGTH_ARG 0     /* the argument length_arg, at entry: the buffer is read at entry */
#define RG_LENGTH_RETVAL 1  /* the return value: the buffer is read at return */
#define RG_LENGTH_POINTER 2 /* the size_t the argument length_arg points to, at return */

struct rg_call_probe {
	unsigned int flags;          /* RG_CALL_* */
	unsigned char buffer_arg;    /* RG_CALL_CAPTURE: the argument (0-4) pointing at the buffer */
	unsigned char length_arg;
	unsigned char length_from;   /* RG_LENGTH_* */
	unsigned char string_args;   /* USDT: bit i, argument i is a C string (copied into data) */
	unsigned int capture_bytes;  /* RG_CALL_CAPTURE: bytes of the buffer kept at most */
	unsigned int pad;
	/* RG_CALL_RECORDS: a token bucket, records per second and the burst;
	 * rate 0 sends every call. Calls past it are counted, not sent. */
	unsigned long long rate;
	unsigned long long burst;
};

/* A probe's token bucket and what it has counted (rg_call_state). */
struct rg_call_state {
	long long tokens;              /* in billionths of a record */
	unsigned long long refilled_ns; /* boot clock */
	unsigned long long calls;       /* hits in scope */
	unsigned long long limited;     /* records the bucket held back */
	unsigned long long unsaved;     /* entries a return probe could not be matched to */
	unsigned long long stack_errors; /* stacks that could not be stored (map full, hash collision) */
	unsigned long long paths_full;  /* calls not counted: the path map was full */
};

/* The kernel's count of a (probe, process, stack): rg_call_paths. */
struct rg_call_path_key {
	unsigned long long cgroup_id;
	unsigned int pid;
	unsigned int probe;  /* RG_CALL_COOKIE */
	int stack_id;        /* <0: no stack (-errno of bpf_get_stackid) */
	unsigned int pad;
};

struct rg_call_path_count {
	unsigned long long count;
	unsigned long long first_ns; /* boot clock */
	unsigned long long last_ns;
};

/* One call (sent with only the data bytes it holds). */
struct rg_call_record {
	struct rg_header hdr;
	unsigned long long ip;        /* entry: the function's address; return: where it returns to */
	long long retval;             /* return probes: the return value */
	unsigned long long args[RG_CALL_ARGS]; /* the first arguments (USDT: the note's) */
	int stack_id;                 /* in rg_call_stacks; <0: none (-errno) */
	unsigned int probe;           /* the probe's index */
	unsigned char is_return;
	unsigned char data_truncated; /* the buffer was longer than capture_bytes */
	unsigned char arg_count;      /* USDT: the note's argument count */
	unsigned char usdt;           /* a USDT probe's: args are the note's */
	unsigned int data_len;        /* bytes in data */
	unsigned long long data_size; /* the buffer's length as the call gave it */
	char data[RG_CALL_DATA_MAX];  /* the captured buffer, or the USDT strings, each NUL-ended */
};

/* A DNS answer to a guarded process (sent with only the name bytes it holds). */
struct rg_dns_record {
	struct rg_header hdr;          /* the querying process (pid only; 0 when no query matched) */
	unsigned long long patterns;   /* host patterns the name matched */
	unsigned long long name_hash;
	unsigned char server[RG_ADDR_LEN];
	unsigned short server_family;
	unsigned short server_port;
	unsigned short protocol;
	unsigned short qtype;
	unsigned short rcode;
	unsigned short status;         /* RG_DNS_* */
	unsigned short address_count;  /* in addresses */
	unsigned short addresses_total; /* A and AAAA records in the answer section */
	unsigned int ttl;              /* seconds the addresses are held (the lowest TTL, bounded) */
	unsigned short name_len;
	unsigned short pad;
	unsigned char addresses[RG_DNS_ADDRESSES][RG_ADDR_LEN];
	unsigned short families[RG_DNS_ADDRESSES];
	char name[RG_DNS_NAME_LEN];    /* the question's name, lower case, no final dot */
};

/* Per-CPU counters, one array slot. seq numbers every record a program tried
 * to emit; lost counts those the ring buffer could not take, per kind. */
struct rg_counters {
	unsigned long long seq;
	unsigned long long lost[RG_KIND_SLOTS];
};

#endif
