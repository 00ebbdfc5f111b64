/* The guard's socket destroyer (tracepoint backend): before the guard
 * detaches, every TCP socket whose owner (rg_sock_owners) is tainted, living
 * or gone, is destroyed with the bpf_sock_destroy kfunc (tcp_abort: the data
 * still queued is discarded, not retransmitted once the egress filter is
 * gone). Run once by reading an iter/tcp link to its end; each destroyed
 * socket writes one line. A separate object: it needs the kfunc (Linux 6.5+)
 * and the guard must load where it does not; the loader hands it the guard's
 * maps. UDP needs nothing: a dropped datagram is gone, never resent. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "events.h"
#include "sockowner.h"

char LICENSE[] SEC("license") = "GPL";

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

SEC("iter/tcp")
int rg_destroy_tainted(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	/* Time-wait and request sockets hold no data; a listener has no owner.
	 * (Reading the state also gives the kfunc's argument its full type in
	 * this object's BTF, which libbpf matches against the kernel's.) */
	if (!skc || skc->skc_state == TCP_LISTEN || !(tp = bpf_skc_to_tcp_sock(skc)))
		return 0;
	struct rg_sock_owner *owner = bpf_sk_storage_get(&rg_sock_owners, tp, 0, 0);
	if (!owner || !rg_owner_tainted(owner))
		return 0;
	__u32 tgid = owner->tgid;
	if (bpf_sock_destroy(skc) == 0)
		BPF_SEQ_PRINTF(ctx->meta->seq, "%u\n", tgid);
	return 0;
}
