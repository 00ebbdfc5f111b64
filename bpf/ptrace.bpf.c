/* ptrace requests and process_vm_readv/writev. */
#include "common.bpf.h"

RG_INFLIGHT_MAP(rg_ptrace_args);

static __always_inline int rg_save(__u64 arg0, __u64 arg1, __u32 syscall)
{
	if (rg_filtered_out())
		return 0;
	struct rg_inflight args = { .arg0 = arg0, .arg1 = arg1, .syscall = syscall };
	rg_inflight_save(&rg_ptrace_args, &args);
	return 0;
}

SEC("tp/syscalls/sys_enter_ptrace")
int rg_ptrace_enter(struct trace_event_raw_sys_enter *ctx)
{
	return rg_save(ctx->args[0], ctx->args[1], 0);
}

SEC("tp/syscalls/sys_exit_ptrace")
int rg_ptrace_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct rg_inflight *args = rg_inflight_take(&rg_ptrace_args);
	if (!args)
		return 0;
	struct rg_ptrace_record *e = rg_reserve(struct rg_ptrace_record, RG_KIND_PTRACE);
	if (e) {
		e->request = args->arg0;
		e->target_pid = args->arg1;
		e->retval = ctx->ret;
		rg_submit(e);
	}
	return 0;
}

SEC("tp/syscalls/sys_enter_process_vm_readv")
int rg_vm_readv_enter(struct trace_event_raw_sys_enter *ctx)
{
	return rg_save(ctx->args[0], 0, RG_MEM_VM_READV);
}

SEC("tp/syscalls/sys_enter_process_vm_writev")
int rg_vm_writev_enter(struct trace_event_raw_sys_enter *ctx)
{
	return rg_save(ctx->args[0], 0, RG_MEM_VM_WRITEV);
}

static __always_inline int rg_vm_exit(long ret)
{
	struct rg_inflight *args = rg_inflight_take(&rg_ptrace_args);
	if (!args)
		return 0;
	struct rg_memory_record *e = rg_reserve(struct rg_memory_record, RG_KIND_PROCESS_MEMORY);
	if (e) {
		e->target_pid = args->arg0;
		e->method = args->syscall;
		e->retval = ret;
		rg_submit(e);
	}
	return 0;
}

SEC("tp/syscalls/sys_exit_process_vm_readv")
int rg_vm_readv_exit(struct trace_event_raw_sys_exit *ctx) { return rg_vm_exit(ctx->ret); }

SEC("tp/syscalls/sys_exit_process_vm_writev")
int rg_vm_writev_exit(struct trace_event_raw_sys_exit *ctx) { return rg_vm_exit(ctx->ret); }
