/* Process lifecycle: exec (and failed execs), fork, exit.
 *
 * Always loaded: these records also feed the consumer's process table, which
 * resolves every other event's process identity. */
#include "common.bpf.h"

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000
#define S_IFDIR 0040000
#define S_IFCHR 0020000
#define S_IFIFO 0010000
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define RG_MINORBITS 20

/* What a descriptor of the task is: the kind of its file, a character
 * device told apart as a terminal by its major number (virtual consoles
 * and serial lines 4, /dev/tty and the console 5, pty slaves 136-143), a
 * socket by its family. */
static __always_inline __u8 rg_fd_kind(struct task_struct *task, int fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return RG_FD_NONE;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return RG_FD_NONE;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	switch (BPF_CORE_READ(inode, i_mode) & S_IFMT) {
	case S_IFREG:
		return RG_FD_FILE;
	case S_IFDIR:
		return RG_FD_DIRECTORY;
	case S_IFIFO:
		return RG_FD_PIPE;
	case S_IFCHR: {
		__u32 major = BPF_CORE_READ(inode, i_rdev) >> RG_MINORBITS;
		return major == 4 || major == 5 || (major >= 136 && major <= 143) ? RG_FD_TTY : RG_FD_CHAR_DEVICE;
	}
	case S_IFSOCK: {
		struct socket *sock = BPF_CORE_READ(file, private_data);
		__u16 family = BPF_CORE_READ(sock, sk, __sk_common.skc_family);
		return family == AF_INET || family == AF_INET6 ? RG_FD_INET_SOCKET
		       : family == AF_UNIX		       ? RG_FD_UNIX_SOCKET
							       : RG_FD_SOCKET;
	}
	default:
		return RG_FD_OTHER;
	}
}

/* ---- machine identity: which configured variable names the environment holds ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 3 * RG_IDENTITY_MAX);
	__type(key, __u64); /* RG_IDENTITY_KEY() of a name, prefix or suffix */
	__type(value, __u32); /* its pattern's bit */
} rg_identity_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_identity_config);
} rg_identity_cfg SEC(".maps");

/* The environment is read a variable at a time, a chunk at most: a longer
 * value takes several reads, its name only the first. */
#define RG_ENV_CHUNK 512

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[RG_ENV_CHUNK]);
} rg_env_chunk SEC(".maps");

struct rg_env_scan {
	unsigned long at, end;
	__u64 mask;
	__u64 prefix_lengths, suffix_lengths;
	__u32 in_value; /* at is inside a value longer than a chunk */
	/* The variable being read: its chunk's length (NUL counted), where its
	 * '=' is (-1: not yet), and the hash of its name so far. */
	__u32 len;
	__s32 eq;
	__u32 pad;
	__u64 name_hash;
};

static __always_inline void rg_identity_hit(struct rg_env_scan *s, __u64 fnv, __u32 kind)
{
	__u64 key = RG_IDENTITY_KEY(fnv, kind);
	__u32 *bit = bpf_map_lookup_elem(&rg_identity_names, &key);

	if (bit)
		s->mask |= 1ULL << (*bit & (RG_IDENTITY_MAX - 1));
}

/* The name's characters run through callbacks (bpf_loop), not loops: the
 * verifier then checks each step once, whatever the name's length, where a
 * loop would have it follow every length and every '=' position apart. */

static long rg_name_char(__u32 i, void *ctx)
{
	struct rg_env_scan *s = ctx;
	__u32 zero = 0;
	unsigned char *buf = bpf_map_lookup_elem(&rg_env_chunk, &zero);

	if (!buf || i + 1 >= s->len)
		return 1;
	unsigned char c = buf[i & (RG_ENV_CHUNK - 1)];
	if (c == '=') {
		s->eq = i;
		return 1;
	}
	s->name_hash = (s->name_hash ^ c) * RG_FNV_PRIME;
	if (i < RG_IDENTITY_AFFIX_MAX && (s->prefix_lengths >> ((i + 1) & 63) & 1))
		rg_identity_hit(s, s->name_hash, RG_IDENTITY_PREFIX);
	return 0;
}

static long rg_name_suffix(__u32 k0, void *ctx)
{
	struct rg_env_scan *s = ctx;
	__u32 k = k0 + 1, zero = 0;

	if (!(s->suffix_lengths >> (k & 63) & 1) || (__s32)k > s->eq)
		return 0;
	unsigned char *buf = bpf_map_lookup_elem(&rg_env_chunk, &zero);
	if (!buf)
		return 1;
	__u64 h = RG_FNV_OFFSET;
	for (__u32 j = 0; j < RG_IDENTITY_AFFIX_MAX && j < k; j++)
		h = (h ^ buf[(s->eq - k + j) & (RG_ENV_CHUNK - 1)]) * RG_FNV_PRIME;
	rg_identity_hit(s, h, RG_IDENTITY_SUFFIX);
	return 0;
}

static long rg_env_var(__u32 index, void *ctx)
{
	struct rg_env_scan *s = ctx;
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&rg_env_chunk, &zero);

	if (!buf || s->at >= s->end)
		return 1;
	long n = bpf_probe_read_user_str(buf, RG_ENV_CHUNK, (void *)s->at);
	if (n <= 0)
		return 1;
	if (!s->in_value) {
		/* The name, up to '=': hashed as it goes, each configured prefix
		 * length looked up on the way, the whole name and the configured
		 * suffixes at its end. */
		s->len = n;
		s->eq = -1;
		s->name_hash = RG_FNV_OFFSET;
		bpf_loop(RG_IDENTITY_NAME_MAX, rg_name_char, s, 0);
		if (s->eq > 0) {
			rg_identity_hit(s, s->name_hash, RG_IDENTITY_EXACT);
			if (s->suffix_lengths)
				bpf_loop(RG_IDENTITY_AFFIX_MAX, rg_name_suffix, s, 0);
		}
	}
	/* n counts the NUL. A full chunk may have cut the variable: go on from
	 * its last byte (a variable that just fitted then reads as an empty
	 * one, which holds no name). */
	if (n < RG_ENV_CHUNK) {
		s->at += n;
		s->in_value = 0;
	} else {
		s->at += n - 1;
		s->in_value = 1;
	}
	return 0;
}

static __always_inline void rg_scan_environment(struct rg_exec_record *e, struct task_struct *task)
{
	__u32 zero = 0;
	struct rg_identity_config *cfg = bpf_map_lookup_elem(&rg_identity_cfg, &zero);

	e->identity_mask = 0;
	e->env_scan_cut = 0;
	if (!cfg || !cfg->enabled)
		return;
	unsigned long start = BPF_CORE_READ(task, mm, env_start);
	unsigned long end = BPF_CORE_READ(task, mm, env_end);
	struct rg_env_scan scan = {
		.at = start,
		.end = end - start > RG_ENV_SCAN_MAX ? start + RG_ENV_SCAN_MAX : end,
		.prefix_lengths = cfg->prefix_lengths,
		.suffix_lengths = cfg->suffix_lengths,
	};
	bpf_loop(RG_ENV_VARS_MAX + RG_ENV_SCAN_MAX / RG_ENV_CHUNK, rg_env_var, &scan, 0);
	e->identity_mask = scan.mask;
	e->env_scan_cut = scan.at < end;
}

static __always_inline void rg_fill_identity(struct rg_exec_record *e, struct task_struct *task)
{
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);

	e->ppid = BPF_CORE_READ(parent, tgid);
	e->parent_start_boottime = rg_task_start(parent);
	rg_ns_pid(task, &e->ns_pid, &e->pid_ns);

	const struct cred *cred = BPF_CORE_READ(task, cred);
	e->auid = BPF_CORE_READ(task, loginuid.val);
	e->suid = BPF_CORE_READ(cred, suid.val);
	e->fsuid = BPF_CORE_READ(cred, fsuid.val);
	e->pad = 0;
	/* kernel_cap_t is one u64 since 6.3, two u32 (low first) before: the
	 * same eight bytes either way. */
	e->cap_effective = e->cap_permitted = 0;
	bpf_probe_read_kernel(&e->cap_effective, sizeof(e->cap_effective), &cred->cap_effective);
	bpf_probe_read_kernel(&e->cap_permitted, sizeof(e->cap_permitted), &cred->cap_permitted);
	for (int fd = 0; fd < 3; fd++)
		e->stdio[fd] = rg_fd_kind(task, fd);
	e->pad_bytes[0] = e->pad_bytes[1] = 0;
	e->tty[0] = 0;
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	if (tty)
		bpf_probe_read_kernel_str(e->tty, sizeof(e->tty), &tty->name);
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	__u8 unlinked;
	e->cwd_path_start = rg_path(BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt), e->cwd_path,
				    &e->cwd_truncated, &unlinked);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(rg_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	if (rg_filtered_out())
		return 0;
	struct rg_exec_record *e = rg_reserve(struct rg_exec_record, RG_KIND_PROCESS_EXEC);
	if (!e)
		return 0;
	/* First: the verifier walks the scan's loop once per state that reaches
	 * it, and the path walks below leave many. */
	rg_scan_environment(e, task);
	rg_fill_identity(e, task);
	e->retval = 0;
	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	e->filename_truncated = rg_kernel_str_cut(n, sizeof(e->filename), filename);
	struct file *file = BPF_CORE_READ(bprm, file);
	e->exe_dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	e->exe_ino = BPF_CORE_READ(file, f_inode, i_ino);
	e->exe_path_start = rg_file_path(file, e->exe_path, &e->exe_path_truncated, &e->exe_unlinked);
	e->secureexec = BPF_CORE_READ_BITFIELD(bprm, secureexec);

	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long len = end > start ? end - start : 0;
	e->args_truncated = len > RG_ARGS_LEN;
	if (len > RG_ARGS_LEN)
		len = RG_ARGS_LEN;
	if (bpf_probe_read_user(e->args, len, (void *)start) < 0)
		len = 0;
	e->args_len = len;
	rg_submit(e);
	return 0;
}

/* A failed execve never reaches sched_process_exec: it is reported at exit,
 * with the error. Its arguments are read then from the caller's saved user
 * registers, which a failed exec leaves as they were: nothing is saved at
 * entry, where every exec (nearly all succeed, each in a task new to us)
 * would pay for it. */

static __always_inline int rg_exec_failed(long ret, bool at)
{
	if (ret >= 0 || rg_filtered_out())
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	const char *filename = (const char *)(at ? PT_REGS_PARM2_SYSCALL(regs) : PT_REGS_PARM1_SYSCALL(regs));
	const char *const *argv = (const char *const *)(at ? PT_REGS_PARM3_SYSCALL(regs) : PT_REGS_PARM2_SYSCALL(regs));
	struct rg_exec_record *e = rg_reserve(struct rg_exec_record, RG_KIND_PROCESS_EXEC);
	if (!e)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	rg_fill_identity(e, task);
	e->retval = ret;
	/* The new environment was never installed. */
	e->identity_mask = 0;
	e->env_scan_cut = 0;
	long n = bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);
	e->filename_truncated = rg_user_str_cut(n, sizeof(e->filename), filename);
	/* Nothing was executed: no file. */
	e->exe_dev = e->exe_ino = 0;
	e->exe_path_truncated = e->exe_unlinked = 0;
	e->exe_path_start = RG_PATH_LEN - 1;
	e->exe_path[RG_PATH_LEN - 1] = 0;
	e->secureexec = 0;

	__u32 off = 0;
	e->args_truncated = 0;
	/* One pass more than RG_MAX_ARGS: an argument there is one left out. */
	for (int i = 0; i <= RG_MAX_ARGS; i++) {
		const char *arg = NULL;
		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) < 0 || !arg)
			break;
		if (i == RG_MAX_ARGS || off > RG_ARGS_LEN - RG_ARG_CHUNK) {
			e->args_truncated = 1;
			break;
		}
		long len = bpf_probe_read_user_str(&e->args[off], RG_ARG_CHUNK, arg);
		if (len <= 0)
			break;
		if (rg_user_str_cut(len, RG_ARG_CHUNK, arg))
			e->args_truncated = 1;
		off += len;
	}
	e->args_len = off;
	rg_submit(e);
	return 0;
}

SEC("tp/syscalls/sys_exit_execve")
int rg_execve_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_exec_failed(ctx->ret, false);
}

SEC("tp/syscalls/sys_exit_execveat")
int rg_execveat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_exec_failed(ctx->ret, true);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(rg_fork, struct task_struct *parent, struct task_struct *child)
{
	/* New threads share the process: only a new thread group is a fork. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	/* The consumer's own forks are reported too: they identify its children. */
	if (rg_filtered_out_but_self())
		return 0;
	struct rg_fork_record *e = rg_reserve(struct rg_fork_record, RG_KIND_PROCESS_FORK);
	if (!e)
		return 0;
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->child_start_boottime = BPF_CORE_READ(child, start_boottime);
	rg_ns_pid(child, &e->child_ns_pid, &e->child_pid_ns);
	e->pad = 0;
	rg_submit(e);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(rg_exit, struct task_struct *task)
{
	/* Report the process once, when its last thread exits. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (rg_filtered_out())
		return 0;
	struct rg_exit_record *e = rg_reserve(struct rg_exit_record, RG_KIND_PROCESS_EXIT);
	if (!e)
		return 0;
	e->exit_code = BPF_CORE_READ(task, exit_code);
	rg_submit(e);
	return 0;
}
