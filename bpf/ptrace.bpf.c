/* ptrace requests and process_vm_readv/writev. */
#include "common.bpf.h"

/* The first two arguments (request and pid; pid for process_vm_*), or false
 * when the caller is out of scope. */
static __always_inline bool rg_first_args(struct rg_syscall_args *args)
{
	if (rg_filtered_out())
		return false;
	struct pt_regs *regs = rg_syscall_regs();
	args->arg0 = PT_REGS_PARM1_SYSCALL(regs);
	args->arg1 = PT_REGS_PARM2_SYSCALL(regs);
	return true;
}

SEC("tp/syscalls/sys_exit_ptrace")
int rg_ptrace_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct rg_syscall_args saved, *args = &saved;
	if (!rg_first_args(args))
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

static __always_inline int rg_vm_exit(long ret, __u32 method)
{
	struct rg_syscall_args saved, *args = &saved;
	if (!rg_first_args(args))
		return 0;
	struct rg_memory_record *e = rg_reserve(struct rg_memory_record, RG_KIND_PROCESS_MEMORY);
	if (e) {
		e->target_pid = args->arg0;
		e->method = method;
		e->flags = 0; /* open flags: only for /proc/<pid>/mem */
		e->retval = ret;
		rg_submit(e);
	}
	return 0;
}

SEC("tp/syscalls/sys_exit_process_vm_readv")
int rg_vm_readv_exit(struct trace_event_raw_sys_exit *ctx) { return rg_vm_exit(ctx->ret, RG_MEM_VM_READV); }

SEC("tp/syscalls/sys_exit_process_vm_writev")
int rg_vm_writev_exit(struct trace_event_raw_sys_exit *ctx) { return rg_vm_exit(ctx->ret, RG_MEM_VM_WRITEV); }
