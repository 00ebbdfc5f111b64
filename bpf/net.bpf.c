/* Network connects, and sends to an explicit destination (unconnected UDP,
 * TCP Fast Open). */
#include "common.bpf.h"

#define AF_INET 2
#define AF_INET6 10

/* The socket and destination of a connect, sendto or sendmsg; false when the
 * caller is out of scope or named no IPv4/IPv6 destination. */
static __always_inline bool rg_net_args(struct rg_syscall_args *args, __u32 syscall)
{
	if (rg_filtered_out())
		return false;
	struct pt_regs *regs = rg_syscall_regs();
	const void *uaddr;
	__u64 addrlen;

	if (syscall == RG_SEND_SENDTO) {
		uaddr = (const void *)PT_REGS_PARM5_SYSCALL(regs);
		addrlen = RG_SYSCALL_PARM6(regs);
	} else if (syscall == RG_SEND_SENDMSG) {
		struct user_msghdr msg = {};
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)PT_REGS_PARM2_SYSCALL(regs)) < 0)
			return false;
		uaddr = msg.msg_name;
		addrlen = msg.msg_namelen;
	} else {
		uaddr = (const void *)PT_REGS_PARM2_SYSCALL(regs);
		addrlen = PT_REGS_PARM3_SYSCALL(regs);
	}
	if (!uaddr)
		return false;
	args->arg0 = PT_REGS_PARM1_SYSCALL(regs);
	args->syscall = syscall;
	__u32 len = addrlen > sizeof(args->sockaddr) ? sizeof(args->sockaddr) : addrlen;
	/* Keep the bound visible to the verifier after optimisation. */
	asm volatile("%[len] &= 0x1f" : [len] "+r"(len));
	if (len > sizeof(args->sockaddr) || bpf_probe_read_user(args->sockaddr, len, uaddr) < 0)
		return false;
	__u16 family = *(__u16 *)args->sockaddr;
	return family == AF_INET || family == AF_INET6;
}

static __always_inline int rg_net_exit(long ret, __u32 kind, __u32 syscall)
{
	struct rg_syscall_args saved = {}, *args = &saved;
	if (!rg_net_args(args, syscall))
		return 0;
	struct rg_net_record *e = rg_reserve(struct rg_net_record, kind);
	if (!e)
		return 0;
	e->retval = ret;
	e->fd = args->arg0;
	e->syscall = args->syscall;
	e->family = *(__u16 *)args->sockaddr;
	/* sin_port and sin6_port share offset 2, in network byte order. */
	e->port = bpf_ntohs(*(__u16 *)&args->sockaddr[2]);
	if (e->family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)args->sockaddr;
		__builtin_memcpy(e->addr, &sin->sin_addr, 4);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)args->sockaddr;
		__builtin_memcpy(e->addr, &sin6->sin6_addr, 16);
	}
	struct file *file = rg_fd_file(args->arg0);
	/* Only a socket's file has a struct socket as its private data (S_IFSOCK inode). */
	struct socket *sock = file && (BPF_CORE_READ(file, f_inode, i_mode) & 0170000) == 0140000 ?
		BPF_CORE_READ(file, private_data) : NULL;
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;
	e->protocol = e->sock_type = 0; /* unknown unless the descriptor is a socket */
	e->local_family = e->local_port = 0;
	e->pad = 0;
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	if (sk) {
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
		e->sock_type = BPF_CORE_READ(sk, sk_type);
		/* The local end the connect or send bound (an autobind sets it). */
		e->local_family = BPF_CORE_READ(sk, __sk_common.skc_family);
		e->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
		if (e->local_family == AF_INET)
			BPF_CORE_READ_INTO(&e->local_addr, sk, __sk_common.skc_rcv_saddr);
		else if (e->local_family == AF_INET6)
			BPF_CORE_READ_INTO(&e->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
	}
	rg_submit(e);
	return 0;
}

SEC("tp/syscalls/sys_exit_connect")
int rg_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_net_exit(ctx->ret, RG_KIND_NET_CONNECT, 0);
}

SEC("tp/syscalls/sys_exit_sendto")
int rg_sendto_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_net_exit(ctx->ret, RG_KIND_NET_SENDMSG, RG_SEND_SENDTO);
}

SEC("tp/syscalls/sys_exit_sendmsg")
int rg_sendmsg_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_net_exit(ctx->ret, RG_KIND_NET_SENDMSG, RG_SEND_SENDMSG);
}
