/* Enforcement: egress by the cgroup socket hooks (EPERM before the connect or
 * send); protected and decoy files, ptrace and process-memory access, packet
 * sockets and changes to protected files by BPF LSM hooks where the kernel
 * runs them (EPERM before the operation), else at the syscall tracepoints
 * (SIGKILL: the caller never returns to user space); and taint. The loader
 * loads one of the two sets (rg_lsm_* or the tracepoint judges), never both.
 * Decisions never depend on the ring buffer: a full ring loses the report,
 * not the decision. */
#include "common.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define SIGKILL 9
#define EPERM 1
#define RG_MAX_DIR_DEPTH 64

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_guard_config);
} rg_guard_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RG_MAX_NET_RULES);
	__type(key, __u32);
	__type(value, struct rg_net_rule);
} rg_net_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rg_inode_key);
	__type(value, struct rg_protected_value);
} rg_protected SEC(".maps");

/* Protected pid -> the index of its ptrace.protect_pids rule. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} rg_protected_pids SEC(".maps");

#include "sockowner.h" /* rg_tainted, rg_tainted_gone, rg_sock_owners */

static __always_inline struct rg_guard_config *rg_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&rg_guard_cfg, &zero);
}

#include "dns.bpf.h" /* hostname rules: rg_resolved and the DNS programs */

/* Tracepoint programs see every task: only the guarded ones are judged.
 * Never the guard, nor the host's init (a kill would panic the kernel; it
 * is guarded only in the whole-host scope, where it mounts and makes
 * namespaces for the services it starts). */
static __always_inline bool rg_guarded(struct rg_guard_config *cfg)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (tgid == cfg->guard_tgid || tgid == 1)
		return false;
	if (!cfg->scope_cgroup_id)
		return true;
	return bpf_get_current_ancestor_cgroup_id(cfg->scope_cgroup_level) == cfg->scope_cgroup_id;
}

static __always_inline __u32 rg_enforced_action(struct rg_guard_config *cfg, bool act, __u32 done)
{
	if (cfg->mode != RG_MODE_ENFORCE)
		return RG_ACTION_WOULD_BLOCK;
	return act ? done : RG_ACTION_REPORTED;
}

/* Carries out a refusal the one way each hook can: an LSM hook returns EPERM
 * before the operation (RG_ACTION_BLOCKED, the caller returns -EPERM); a
 * tracepoint kills the caller (RG_ACTION_KILLED). */
static __always_inline __u32 rg_refuse(struct rg_guard_config *cfg, bool act, bool lsm)
{
	__u32 action = rg_enforced_action(cfg, act, lsm ? RG_ACTION_BLOCKED : RG_ACTION_KILLED);

	if (action == RG_ACTION_KILLED)
		bpf_send_signal(SIGKILL);
	return action;
}

static __always_inline int rg_lsm_verdict(__u32 action)
{
	return action == RG_ACTION_BLOCKED ? -EPERM : 0;
}

/* A block record, header filled without the task (see rg_claim); about
 * the current process, or who (with comm) where there is none. */
static __always_inline struct rg_block_record *rg_block_reserve_for(__u32 kind, __u32 action, __u32 rule,
								     const struct rg_who *who, const char *comm)
{
	struct rg_block_record *e = rg_claim(bpf_ringbuf_reserve(&rg_events, sizeof(*e), 0), kind, false, who);

	if (!e)
		return NULL;
	__builtin_memset((char *)e + sizeof(e->hdr), 0, sizeof(*e) - sizeof(e->hdr));
	e->action = action;
	e->rule_index = rule;
	if (comm)
		__builtin_memcpy(e->hdr.comm, comm, sizeof(e->hdr.comm));
	return e;
}

#define rg_block_reserve(kind, action, rule) rg_block_reserve_for(kind, action, rule, NULL, NULL)

/* ---- network: cgroup socket address hooks ---- */

struct rg_net_match {
	struct rg_guard_config *cfg;
	const __u8 *addr;
	__u16 family, port, protocol;
	__u32 deny_rule, allow_rule;
	__u64 patterns; /* host patterns the destination was answered for */
};

static __always_inline bool rg_prefix_matches(const struct rg_net_rule *r, const __u8 *addr)
{
	__u32 bits = r->prefix_len;

#pragma unroll
	for (int i = 0; i < RG_ADDR_LEN; i++) {
		if (bits == 0)
			return true;
		__u8 mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((addr[i] ^ r->addr[i]) & mask)
			return false;
		bits = bits >= 8 ? bits - 8 : 0;
	}
	return true;
}

static long rg_match_rule(__u64 index, void *ctx)
{
	struct rg_net_match *m = ctx;
	__u32 i = index;
	struct rg_net_rule *r;

	if (i >= m->cfg->net_rule_count)
		return 1;
	r = bpf_map_lookup_elem(&rg_net_rules, &i);
	if (!r)
		return 1;
	if (m->port < r->port_lo || m->port > r->port_hi)
		return 0;
	if (r->protocol && r->protocol != m->protocol)
		return 0;
	if (r->pattern) {
		if (!(m->patterns >> ((r->pattern - 1) & 63) & 1))
			return 0;
	} else if (r->family != m->family || !rg_prefix_matches(r, m->addr)) {
		return 0;
	}
	if (r->action == RG_NET_DENY) {
		m->deny_rule = r->rule_index;
		return 1; /* a deny decides */
	}
	if (m->allow_rule == RG_RULE_NET_DEFAULT)
		m->allow_rule = r->rule_index;
	return 0;
}

/* 1: allowed, 0: denied (EPERM to the caller). */
static __always_inline int rg_egress(struct bpf_sock_addr *ctx, bool v6, __u32 kind)
{
	struct rg_guard_config *cfg = rg_config();
	__u8 addr[RG_ADDR_LEN] = {};
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!cfg || tgid == cfg->guard_tgid)
		return 1;
	struct rg_net_match m = {
		.cfg = cfg, .addr = addr, .family = AF_INET, .port = bpf_ntohs(ctx->user_port),
		.protocol = ctx->protocol, .deny_rule = RG_RULE_NET_DEFAULT, .allow_rule = RG_RULE_NET_DEFAULT,
	};
	if (v6) {
		__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
		/* ::ffff:a.b.c.d is matched as the IPv4 address it carries. */
		if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
			__builtin_memcpy(addr, &w3, 4);
		} else {
			m.family = AF_INET6;
			__builtin_memcpy(addr, &w0, 4);
			__builtin_memcpy(addr + 4, &w1, 4);
			__builtin_memcpy(addr + 8, &w2, 4);
			__builtin_memcpy(addr + 12, &w3, 4);
		}
	} else {
		__u32 w = ctx->user_ip4;
		__builtin_memcpy(addr, &w, 4);
	}

	__u32 rule;
	bool denied;
	__u64 name_hash = 0;
	if (cfg->dns_observe)
		m.patterns = rg_resolved_patterns(addr, m.family, &name_hash);
	if (cfg->taint_blocks_egress && bpf_map_lookup_elem(&rg_tainted, &tgid)) {
		kind = RG_KIND_EXFIL_BLOCKED;
		rule = RG_RULE_TAINT;
		denied = true;
	} else if (cfg->dns_refuse_untrusted && m.port == 53 && !rg_dns_trusted(addr, m.family)) {
		rule = RG_RULE_DNS_UNTRUSTED;
		denied = true;
	} else {
		bpf_loop(RG_MAX_NET_RULES, rg_match_rule, &m, 0);
		if (m.deny_rule != RG_RULE_NET_DEFAULT) {
			rule = m.deny_rule;
			denied = true;
		} else if (m.allow_rule != RG_RULE_NET_DEFAULT) {
			rule = m.allow_rule;
			denied = false;
		} else {
			rule = RG_RULE_NET_DEFAULT;
			denied = cfg->net_default_deny;
		}
	}
	if (!denied) {
		/* For rg_guard_tainted_egress: the process that addressed the socket last. */
		struct rg_sock_owner *owner = cfg->taint_blocks_egress || cfg->dns_observe ?
			bpf_sk_storage_get(&rg_sock_owners, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : NULL;
		if (owner && owner->tgid != tgid) {
			owner->tgid = tgid;
			owner->reported = 0;
			owner->tainted = 0;
			owner->cgroup_id = bpf_get_current_cgroup_id();
			bpf_get_current_comm(owner->comm, sizeof(owner->comm));
		}
		return 1;
	}

	__u32 action = rg_enforced_action(cfg, true, RG_ACTION_BLOCKED);
	struct rg_block_record *e = rg_block_reserve(kind, action, rule);
	if (e) {
		e->family = m.family;
		e->port = m.port;
		e->protocol = m.protocol;
		e->name_hash = name_hash;
		__builtin_memcpy(e->addr, addr, sizeof(addr));
		rg_submit(e);
	}
	return action == RG_ACTION_BLOCKED ? 0 : 1;
}

SEC("cgroup/connect4")
int rg_guard_connect4(struct bpf_sock_addr *ctx) { return rg_egress(ctx, false, RG_KIND_CONNECT_DENIED); }

SEC("cgroup/connect6")
int rg_guard_connect6(struct bpf_sock_addr *ctx) { return rg_egress(ctx, true, RG_KIND_CONNECT_DENIED); }

SEC("cgroup/sendmsg4")
int rg_guard_sendmsg4(struct bpf_sock_addr *ctx) { return rg_egress(ctx, false, RG_KIND_EXFIL_BLOCKED); }

SEC("cgroup/sendmsg6")
int rg_guard_sendmsg6(struct bpf_sock_addr *ctx) { return rg_egress(ctx, true, RG_KIND_EXFIL_BLOCKED); }

/* A tainted process's sends on an inet socket it connected before it was
 * tainted: the address hooks above judge connects and addressed sends only.
 * LSM only; addressed sends are left to the sendmsg hooks (one decision each). */
SEC("lsm/socket_sendmsg")
int BPF_PROG(rg_lsm_socket_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	struct rg_guard_config *cfg = rg_config();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (ret || !cfg || !cfg->taint_blocks_egress || !bpf_map_lookup_elem(&rg_tainted, &tgid))
		return ret;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if ((family != AF_INET && family != AF_INET6) || BPF_CORE_READ(msg, msg_name))
		return 0;
	__u32 action = rg_refuse(cfg, true, true);
	struct rg_block_record *e = rg_block_reserve(RG_KIND_EXFIL_BLOCKED, action, RG_RULE_TAINT);
	if (e) {
		e->family = family;
		e->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
		if (family == AF_INET)
			BPF_CORE_READ_INTO(&e->addr, sk, __sk_common.skc_daddr);
		else
			BPF_CORE_READ_INTO(&e->addr, sk, __sk_common.skc_v6_daddr);
		rg_submit(e);
	}
	return rg_lsm_verdict(action);
}

/* Packets of a socket whose connecting process has since been tainted: the
 * address hooks judged the connect before the taint, and see no later send.
 * Dropped at egress: the send succeeds, nothing leaves. The tracepoint
 * backend's answer; the LSM backend refuses the send itself (above). The data
 * stays queued in the socket: before the guard detaches, the socket
 * destroyer (sockdestroy.bpf.c) discards it, so TCP never retransmits it once
 * this filter is gone. */
/* A TCP segment that carries no data: an acknowledgement, a FIN, or the
 * reset that destroying a tainted socket sends before the guard detaches
 * (see sockdestroy.bpf.c). Nothing of the process's leaves in it: let
 * through, and no decision (a tainted process may still acknowledge what it
 * receives and close its connections). */
static __always_inline bool rg_no_payload(struct __sk_buff *skb, struct bpf_sock *sk)
{
	__u8 ip[10], tcp[13]; /* IPv4: protocol at 9; IPv6: next header at 6; TCP: data offset at 12 */
	__u32 off;

	if (sk->protocol != IPPROTO_TCP || bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
		return false;
	/* By the packet's IP version: an AF_INET6 socket may send IPv4 (::ffff:a.b.c.d). */
	if ((ip[0] >> 4) == 4 && ip[9] == IPPROTO_TCP)
		off = (ip[0] & 0xf) * 4;
	else if ((ip[0] >> 4) == 6 && ip[6] == IPPROTO_TCP)
		off = 40; /* Linux TCP adds no extension headers */
	else
		return false;
	if (bpf_skb_load_bytes(skb, off, tcp, sizeof(tcp)))
		return false;
	return skb->len == off + (tcp[12] >> 4) * 4;
}

SEC("cgroup_skb/egress")
int rg_guard_tainted_egress(struct __sk_buff *skb)
{
	struct rg_guard_config *cfg = rg_config();
	struct bpf_sock *sk = skb->sk;

	if (!cfg || !cfg->taint_blocks_egress || !sk || !(sk = bpf_sk_fullsock(sk)))
		return 1;
	struct rg_sock_owner *owner = bpf_sk_storage_get(&rg_sock_owners, sk, 0, 0);
	if (!owner || !rg_owner_tainted(owner))
		return 1;
	/* Its retransmissions are dropped too once the process has exited (its
	 * socket closed, orphaned, with the data still queued). */
	owner->tainted = 1;
	if (rg_no_payload(skb, sk))
		return 1;
	__u32 action = rg_enforced_action(cfg, true, RG_ACTION_BLOCKED);
	if (!owner->reported) {
		struct rg_who who = { .pid = owner->tgid, .cgroup_id = owner->cgroup_id };
		struct rg_block_record *e = rg_block_reserve_for(RG_KIND_EXFIL_BLOCKED, action, RG_RULE_TAINT, &who,
								 owner->comm);
		if (e) {
			owner->reported = 1;
			e->family = sk->family;
			e->port = bpf_ntohs(sk->dst_port);
			e->protocol = sk->protocol;
			if (sk->family == AF_INET) {
				__u32 w = sk->dst_ip4;
				__builtin_memcpy(e->addr, &w, 4);
			} else {
				__u32 w0 = sk->dst_ip6[0], w1 = sk->dst_ip6[1], w2 = sk->dst_ip6[2], w3 = sk->dst_ip6[3];
				__builtin_memcpy(e->addr, &w0, 4);
				__builtin_memcpy(e->addr + 4, &w1, 4);
				__builtin_memcpy(e->addr + 8, &w2, 4);
				__builtin_memcpy(e->addr + 12, &w3, 4);
			}
			rg_submit(e);
		}
	}
	return action == RG_ACTION_BLOCKED ? 0 : 1;
}

#define AF_PACKET 17
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define IPPROTO_ICMP 1
#define IPPROTO_ICMPV6 58
#define SOCK_PACKET 10

/* Raw and packet sockets write their own headers: the address hooks never see
 * where they send. Refused at creation, before any packet exists. */
SEC("cgroup/sock_create")
int rg_guard_sock_create(struct bpf_sock *ctx)
{
	struct rg_guard_config *cfg = rg_config();
	__u32 family = ctx->family, type = ctx->type;

	if (!cfg || !cfg->raw_socket_deny || (bpf_get_current_pid_tgid() >> 32) == cfg->guard_tgid)
		return 1;
	/* ICMP "ping" datagram sockets skip the sendmsg hook too. */
	bool ping = type == SOCK_DGRAM && (ctx->protocol == IPPROTO_ICMP || ctx->protocol == IPPROTO_ICMPV6);
	if (family != AF_PACKET && type != SOCK_RAW && type != SOCK_PACKET && !ping)
		return 1;
	__u32 action = rg_enforced_action(cfg, true, RG_ACTION_BLOCKED);
	struct rg_block_record *e = rg_block_reserve(RG_KIND_EXFIL_BLOCKED, action, RG_RULE_RAW_SOCKET);
	if (e) {
		e->family = family;
		e->protocol = ctx->protocol;
		e->flags = type;
		rg_submit(e);
	}
	return action == RG_ACTION_BLOCKED ? 0 : 1;
}

/* Packet sockets are not inet sockets: the cgroup hook above never runs for
 * them. Judged by the socket_create LSM hook, or at socket() entry, where
 * enforcement is a kill. */
static __always_inline __u32 rg_judge_packet_socket(__u32 type, __u16 protocol, bool lsm)
{
	struct rg_guard_config *cfg = rg_config();

	if (!cfg || !cfg->raw_socket_deny || !rg_guarded(cfg))
		return 0;
	__u32 action = rg_refuse(cfg, true, lsm);
	struct rg_block_record *e = rg_block_reserve(RG_KIND_EXFIL_BLOCKED, action, RG_RULE_RAW_SOCKET);
	if (e) {
		e->family = AF_PACKET;
		e->protocol = protocol;
		e->flags = type;
		rg_submit(e);
	}
	return action;
}

SEC("tp/syscalls/sys_enter_socket")
int rg_guard_socket(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[0] == AF_PACKET)
		rg_judge_packet_socket(ctx->args[1] & 0xf /* without SOCK_NONBLOCK / SOCK_CLOEXEC */,
				       bpf_ntohs((__u16)ctx->args[2]), false);
	return 0;
}

SEC("lsm/socket_create")
int BPF_PROG(rg_lsm_socket_create, int family, int type, int protocol, int kern, int ret)
{
	if (ret || kern || family != AF_PACKET)
		return ret; /* inet raw and ping sockets: the cgroup hook above */
	return rg_lsm_verdict(rg_judge_packet_socket(type & 0xf, bpf_ntohs((__u16)protocol), true));
}

/* ---- ptrace and process memory ---- */

/* target: the thread group id of the process accessed (as the caller named
 * it, for the tracepoints; the kernel's own, for the LSM hook). Only guarded
 * processes are judged: protect_pids keeps them away from a pid, it does not
 * stop the rest of the host from debugging it. A process's access to itself
 * is never judged. Returns the action taken, 0 for none. */
static __always_inline __u32 rg_judge_ptrace(struct rg_guard_config *cfg, __u32 target, __u32 method, bool lsm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bool guarded = rg_guarded(cfg);
	__u32 *protected_rule = target ? bpf_map_lookup_elem(&rg_protected_pids, &target) : NULL;

	if (!guarded || (!cfg->ptrace_deny && !protected_rule))
		return 0;
	if (tgid == cfg->guard_tgid || target == tgid)
		return 0;
	__u32 action = rg_refuse(cfg, true, lsm);
	struct rg_block_record *e = rg_block_reserve(RG_KIND_PTRACE_DENIED, action,
						     protected_rule ? *protected_rule : RG_RULE_PTRACE_DENY);
	if (e) {
		e->target_pid = target;
		e->flags = method;
		rg_submit(e);
	}
	return action;
}

#define PTRACE_TRACEME 0

SEC("tp/syscalls/sys_enter_ptrace")
int rg_guard_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	struct rg_guard_config *cfg = rg_config();
	/* PTRACE_TRACEME names no pid: it makes the caller's parent its tracer. */
	__u32 target = ctx->args[0] == PTRACE_TRACEME ?
		BPF_CORE_READ(bpf_get_current_task_btf(), real_parent, tgid) : ctx->args[1];

	if (cfg)
		rg_judge_ptrace(cfg, target, 0, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_process_vm_readv")
int rg_guard_vm_readv(struct trace_event_raw_sys_enter *ctx)
{
	struct rg_guard_config *cfg = rg_config();
	if (cfg)
		rg_judge_ptrace(cfg, ctx->args[0], RG_MEM_VM_READV, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_process_vm_writev")
int rg_guard_vm_writev(struct trace_event_raw_sys_enter *ctx)
{
	struct rg_guard_config *cfg = rg_config();
	if (cfg)
		rg_judge_ptrace(cfg, ctx->args[0], RG_MEM_VM_WRITEV, false);
	return 0;
}

#define PIDFS_MAGIC 0x50494446

/* The struct pid behind a pidfd, or NULL for any other descriptor (then
 * pidfd_getfd fails with EBADF and reaches no process). A pidfs inode (6.9+)
 * holds it in i_private; before that, a pidfd is the anonymous inode file
 * named "[pidfd]" holding it in private_data. */
static __always_inline struct pid *rg_pidfd_pid(struct file *file)
{
	char name[8] = {};

	if (!file)
		return NULL;
	if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) == PIDFS_MAGIC)
		return BPF_CORE_READ(file, f_inode, i_private);
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
	if (__builtin_memcmp(name, "[pidfd]", sizeof(name)))
		return NULL;
	return BPF_CORE_READ(file, private_data);
}

/* pidfd_getfd copies a descriptor out of another process: the pidfd's
 * struct pid names the target (in the kernel's numbering). */
SEC("tp/syscalls/sys_enter_pidfd_getfd")
int rg_guard_pidfd_getfd(struct trace_event_raw_sys_enter *ctx)
{
	struct rg_guard_config *cfg = rg_config();
	struct pid *pid = rg_pidfd_pid(rg_fd_file(ctx->args[0]));

	if (cfg && pid)
		rg_judge_ptrace(cfg, BPF_CORE_READ(pid, numbers[0].nr), RG_MEM_PIDFD_GETFD, false);
	return 0;
}

#define PTRACE_MODE_ATTACH 0x02

#if defined(__TARGET_ARCH_x86)
#define RG_NR_PROCESS_VM_READV 310
#define RG_NR_PROCESS_VM_WRITEV 311
#define RG_NR_PIDFD_GETFD 438
#endif

/* Which call asked: the LSM hook serves ptrace, process_vm_readv/writev and
 * pidfd_getfd alike (/proc/<pid>/mem is refused earlier, at file_open). */
static __always_inline __u32 rg_access_method(void)
{
#if defined(__TARGET_ARCH_x86)
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	long nr = BPF_CORE_READ(regs, orig_ax);

	if (nr == RG_NR_PROCESS_VM_READV)
		return RG_MEM_VM_READV;
	if (nr == RG_NR_PROCESS_VM_WRITEV)
		return RG_MEM_VM_WRITEV;
	if (nr == RG_NR_PIDFD_GETFD)
		return RG_MEM_PIDFD_GETFD;
#endif
	return 0;
}

/* Attach-mode checks only: read-mode checks serve /proc listings (ps reads
 * /proc/<pid>/stat through them) and are not memory access. The kernel skips
 * the hook for a process's access to itself. */
SEC("lsm/ptrace_access_check")
int BPF_PROG(rg_lsm_ptrace_access, struct task_struct *child, unsigned int mode, int ret)
{
	struct rg_guard_config *cfg = rg_config();

	if (ret || !cfg || !(mode & PTRACE_MODE_ATTACH))
		return ret;
	return rg_lsm_verdict(rg_judge_ptrace(cfg, BPF_CORE_READ(child, tgid), rg_access_method(), true));
}

/* PTRACE_TRACEME makes the parent the tracer. */
SEC("lsm/ptrace_traceme")
int BPF_PROG(rg_lsm_ptrace_traceme, struct task_struct *parent, int ret)
{
	struct rg_guard_config *cfg = rg_config();

	if (ret || !cfg)
		return ret;
	return rg_lsm_verdict(rg_judge_ptrace(cfg, BPF_CORE_READ(parent, tgid), 0, true));
}

#define CLONE_FILES 0x00000400
#define CLONE_THREAD 0x00010000
#define PF_KTHREAD 0x00200000

/* A new process sharing the caller's descriptor table (CLONE_FILES without
 * CLONE_THREAD) would keep every descriptor the caller opens, and use it
 * after the tracepoint backend killed the caller for the open: refused at
 * creation, under ptrace.deny (sharing a process's descriptor table is
 * reaching into it). Threads (CLONE_THREAD) and plain forks are never judged.
 * The flags are tested first: these programs run for every clone on the host.
 * A kill at clone entry leaves no child: copy_process gives up once a fatal
 * signal is pending (the would-be child never runs: tests/test_guard.py).
 * target: the caller itself (there is no child). */
static __always_inline __u32 rg_judge_clone_files(__u64 flags, bool lsm)
{
	if ((flags & (CLONE_FILES | CLONE_THREAD)) != CLONE_FILES)
		return 0;
	struct rg_guard_config *cfg = rg_config();
	if (!cfg || !cfg->ptrace_deny || !rg_guarded(cfg))
		return 0;
	__u32 action = rg_refuse(cfg, true, lsm);
	struct rg_block_record *e = rg_block_reserve(RG_KIND_PTRACE_DENIED, action, RG_RULE_PTRACE_DENY);
	if (e) {
		e->target_pid = bpf_get_current_pid_tgid() >> 32;
		e->flags = RG_MEM_CLONE_FILES;
		rg_submit(e);
	}
	return action;
}

/* ---- namespaces and mounts ---- */

#define CLONE_NEWTIME 0x00000080
#define CLONE_NEWNS 0x00020000
#define CLONE_NEWCGROUP 0x02000000
#define CLONE_NEWUTS 0x04000000
#define CLONE_NEWIPC 0x08000000
#define CLONE_NEWUSER 0x10000000
#define CLONE_NEWPID 0x20000000
#define CLONE_NEWNET 0x40000000
#define RG_CLONE_NEW_ANY                                                                                        \
	(CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
	 CLONE_NEWNET)
#define OPEN_TREE_CLONE 1

/* A guarded process making or joining namespaces (kinds: the CLONE_NEW*
 * bits asked for) or mounting (kinds 0): an agent has no business doing
 * either. Refused unless the policy allows the kinds, or mounts. A kill at
 * clone entry leaves no child (see rg_judge_clone_files); unshare and setns
 * complete, in a process that never returns to user space to use them. */
static __always_inline __u32 rg_judge_namespace(__u32 operation, __u64 kinds, bool lsm)
{
	struct rg_guard_config *cfg = rg_config();

	if (!cfg || !rg_guarded(cfg))
		return 0;
	if (kinds ? !(kinds & cfg->ns_deny_flags) : !cfg->mount_deny)
		return 0;
	__u32 action = rg_refuse(cfg, true, lsm);
	struct rg_block_record *e = rg_block_reserve(RG_KIND_NAMESPACE_DENIED, action, RG_RULE_NAMESPACES);
	if (e) {
		e->operation = operation;
		e->flags = kinds & RG_CLONE_NEW_ANY;
		e->target_pid = bpf_get_current_pid_tgid() >> 32;
		rg_submit(e);
	}
	return action;
}

SEC("tp/syscalls/sys_enter_unshare")
int rg_guard_unshare(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[0] & RG_CLONE_NEW_ANY)
		rg_judge_namespace(RG_NS_UNSHARE, ctx->args[0] & RG_CLONE_NEW_ANY, false);
	return 0;
}

/* nstype 0 joins whatever the descriptor names: judged as every kind. */
SEC("tp/syscalls/sys_enter_setns")
int rg_guard_setns(struct trace_event_raw_sys_enter *ctx)
{
	__u64 kinds = ctx->args[1] & RG_CLONE_NEW_ANY;

	rg_judge_namespace(RG_NS_SETNS, kinds ? kinds : RG_CLONE_NEW_ANY, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_mount")
int rg_guard_mount(struct trace_event_raw_sys_enter *ctx)
{
	rg_judge_namespace(RG_NS_MOUNT, 0, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_move_mount")
int rg_guard_move_mount(struct trace_event_raw_sys_enter *ctx)
{
	rg_judge_namespace(RG_NS_MOVE_MOUNT, 0, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_fsmount")
int rg_guard_fsmount(struct trace_event_raw_sys_enter *ctx)
{
	rg_judge_namespace(RG_NS_FSMOUNT, 0, false);
	return 0;
}

/* Only a clone makes a mount (detached, usable through its descriptor). */
SEC("tp/syscalls/sys_enter_open_tree")
int rg_guard_open_tree(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[2] & OPEN_TREE_CLONE)
		rg_judge_namespace(RG_NS_OPEN_TREE, 0, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_mount_setattr")
int rg_guard_mount_setattr(struct trace_event_raw_sys_enter *ctx)
{
	rg_judge_namespace(RG_NS_MOUNT_SETATTR, 0, false);
	return 0;
}

SEC("tp/syscalls/sys_enter_pivot_root")
int rg_guard_pivot_root(struct trace_event_raw_sys_enter *ctx)
{
	rg_judge_namespace(RG_NS_PIVOT_ROOT, 0, false);
	return 0;
}

SEC("lsm/sb_mount")
int BPF_PROG(rg_lsm_sb_mount, const char *dev_name, const struct path *path, const char *type, unsigned long flags,
	     void *data, int ret)
{
	return ret ? ret : rg_lsm_verdict(rg_judge_namespace(RG_NS_MOUNT, 0, true));
}

SEC("lsm/move_mount")
int BPF_PROG(rg_lsm_move_mount, const struct path *from_path, const struct path *to_path, int ret)
{
	return ret ? ret : rg_lsm_verdict(rg_judge_namespace(RG_NS_MOVE_MOUNT, 0, true));
}

SEC("lsm/sb_pivotroot")
int BPF_PROG(rg_lsm_pivotroot, const struct path *old_path, const struct path *new_path, int ret)
{
	return ret ? ret : rg_lsm_verdict(rg_judge_namespace(RG_NS_PIVOT_ROOT, 0, true));
}

SEC("tp/syscalls/sys_enter_clone")
int rg_guard_clone(struct trace_event_raw_sys_enter *ctx)
{
	__u64 flags = ctx->args[0];

	rg_judge_clone_files(flags, false);
	if (flags & RG_CLONE_NEW_ANY)
		rg_judge_namespace(RG_NS_CLONE, flags & RG_CLONE_NEW_ANY, false);
	return 0;
}

/* clone3: the flags are the first u64 of struct clone_args, in user memory.
 * This program cannot fault a page in, the kernel can: arguments it cannot
 * read (a mapping not touched yet) are judged as sharing, else they would
 * pass unjudged. */
SEC("tp/syscalls/sys_enter_clone3")
int rg_guard_clone3(struct trace_event_raw_sys_enter *ctx)
{
	__u64 flags = 0;

	if (bpf_probe_read_user(&flags, sizeof(flags), (void *)ctx->args[0]))
		flags = CLONE_FILES | RG_CLONE_NEW_ANY;
	rg_judge_clone_files(flags, false);
	if (flags & RG_CLONE_NEW_ANY)
		rg_judge_namespace(RG_NS_CLONE3, flags & RG_CLONE_NEW_ANY, false);
	return 0;
}

/* current is the parent; kernel threads (kthreadd starts each with
 * CLONE_FILES) are never judged. */
SEC("lsm/task_alloc")
int BPF_PROG(rg_lsm_task_alloc, struct task_struct *task, unsigned long clone_flags, int ret)
{
	int sharing = (clone_flags & (CLONE_FILES | CLONE_THREAD)) == CLONE_FILES;

	if (ret || !(sharing || (clone_flags & RG_CLONE_NEW_ANY)))
		return ret;
	if (BPF_CORE_READ(bpf_get_current_task_btf(), flags) & PF_KTHREAD)
		return 0;
	if (sharing && (ret = rg_lsm_verdict(rg_judge_clone_files(clone_flags, true))))
		return ret;
	if (clone_flags & RG_CLONE_NEW_ANY)
		return rg_lsm_verdict(rg_judge_namespace(RG_NS_CLONE, clone_flags & RG_CLONE_NEW_ANY, true));
	return 0;
}

/* ---- files: protected inodes, decoys, /proc/<pid>/mem and environ ---- */

/* The protection covering a dentry: its own inode, or a protected directory
 * above it. Inode-based, so hard links, symlinks and renames do not escape. */
static __always_inline struct rg_protected_value *rg_protection(struct dentry *dentry)
{
	struct rg_inode_key key = {};
	struct rg_protected_value *v;
	struct inode *inode = BPF_CORE_READ(dentry, d_inode);

	key.dev = BPF_CORE_READ(dentry, d_sb, s_dev);
	if (inode) {
		key.ino = BPF_CORE_READ(inode, i_ino);
		v = bpf_map_lookup_elem(&rg_protected, &key);
		if (v)
			return v;
	}
	for (int i = 0; i < RG_MAX_DIR_DEPTH; i++) {
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		if (!parent || parent == dentry)
			return NULL;
		dentry = parent;
		key.ino = BPF_CORE_READ(dentry, d_inode, i_ino);
		v = bpf_map_lookup_elem(&rg_protected, &key);
		if (v && v->is_dir)
			return v;
	}
	return NULL;
}

/* Reports a decision on a file; dentry names it (its inode may be absent:
 * an entry about to be created). */
static __always_inline void rg_report_file(__u32 kind, __u32 action, __u32 rule, struct dentry *dentry, __u32 flags)
{
	struct rg_block_record *e = rg_block_reserve(kind, action, rule);

	if (!e)
		return;
	e->dev = BPF_CORE_READ(dentry, d_sb, s_dev);
	e->ino = BPF_CORE_READ(dentry, d_inode, i_ino);
	e->flags = flags;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), BPF_CORE_READ(dentry, d_name.name));
	rg_submit(e);
}

/* An open of a protected file, a decoy, or another process's memory or
 * environment. Returns the action taken, 0 for none. */
static __always_inline __u32 rg_judge_open(struct file *file, bool lsm)
{
	struct rg_guard_config *cfg = rg_config();

	if (!file || !cfg || !rg_guarded(cfg))
		return 0;
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	__u32 method = 0, target = rg_proc_memory_target(file, &method);

	if (target)
		return rg_judge_ptrace(cfg, target, method, lsm);
	/* Judged before the open, by the fanotify permission events' answer. */
	if (cfg->files_by_fanotify)
		return 0;

	struct rg_protected_value *v = rg_protection(dentry);
	if (!v)
		return 0;
	__u32 kind = v->kind == RG_PROTECT_MIRAGE ? RG_KIND_MIRAGE_TRAP : RG_KIND_OPEN_INODE;
	bool act = v->kind == RG_PROTECT_MIRAGE ? cfg->mirage_kill : cfg->file_kill;
	__u32 action = rg_refuse(cfg, act, lsm);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	/* A refused open read nothing: only an open that goes through taints. */
	if ((cfg->taint_from & (1U << v->kind)) && action != RG_ACTION_BLOCKED) {
		__u8 one = 1;
		bpf_map_update_elem(&rg_tainted, &tgid, &one, BPF_ANY);
	}
	rg_report_file(kind, action, v->rule_index, dentry, 0);
	return action;
}

static __always_inline int rg_guard_open_exit(long ret)
{
	if (ret >= 0)
		rg_judge_open(rg_fd_file(ret), false);
	return 0;
}

/* Every open reaches this hook before the file is usable: the open syscalls,
 * open_by_handle_at, io_uring (fixed-file table included) and execve. */
SEC("lsm/file_open")
int BPF_PROG(rg_lsm_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	return rg_lsm_verdict(rg_judge_open(file, true));
}

/* A change by path to a protected file, or to the entries of a protected
 * directory: refused before it happens (LSM only; without it the guard
 * detects changes through fanotify). */
static __always_inline int rg_judge_change(struct dentry *dentry, __u32 operation)
{
	struct rg_guard_config *cfg = rg_config();

	if (!cfg || !rg_guarded(cfg))
		return 0;
	struct rg_protected_value *v = rg_protection(dentry);
	if (!v)
		return 0;
	__u32 action = rg_refuse(cfg, cfg->file_kill, true);
	rg_report_file(RG_KIND_PROTECTED_FILE_CHANGED, action, v->rule_index, dentry, operation);
	return rg_lsm_verdict(action);
}

SEC("lsm/path_unlink")
int BPF_PROG(rg_lsm_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	return ret ? ret : rg_judge_change(dentry, RG_CHANGE_DELETE);
}

SEC("lsm/path_rmdir")
int BPF_PROG(rg_lsm_rmdir, const struct path *dir, struct dentry *dentry, int ret)
{
	return ret ? ret : rg_judge_change(dentry, RG_CHANGE_DELETE);
}

/* Either end may be protected: moving a protected file away, or over it. */
SEC("lsm/path_rename")
int BPF_PROG(rg_lsm_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, unsigned int flags, int ret)
{
	if (ret)
		return ret;
	ret = rg_judge_change(old_dentry, RG_CHANGE_MOVE);
	return ret ? ret : rg_judge_change(new_dentry, RG_CHANGE_MOVE);
}

SEC("lsm/path_truncate")
int BPF_PROG(rg_lsm_truncate, const struct path *path, int ret)
{
	return ret ? ret : rg_judge_change(BPF_CORE_READ(path, dentry), RG_CHANGE_MODIFY);
}

SEC("lsm/path_chmod")
int BPF_PROG(rg_lsm_chmod, const struct path *path, umode_t mode, int ret)
{
	return ret ? ret : rg_judge_change(BPF_CORE_READ(path, dentry), RG_CHANGE_ATTRIBUTES);
}

SEC("lsm/path_chown")
int BPF_PROG(rg_lsm_chown, const struct path *path, __u32 uid, __u32 gid, int ret) /* kuid_t, kgid_t */
{
	return ret ? ret : rg_judge_change(BPF_CORE_READ(path, dentry), RG_CHANGE_ATTRIBUTES);
}

/* New entries in a protected directory (the new dentry has no inode yet: its
 * parent decides). A hard link to a protected file is a create too. */
SEC("lsm/path_mknod")
int BPF_PROG(rg_lsm_mknod, const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev, int ret)
{
	return ret ? ret : rg_judge_change(dentry, RG_CHANGE_CREATE);
}

SEC("lsm/path_mkdir")
int BPF_PROG(rg_lsm_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode, int ret)
{
	return ret ? ret : rg_judge_change(dentry, RG_CHANGE_CREATE);
}

SEC("lsm/path_symlink")
int BPF_PROG(rg_lsm_symlink, const struct path *dir, struct dentry *dentry, const char *old_name, int ret)
{
	return ret ? ret : rg_judge_change(dentry, RG_CHANGE_CREATE);
}

SEC("lsm/path_link")
int BPF_PROG(rg_lsm_link, struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry, int ret)
{
	if (ret)
		return ret;
	ret = rg_judge_change(old_dentry, RG_CHANGE_CREATE);
	return ret ? ret : rg_judge_change(new_dentry, RG_CHANGE_CREATE);
}

SEC("tp/syscalls/sys_exit_open")
int rg_guard_open(struct trace_event_raw_sys_exit *ctx) { return rg_guard_open_exit(ctx->ret); }

SEC("tp/syscalls/sys_exit_creat")
int rg_guard_creat(struct trace_event_raw_sys_exit *ctx) { return rg_guard_open_exit(ctx->ret); }

SEC("tp/syscalls/sys_exit_openat")
int rg_guard_openat(struct trace_event_raw_sys_exit *ctx) { return rg_guard_open_exit(ctx->ret); }

SEC("tp/syscalls/sys_exit_openat2")
int rg_guard_openat2(struct trace_event_raw_sys_exit *ctx) { return rg_guard_open_exit(ctx->ret); }

/* A file handle names an inode without a path: judged by the inode like any open. */
SEC("tp/syscalls/sys_exit_open_by_handle_at")
int rg_guard_by_handle(struct trace_event_raw_sys_exit *ctx) { return rg_guard_open_exit(ctx->ret); }

#define IORING_OP_OPENAT 18
#define IORING_OP_OPENAT2 28
#define IORING_OP_SOCKET 45

/* A packet socket made through io_uring: refused like one made by socket(). */
static __always_inline void rg_guard_uring_socket(struct file *file)
{
	struct socket *sock = file ? BPF_CORE_READ(file, private_data) : NULL;

	if (sock && BPF_CORE_READ(sock, sk, __sk_common.skc_family) == AF_PACKET)
		rg_judge_packet_socket(SOCK_RAW, 0, false);
}

/* Opens and sockets submitted through io_uring never pass the syscalls'
 * tracepoints. At completion the new descriptor is in the process's table
 * (completions run in the submitter or one of its io-wq threads): judged like
 * the syscall. Loaded only where the kernel has io_uring (the loader checks). */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(rg_guard_uring, void *ring, void *req, struct io_uring_cqe *cqe)
{
	__u8 opcode = BPF_CORE_READ((struct io_kiocb *)req, opcode);
	int res = BPF_CORE_READ(cqe, res);

	/* res is a descriptor (0 included); an open into the fixed-file table
	 * also returns 0, and then descriptor 0 is judged, which is harmless. */
	if (res < 0)
		return 0;
	if (opcode == IORING_OP_OPENAT || opcode == IORING_OP_OPENAT2)
		rg_judge_open(rg_fd_file(res), false);
	if (opcode == IORING_OP_SOCKET)
		rg_guard_uring_socket(rg_fd_file(res));
	return 0;
}

/* A completion that overflows the queue is copied into the ring later without
 * passing io_uring_complete, and the opcode is gone by then: any descriptor-
 * like result is judged as an open (a protected file cannot be open in a
 * guarded process legitimately, so a match is never a false kill). */
SEC("tp_btf/io_uring_cqe_overflow")
int BPF_PROG(rg_guard_uring_overflow, void *ring, unsigned long long user_data, int res, unsigned int cflags,
	     void *ocqe)
{
	if (res >= 0)
		rg_judge_open(rg_fd_file(res), false);
	return 0;
}

/* ---- taint follows children ---- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(rg_guard_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);

	if (ptgid == ctgid)
		return 0;
	/* A new process: whatever had its pid before is no longer its owner. */
	bpf_map_delete_elem(&rg_tainted_gone, &ctgid);
	if (bpf_map_lookup_elem(&rg_tainted, &ptgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&rg_tainted, &ctgid, &one, BPF_ANY);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(rg_guard_exit, struct task_struct *task)
{
	if (BPF_CORE_READ(task, signal, live.counter) == 0) {
		__u32 tgid = BPF_CORE_READ(task, tgid);
		/* Its sockets may outlive it (orphaned, data queued): their owner
		 * stays known as tainted until the pid is reused. */
		if (bpf_map_lookup_elem(&rg_tainted, &tgid)) {
			__u8 one = 1;
			bpf_map_update_elem(&rg_tainted_gone, &tgid, &one, BPF_ANY);
			bpf_map_delete_elem(&rg_tainted, &tgid);
		}
	}
	return 0;
}
