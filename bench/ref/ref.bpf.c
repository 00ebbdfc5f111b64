/* Minimal C libbpf reference for runtimeguard's hot paths.
 *
 * The same tracepoints runtimeguard's sensors use for each measured event:
 * openat (syscalls/sys_exit_openat), connect (syscalls/sys_exit_connect) and
 * exec (tp_btf/sched_process_exec). One fixed 64-byte record per call is
 * submitted with BPF_RB_NO_WAKEUP, so the consumer is never woken per event and drains in
 * timed batches. The consumer loads the programs of one event only.
 * Filtered to one tgid, or to one cgroup (an exec storm's children have pids
 * of their own).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_pid = 0;
const volatile __u64 target_cgroup = 0;

struct ref_record {
	__u64 ts_ns;
	__u32 pid;
	__u32 tid;
	__s64 ret;
	__u64 cookie;
	char comm[16];
	__u8 pad[16];
};
_Static_assert(sizeof(struct ref_record) == 64, "the reference record is 64 bytes");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} ref_events SEC(".maps");

/* Records that could not be reserved (ring full). */
__u64 ref_lost = 0;

static __always_inline bool selected(void)
{
	if (target_cgroup)
		return bpf_get_current_cgroup_id() == target_cgroup;
	return (bpf_get_current_pid_tgid() >> 32) == target_pid;
}

static __always_inline int emit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!selected())
		return 0;
	struct ref_record *e = bpf_ringbuf_reserve(&ref_events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&ref_lost, 1);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->ret = ret;
	e->cookie = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("tp/syscalls/sys_exit_openat")
int ref_exit_openat(struct trace_event_raw_sys_exit *ctx) { return emit(ctx->ret); }

SEC("tp/syscalls/sys_exit_connect")
int ref_exit_connect(struct trace_event_raw_sys_exit *ctx) { return emit(ctx->ret); }

SEC("tp_btf/sched_process_exec")
int BPF_PROG(ref_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) { return emit(0); }
