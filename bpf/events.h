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

#define RG_COMM_LEN 16
#define RG_PATH_LEN 256
#define RG_ARGS_LEN 512
#define RG_ADDR_LEN 16

/* Record kinds. Numbers are the stable event ids of the Python registry
 * (runtimeguard/schema.py): add-only, never renumbered. */
#define RG_KIND_PROCESS_EXEC 1
#define RG_KIND_PROCESS_FORK 2
#define RG_KIND_PROCESS_EXIT 3
#define RG_KIND_FILE_OPEN 4
#define RG_KIND_NET_CONNECT 5
#define RG_KIND_NET_SENDMSG 6
#define RG_KIND_PTRACE 7
#define RG_KIND_PROCESS_MEMORY 8
#define RG_KIND_LOST 9
/* Size of the per-kind counter arrays; kinds stay below it. */
#define RG_KIND_SLOTS 32

/* Kernel-side filter switches (rg_filter_flags). */
#define RG_FILTER_PID 1
#define RG_FILTER_COMM 2
#define RG_FILTER_CGROUP 4

/* How a process-memory access was made. */
#define RG_MEM_VM_READV 1
#define RG_MEM_VM_WRITEV 2
#define RG_MEM_PROC_MEM_OPEN 3

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
};

struct rg_exec_record {
	struct rg_header hdr;
	unsigned long long parent_start_boottime;
	int retval; /* 0: exec done; <0: the failed execve's -errno */
	unsigned int ppid;
	unsigned int uid;
	unsigned int euid;
	unsigned int gid;
	unsigned int args_len; /* valid bytes in args: NUL-separated argv */
	unsigned char args_truncated;
	unsigned char filename_truncated;
	unsigned char pad[2];
	char comm[RG_COMM_LEN];
	char filename[RG_PATH_LEN];
	char args[RG_ARGS_LEN];
};

struct rg_fork_record {
	struct rg_header hdr; /* the parent */
	unsigned long long child_start_boottime;
	unsigned int child_pid;
	unsigned int pad;
};

struct rg_exit_record {
	struct rg_header hdr;
	unsigned int exit_code; /* wait(2) status word: code << 8 | signal */
	unsigned int pad;
};

struct rg_file_record {
	struct rg_header hdr;
	long long retval; /* fd, or -errno */
	unsigned long long dev; /* kernel dev_t of the opened inode's superblock */
	unsigned long long ino;
	unsigned int flags;
	unsigned int mode;
	unsigned int syscall; /* RG_OPEN_* */
	unsigned char path_truncated;
	unsigned char pad[3];
	char path[RG_PATH_LEN]; /* as the caller passed it */
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

/* Per-CPU counters, one array slot. seq numbers every record a program tried
 * to emit; lost counts those the ring buffer could not take, per kind. */
struct rg_counters {
	unsigned long long seq;
	unsigned long long lost[RG_KIND_SLOTS];
};

#endif
