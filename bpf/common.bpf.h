/* Maps, configuration and helpers every sensor shares.
 *
 * Each sensor is its own BPF object; the loader creates the shared maps once
 * (in the first object loaded) and hands the same fds to the others with
 * bpf_map__reuse_fd(), so all sensors feed one ring buffer and one set of
 * counters and filters.
 */
#ifndef RG_COMMON_BPF_H
#define RG_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load; constant for the verifier. */
const volatile __u32 rg_self_tgid = 0;
const volatile __u32 rg_filter_flags = 0;
const volatile __u64 rg_event_mask = 0;
/* Past this many unread bytes a record wakes the consumer; below it records
 * are submitted without a wake-up and the consumer's timed drain picks them up. */
const volatile __u64 rg_wakeup_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} rg_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_counters);
} rg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} rg_filt_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[RG_COMM_LEN]);
	__type(value, __u8);
} rg_filt_comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
} rg_filt_cgroups SEC(".maps");

#define RG_MAX_CGROUP_DEPTH 16

static __always_inline bool rg_kind_enabled(__u32 kind)
{
	return rg_event_mask & (1ULL << kind);
}

static __always_inline bool rg_cgroup_selected(void)
{
	for (int level = 0; level < RG_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return false;
		if (bpf_map_lookup_elem(&rg_filt_cgroups, &id))
			return true;
	}
	return false;
}

/* True when the current task is outside the filters' scope. */
static __always_inline bool rg_filtered_out_but_self(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if ((rg_filter_flags & RG_FILTER_PID) && !bpf_map_lookup_elem(&rg_filt_pids, &tgid))
		return true;
	if (rg_filter_flags & RG_FILTER_COMM) {
		char comm[RG_COMM_LEN] = {};
		bpf_get_current_comm(comm, sizeof(comm));
		if (!bpf_map_lookup_elem(&rg_filt_comms, comm))
			return true;
	}
	if ((rg_filter_flags & RG_FILTER_CGROUP) && !rg_cgroup_selected())
		return true;
	return false;
}

/* True when the current task is outside the tracer's scope: the consuming
 * process itself is never traced (its own reads would feed back). */
static __always_inline bool rg_filtered_out(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == rg_self_tgid || rg_filtered_out_but_self();
}

static __always_inline __u64 rg_task_start(struct task_struct *task)
{
	return BPF_CORE_READ(task, group_leader, start_boottime);
}

/* A task's pid as its own pid namespace numbers it, and that namespace's
 * inode number: the last of the pid's numbers (one per level). */
static __always_inline void rg_ns_pid(struct task_struct *task, __u32 *ns_pid, __u32 *pid_ns)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	__u32 level = BPF_CORE_READ(pid, level);

	/* MAX_PID_NS_LEVEL is 32: a bound the verifier can see. */
	level &= 31;
	*ns_pid = BPF_CORE_READ(pid, numbers[level].nr);
	*pid_ns = BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
}

/* The process a record is about, for programs that run with no task of their
 * own (a packet's egress): named from what was stored when it had one. */
struct rg_who {
	__u32 pid;
	__u64 cgroup_id;
};

/* Fills the header of a reserved record, or counts the loss. Every attempt
 * takes a sequence number, so a reader sees a gap for each lost record.
 * with_task: programs that may not read the task (cgroup socket hooks) leave
 * start_boottime 0, and the consumer resolves the process by pid.
 * who: NULL for the current task. */
static __always_inline void *rg_claim(void *rec, __u32 kind, bool with_task, const struct rg_who *who)
{
	__u32 zero = 0;
	struct rg_counters *counters = bpf_map_lookup_elem(&rg_counters, &zero);
	__u64 seq = 0;

	/* Atomic: a program preempted on this CPU by another must not share a number. */
	if (counters)
		seq = __sync_fetch_and_add(&counters->seq, 1);
	if (!rec) {
		if (counters && kind < RG_KIND_SLOTS)
			__sync_fetch_and_add(&counters->lost[kind], 1);
		return NULL;
	}
	struct rg_header *hdr = rec;

	hdr->timestamp_ns = bpf_ktime_get_boot_ns();
	hdr->seq = seq;
	hdr->kind = kind;
	hdr->cpu = bpf_get_smp_processor_id();
	if (who) {
		hdr->cgroup_id = who->cgroup_id;
		hdr->start_boottime = 0;
		hdr->pid = hdr->tid = who->pid;
		hdr->uid = hdr->euid = hdr->gid = RG_ID_UNKNOWN;
		hdr->pad = 0;
		__builtin_memset(hdr->comm, 0, sizeof(hdr->comm));
		return rec;
	}
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ugid = bpf_get_current_uid_gid();
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	hdr->pid = id >> 32;
	hdr->tid = (__u32)id;
	hdr->uid = (__u32)ugid;
	hdr->gid = ugid >> 32;
	hdr->pad = 0;
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
	if (with_task) {
		struct task_struct *task = bpf_get_current_task_btf();
		hdr->start_boottime = task->group_leader->start_boottime;
		hdr->euid = task->cred->euid.val;
	} else {
		hdr->start_boottime = 0;
		hdr->euid = RG_ID_UNKNOWN;
	}
	return rec;
}

#define rg_reserve(type, kind) \
	((type *)rg_claim(bpf_ringbuf_reserve(&rg_events, sizeof(type), 0), kind, true, NULL))

static __always_inline void rg_submit(void *rec)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&rg_events, BPF_RB_AVAIL_DATA) >= rg_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(rec, flags);
}

/* Sends a record built elsewhere (a per-CPU scratch) whose header rg_claim
 * filled, size bytes of it; a record the ring cannot take is counted lost. */
static __always_inline void rg_send(void *rec, __u32 kind, __u64 size)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&rg_events, BPF_RB_AVAIL_DATA) >= rg_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&rg_events, rec, size, flags) < 0) {
		__u32 zero = 0;
		struct rg_counters *counters = bpf_map_lookup_elem(&rg_counters, &zero);
		if (counters && kind < RG_KIND_SLOTS)
			__sync_fetch_and_add(&counters->lost[kind], 1);
	}
}

/* Whether a string read with bpf_probe_read_{user,kernel}_str() into size
 * bytes was cut. Those return size (the NUL counted) both for a string that
 * fits exactly (size - 1 bytes, then its NUL) and for a longer one (cut, a
 * NUL put at size - 1): the source's own byte at size - 1 tells which. Only
 * a read that filled the buffer pays for the one-byte read; a source byte
 * that cannot be read counts as cut (its end was never seen). */
static __always_inline bool rg_user_str_cut(long got, __u32 size, const char *src)
{
	char c = 0;

	if (got != size)
		return false;
	return bpf_probe_read_user(&c, 1, src + size - 1) < 0 || c != 0;
}

static __always_inline bool rg_kernel_str_cut(long got, __u32 size, const char *src)
{
	char c = 0;

	if (got != size)
		return false;
	return bpf_probe_read_kernel(&c, 1, src + size - 1) < 0 || c != 0;
}

/* The struct file behind a descriptor of the current task, or NULL. */
static __always_inline struct file *rg_fd_file(long fd)
{
	/* A BTF task pointer: its fields are plain (fault-checked) loads, not a
	 * helper call each. */
	struct fdtable *fdt = bpf_get_current_task_btf()->files->fdt;
	struct file *file = NULL;

	if (fd < 0 || fd >= fdt->max_fds)
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	return file;
}

/* The path of an open file, as the current task names it (from its root):
 * the dentry walk bpf_d_path would do, which this kernel refuses to tracing
 * programs.
 *
 * Written backward, so it ends at out[RG_PATH_LEN - 1] (its NUL); returns the
 * offset of its first byte. out must be followed by RG_PATH_LEN more bytes of
 * the same record: that is the bound the verifier sees for each name written.
 * A path longer than RG_PATH_LEN - 1 bytes, or deeper than RG_PATH_DEPTH
 * names and mounts (events.h), keeps its end (the file's own name) and sets
 * *cut.
 * *unlinked: the file has no name on any mounted filesystem (a memfd, a
 * deleted file); its path is the one it had, or the memfd's name. */
/* The walk's write offset lives in map memory, where the verifier does not
 * follow its value: held in a register it would be tracked exactly, and
 * each iteration's paths would be explored apart (the program would not
 * load). Its bound for each write comes from the mask. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} rg_path_offset SEC(".maps");

static __always_inline __u32 rg_path(struct dentry *dentry, struct vfsmount *vfsmnt, char *out, __u8 *cut,
				     __u8 *unlinked)
{
	__u32 zero = 0, *off = bpf_map_lookup_elem(&rg_path_offset, &zero);
	struct mount *mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	/* The walk ends at the current task's root, as d_path's does (a chroot's
	 * own, and not the rootfs mount / sits on), or at the top of its mount
	 * tree (a file outside that root). */
	struct fs_struct *fs = bpf_get_current_task_btf()->fs;
	struct dentry *root = fs->root.dentry;
	struct vfsmount *root_mnt = fs->root.mnt;
	bool whole = false, too_long = false;

	out[RG_PATH_LEN - 1] = 0;
	*cut = 1;
	*unlinked = 0;
	if (!off)
		return RG_PATH_LEN - 1;
	*off = RG_PATH_LEN - 1;
	/* A dentry out of the hash table that is not a mount's root has no name
	 * a lookup could find: deleted, or made without one (memfd_create). */
	*unlinked = !BPF_CORE_READ(dentry, d_hash.pprev) && dentry != mnt_root;
	for (int i = 0; i < RG_PATH_DEPTH; i++) {
		if (dentry == root && &mnt->mnt == root_mnt) {
			whole = true;
			break;
		}
		if (dentry == mnt_root) {
			struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
			if (parent == mnt) {
				whole = true;
				break;
			}
			/* Up through the mount point, into the mount beneath. */
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = parent;
			mnt_root = BPF_CORE_READ(mnt, mnt.mnt_root);
			continue;
		}
		struct dentry *up = BPF_CORE_READ(dentry, d_parent);
		struct qstr name = BPF_CORE_READ(dentry, d_name);
		__u32 at = *off;
		if (name.len + 1 > at) {
			too_long = true;
			break;
		}
		at -= name.len + 1;
		out[at & (RG_PATH_LEN - 1)] = '/';
		bpf_probe_read_kernel(&out[(at + 1) & (RG_PATH_LEN - 1)], name.len & (RG_PATH_LEN - 1), name.name);
		*off = at;
		/* A parentless dentry that is no mount's root: a pseudo file's
		 * (memfd, pipe); its name is all there is. */
		if (up == dentry) {
			whole = true;
			break;
		}
		dentry = up;
	}
	/* RG_PATH_DEPTH steps taken: whole if they ended at the root. */
	if (!whole && !too_long)
		whole = (dentry == root && &mnt->mnt == root_mnt) ||
			(dentry == mnt_root && BPF_CORE_READ(mnt, mnt_parent) == mnt);
	__u32 at = *off;
	if (at == RG_PATH_LEN - 1 && whole) {
		/* The root itself. */
		at--;
		out[at & (RG_PATH_LEN - 1)] = '/';
	}
	*cut = !whole;
	return at;
}

static __always_inline __u32 rg_file_path(struct file *file, char *out, __u8 *cut, __u8 *unlinked)
{
	return rg_path(BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt), out, cut, unlinked);
}

#define PROC_SUPER_MAGIC 0x9fa0

/* The pid named by a /proc/<pid>/ directory entry; 0 when not numeric. */
static __always_inline __u32 rg_parse_pid(const unsigned char *name)
{
	char digits[12] = {};
	__u32 pid = 0;

	bpf_probe_read_kernel_str(digits, sizeof(digits), name);
	for (int i = 0; i < 11; i++) {
		char c = digits[i];
		if (c == 0)
			return i ? pid : 0;
		if (c < '0' || c > '9')
			return 0;
		pid = pid * 10 + (c - '0');
	}
	return 0;
}

/* Target pid when the file is /proc/<pid>/mem or /proc/<pid>/environ (or the
 * same under task/<tid>/): both read the target's memory. *method is set to
 * RG_MEM_PROC_MEM_OPEN or RG_MEM_PROC_ENVIRON_OPEN. 0 for any other file. */
static __always_inline __u32 rg_proc_memory_target(struct file *file, __u32 *method)
{
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	char name[8] = {};

	if (BPF_CORE_READ(dentry, d_sb, s_magic) != PROC_SUPER_MAGIC)
		return 0;
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(dentry, d_name.name));
	if (name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 0)
		*method = RG_MEM_PROC_MEM_OPEN;
	else if (name[0] == 'e' && name[1] == 'n' && name[2] == 'v' && name[3] == 'i' && name[4] == 'r' &&
		 name[5] == 'o' && name[6] == 'n' && name[7] == 0)
		*method = RG_MEM_PROC_ENVIRON_OPEN;
	else
		return 0;
	return rg_parse_pid(BPF_CORE_READ(dentry, d_parent, d_name.name));
}

/* A syscall's arguments, read at sys_exit from the caller's saved user
 * registers: the syscall leaves them as they were. No program runs at
 * sys_enter and nothing is kept between the two (a per-thread slot costs a
 * map write per call, or an allocation per new thread). */
struct rg_syscall_args {
	__u64 arg0;
	__u64 arg1;
	__u64 arg2;
	__u32 syscall;
	__u32 pad;
	__u8 sockaddr[28]; /* sizeof(struct sockaddr_in6) */
};

static __always_inline struct pt_regs *rg_syscall_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* libbpf names the first five. */
#if defined(bpf_target_x86)
#define RG_SYSCALL_PARM6(regs) ((regs)->r9)
#elif defined(bpf_target_arm64)
#define RG_SYSCALL_PARM6(regs) ((regs)->regs[5])
#else
#error "RG_SYSCALL_PARM6: unknown target architecture"
#endif

#endif
