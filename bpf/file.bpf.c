/* File opens, and opens of /proc/<pid>/mem and /proc/<pid>/environ
 * (process-memory access). */
#include "common.bpf.h"

/* The open's path, flags and mode; false when the caller is out of scope. */
static __always_inline bool rg_open_args(struct rg_syscall_args *args, __u32 syscall)
{
	if (rg_filtered_out())
		return false;
	struct pt_regs *regs = rg_syscall_regs();
	args->syscall = syscall;
	switch (syscall) {
	case RG_OPEN_OPEN:
		args->arg0 = PT_REGS_PARM1_SYSCALL(regs);
		args->arg1 = PT_REGS_PARM2_SYSCALL(regs);
		args->arg2 = PT_REGS_PARM3_SYSCALL(regs);
		break;
	case RG_OPEN_CREAT:
		/* creat(path, mode) is open(path, O_CREAT|O_WRONLY|O_TRUNC, mode). */
		args->arg0 = PT_REGS_PARM1_SYSCALL(regs);
		args->arg1 = 01 | 0100 | 01000;
		args->arg2 = PT_REGS_PARM2_SYSCALL(regs);
		break;
	case RG_OPEN_OPENAT2: {
		struct open_how how = {};
		bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_SYSCALL(regs));
		args->arg0 = PT_REGS_PARM2_SYSCALL(regs);
		args->arg1 = how.flags;
		args->arg2 = how.mode;
		break;
	}
	default:
		args->arg0 = PT_REGS_PARM2_SYSCALL(regs);
		args->arg1 = PT_REGS_PARM3_SYSCALL(regs);
		args->arg2 = PT_REGS_PARM4_SYSCALL(regs);
		break;
	}
	return true;
}

static __always_inline void rg_emit_proc_mem(struct rg_syscall_args *args, long ret, __u32 target, __u32 method)
{
	struct rg_memory_record *e = rg_reserve(struct rg_memory_record, RG_KIND_PROCESS_MEMORY);
	if (!e)
		return;
	e->retval = ret;
	e->target_pid = target;
	e->method = method;
	e->flags = args->arg1;
	rg_submit(e);
}

struct rg_file_scratch {
	struct rg_file_record record;
	char walk[2 * RG_PATH_LEN]; /* the resolved path, written backward (rg_file_path) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_file_scratch);
} rg_file_scratch SEC(".maps");

/* Files watched in place of the firehose (RG_FILTER_FILES): report-only,
 * as the guard's protected files are refused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RG_WATCH_MAX);
	__type(key, struct rg_inode_key);
	__type(value, __u8);
} rg_watch_inodes SEC(".maps");

static __always_inline bool rg_watched(struct file *file, struct inode *inode)
{
	struct rg_inode_key key = { .dev = BPF_CORE_READ(inode, i_sb, s_dev), .ino = BPF_CORE_READ(inode, i_ino) };

	if (bpf_map_lookup_elem(&rg_watch_inodes, &key))
		return true;
	/* A watched directory: every file directly in it, made before or after. */
	struct inode *dir = BPF_CORE_READ(file, f_path.dentry, d_parent, d_inode);
	if (!dir)
		return false;
	key.dev = BPF_CORE_READ(dir, i_sb, s_dev);
	key.ino = BPF_CORE_READ(dir, i_ino);
	return bpf_map_lookup_elem(&rg_watch_inodes, &key) != NULL;
}

static __always_inline int rg_open_exit(long ret, __u32 syscall)
{
	struct rg_syscall_args saved, *args = &saved;
	if (!rg_open_args(args, syscall))
		return 0;

	struct file *file = ret >= 0 ? rg_fd_file(ret) : NULL;
	struct inode *inode = file ? BPF_CORE_READ(file, f_inode) : NULL;

	if (file && rg_kind_enabled(RG_KIND_PROCESS_MEMORY)) {
		__u32 method = 0, target = rg_proc_memory_target(file, &method);
		if (target)
			rg_emit_proc_mem(args, ret, target, method);
	}
	if (!rg_kind_enabled(RG_KIND_FILE_OPEN))
		return 0;
	/* Watching: only opens that reached a watched file (a failed open
	 * reached none). */
	if ((rg_filter_flags & RG_FILTER_FILES) && !(file && rg_watched(file, inode)))
		return 0;

	/* Built in a per-CPU scratch, then sent with only the bytes its text uses. */
	__u32 zero = 0;
	struct rg_file_scratch *scratch = bpf_map_lookup_elem(&rg_file_scratch, &zero);
	if (!scratch)
		return 0;
	struct rg_file_record *e = rg_claim(&scratch->record, RG_KIND_FILE_OPEN, true, NULL);
	e->retval = ret;
	e->flags = args->arg1;
	e->mode = args->arg2;
	e->syscall = args->syscall;
	e->dev = inode ? BPF_CORE_READ(inode, i_sb, s_dev) : 0;
	e->ino = inode ? BPF_CORE_READ(inode, i_ino) : 0;
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	const char *path = (const char *)args->arg0;
	long n = bpf_probe_read_user_str(e->text, RG_PATH_LEN, path);
	e->path_truncated = rg_user_str_cut(n, RG_PATH_LEN, path);
	__u32 path_len = n > 0 ? n - 1 : 0;
	e->path_len = path_len;
	e->resolved_len = 0;
	e->resolved_truncated = 0;
	if (file) {
		__u8 unlinked;
		__u32 start = rg_file_path(file, scratch->walk, &e->resolved_truncated, &unlinked);
		__u32 len = RG_PATH_LEN - 1 - start;
		bpf_probe_read_kernel(&e->text[path_len & (RG_PATH_LEN - 1)], len & (RG_PATH_LEN - 1),
				      &scratch->walk[start & (RG_PATH_LEN - 1)]);
		e->resolved_len = len;
	}
	rg_send(e, RG_KIND_FILE_OPEN, offsetof(struct rg_file_record, text) + (path_len & (RG_PATH_LEN - 1)) +
					       (e->resolved_len & (RG_PATH_LEN - 1)));
	return 0;
}

SEC("tp/syscalls/sys_exit_open")
int rg_open_exit_open(struct trace_event_raw_sys_exit *ctx) { return rg_open_exit(ctx->ret, RG_OPEN_OPEN); }

SEC("tp/syscalls/sys_exit_creat")
int rg_open_exit_creat(struct trace_event_raw_sys_exit *ctx) { return rg_open_exit(ctx->ret, RG_OPEN_CREAT); }

SEC("tp/syscalls/sys_exit_openat")
int rg_open_exit_openat(struct trace_event_raw_sys_exit *ctx) { return rg_open_exit(ctx->ret, RG_OPEN_OPENAT); }

SEC("tp/syscalls/sys_exit_openat2")
int rg_open_exit_openat2(struct trace_event_raw_sys_exit *ctx) { return rg_open_exit(ctx->ret, RG_OPEN_OPENAT2); }
