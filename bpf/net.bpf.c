/* Network connects, and sends to an explicit destination (unconnected UDP,
 * TCP Fast Open). */
#include "common.bpf.h"

#define AF_INET 2
#define AF_INET6 10

RG_INFLIGHT_MAP(rg_net_args);

/* Saves the destination at syscall entry; the result comes at exit. */
static __always_inline int rg_net_enter(__u64 fd, const void *uaddr, __u64 addrlen, __u32 syscall)
{
	if (!uaddr || rg_filtered_out())
		return 0;
	struct rg_inflight args = { .arg0 = fd, .syscall = syscall };
	__u32 len = addrlen > sizeof(args.sockaddr) ? sizeof(args.sockaddr) : addrlen;
	/* Keep the bound visible to the verifier after optimisation. */
	asm volatile("%[len] &= 0x1f" : [len] "+r"(len));
	if (len > sizeof(args.sockaddr) || bpf_probe_read_user(args.sockaddr, len, uaddr) < 0)
		return 0;
	__u16 family = *(__u16 *)args.sockaddr;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	rg_inflight_save(&rg_net_args, &args);
	return 0;
}

static __always_inline int rg_net_exit(long ret, __u32 kind)
{
	struct rg_inflight *args = rg_inflight_take(&rg_net_args);
	if (!args)
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
	struct socket *sock = file ? BPF_CORE_READ(file, private_data) : NULL;
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;
	if (sk) {
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
		e->sock_type = BPF_CORE_READ(sk, sk_type);
	}
	rg_submit(e);
	return 0;
}

SEC("tp/syscalls/sys_enter_connect")
int rg_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	return rg_net_enter(ctx->args[0], (const void *)ctx->args[1], ctx->args[2], 0);
}

SEC("tp/syscalls/sys_exit_connect")
int rg_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_net_exit(ctx->ret, RG_KIND_NET_CONNECT);
}

SEC("tp/syscalls/sys_enter_sendto")
int rg_sendto_enter(struct trace_event_raw_sys_enter *ctx)
{
	return rg_net_enter(ctx->args[0], (const void *)ctx->args[4], ctx->args[5], RG_SEND_SENDTO);
}

SEC("tp/syscalls/sys_enter_sendmsg")
int rg_sendmsg_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct user_msghdr msg = {};
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)ctx->args[1]) < 0)
		return 0;
	return rg_net_enter(ctx->args[0], msg.msg_name, msg.msg_namelen, RG_SEND_SENDMSG);
}

SEC("tp/syscalls/sys_exit_sendto")
int rg_sendto_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_net_exit(ctx->ret, RG_KIND_NET_SENDMSG);
}

SEC("tp/syscalls/sys_exit_sendmsg")
int rg_sendmsg_exit(struct trace_event_raw_sys_exit *ctx)
{
	return rg_net_exit(ctx->ret, RG_KIND_NET_SENDMSG);
}
