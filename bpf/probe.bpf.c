/* One tiny program per mechanism a sensor relies on (a program type, a
 * helper, the ring buffer), and none for what no sensor uses. The loader loads
 * (and where it matters attaches) each on its own to learn what this kernel
 * really allows: a kernel can list a program type and still refuse it
 * (lockdown, missing CONFIG, an LSM list without "bpf"). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} rg_probe_ring SEC(".maps");

SEC("tp/syscalls/sys_enter_getppid")
int rg_probe_tp(void *ctx) { return 0; }

SEC("tp_btf/sched_process_fork")
int rg_probe_tp_btf(void *ctx) { return 0; }

SEC("lsm/file_open")
int BPF_PROG(rg_probe_lsm, struct file *file) { return 0; }

/* The path hooks exist only with CONFIG_SECURITY_PATH. */
SEC("lsm/path_unlink")
int BPF_PROG(rg_probe_lsm_path, const struct path *dir, struct dentry *dentry) { return 0; }

SEC("cgroup/connect4")
int rg_probe_connect4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sendmsg4")
int rg_probe_sendmsg4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup_skb/egress")
int rg_probe_skb(struct __sk_buff *skb) { return 1; }

SEC("cgroup/sock_create")
int rg_probe_sock_create(struct bpf_sock *ctx) { return 1; }

SEC("uprobe")
int rg_probe_uprobe(void *ctx) { return 0; }

/* bpf_send_signal is the kill-after-the-fact enforcement path. */
SEC("tp/syscalls/sys_enter_getppid")
int rg_probe_send_signal(void *ctx)
{
	if (bpf_get_current_pid_tgid() == 0)
		bpf_send_signal(9);
	return 0;
}

SEC("tp/syscalls/sys_enter_getppid")
int rg_probe_ringbuf(void *ctx)
{
	int *v = bpf_ringbuf_reserve(&rg_probe_ring, sizeof(int), 0);
	if (v)
		bpf_ringbuf_discard(v, 0);
	return 0;
}
