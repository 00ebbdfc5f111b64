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
	e->pad_bytes[0] = e->pad_bytes[1] = e->pad_bytes[2] = 0;
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
