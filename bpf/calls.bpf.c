/* Function calls: uprobes on functions resolved by symbol, and USDT probes.
 *
 * Every call in scope is counted in the kernel by (probe, process, user
 * stack), so a hot function costs a map update, not a ring record. A probe
 * may also send a record per call, through a token bucket, and copy a
 * buffer the call writes or reads (TLS plaintext at SSL_write/SSL_read).
 */
#include "common.bpf.h"
#include <bpf/usdt.bpf.h>

/* Frames as (build id, file offset) where the kernel can read the file's
 * build id, else the bare address: the loader turns the build ids off where
 * the kernel refuses them (value size and flags set before load). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, RG_CALL_STACKS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, RG_CALL_STACK_DEPTH * sizeof(struct rg_stack_frame));
	__uint(map_flags, BPF_F_STACK_BUILD_ID);
} rg_call_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RG_CALL_PROBES_MAX);
	__type(key, __u32);
	__type(value, struct rg_call_probe);
} rg_call_probes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RG_CALL_PROBES_MAX);
	__type(key, __u32);
	__type(value, struct rg_call_state);
} rg_call_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RG_CALL_PATHS_MAX);
	__type(key, struct rg_call_path_key);
	__type(value, struct rg_call_path_count);
} rg_call_paths SEC(".maps");

/* What an entry saw that its return needs (the buffer a read fills). */
struct rg_call_entry_key {
	__u32 tid;
	__u32 probe;
};

struct rg_call_entry {
	__u64 buffer;
	__u64 length; /* RG_LENGTH_POINTER: the pointer */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rg_call_entry_key);
	__type(value, struct rg_call_entry);
} rg_call_entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_call_record);
} rg_call_scratch SEC(".maps");

#define RG_NS_PER_SEC 1000000000LL

/* One record's worth of tokens, or false. The bucket is shared by every
 * CPU: the refill is claimed by swapping its time stamp, so two CPUs never
 * add the same interval, and tokens are taken with an atomic add (a take
 * that overdraws gives its token back). */
static __always_inline bool rg_take_token(struct rg_call_state *st, const struct rg_call_probe *cfg)
{
	if (!cfg->rate)
		return true;
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 then = st->refilled_ns;
	long long cap = (long long)cfg->burst * RG_NS_PER_SEC;

	if (now > then && __sync_val_compare_and_swap(&st->refilled_ns, then, now) == then) {
		__u64 elapsed = now - then;
		/* A long idle refills the whole burst (and keeps the product in range). */
		long long add = elapsed >= RG_NS_PER_SEC ? cap : (long long)(elapsed * cfg->rate);
		if (__sync_fetch_and_add(&st->tokens, add) + add > cap)
			st->tokens = cap; /* a race here only lets the bucket hold less */
	}
	if (__sync_fetch_and_add(&st->tokens, -RG_NS_PER_SEC) >= RG_NS_PER_SEC)
		return true;
	__sync_fetch_and_add(&st->tokens, RG_NS_PER_SEC);
	__sync_fetch_and_add(&st->limited, 1);
	return false;
}

static __always_inline void rg_count_path(struct rg_call_state *st, __u32 cookie, int stack_id)
{
	struct rg_call_path_key key = {
		.cgroup_id = bpf_get_current_cgroup_id(),
		.pid = bpf_get_current_pid_tgid() >> 32,
		.probe = cookie,
		.stack_id = stack_id,
	};
	__u64 now = bpf_ktime_get_boot_ns();
	struct rg_call_path_count *count = bpf_map_lookup_elem(&rg_call_paths, &key);

	if (count) {
		__sync_fetch_and_add(&count->count, 1);
		count->last_ns = now;
		return;
	}
	struct rg_call_path_count first = { .count = 1, .first_ns = now, .last_ns = now };
	/* Two CPUs may both miss: the loser adds to the winner's entry. */
	if (bpf_map_update_elem(&rg_call_paths, &key, &first, BPF_NOEXIST) == 0)
		return;
	count = bpf_map_lookup_elem(&rg_call_paths, &key);
	if (count)
		__sync_fetch_and_add(&count->count, 1);
	else
		__sync_fetch_and_add(&st->paths_full, 1);
}

/* An argument the probe's configuration names (0-4), from those read at entry. */
static __always_inline __u64 rg_arg(const struct rg_call_record *e, __u32 i)
{
	return i < RG_CALL_ARGS ? e->args[i] : 0;
}

/* Copies up to capture_bytes of the buffer at src, size bytes long, into
 * the record; returns the bytes copied. The bounds are plain comparisons:
 * older verifiers lose a masked length's range. */
static __always_inline __u32 rg_capture(struct rg_call_record *e, const struct rg_call_probe *cfg, __u64 src,
					 __u64 size)
{
	__u64 n = size < cfg->capture_bytes ? size : cfg->capture_bytes;

	e->data_size = size;
	if (n > RG_CALL_DATA_MAX)
		n = RG_CALL_DATA_MAX;
	e->data_truncated = n < size;
	if (bpf_probe_read_user(e->data, n, (void *)src) < 0)
		return 0;
	return n;
}

/* A USDT probe's string arguments, each NUL-ended, one after another. */
static __always_inline __u32 rg_usdt_strings(struct rg_call_record *e, const struct rg_call_probe *cfg)
{
	__u32 len = 0;

	for (int i = 0; i < RG_CALL_ARGS; i++) {
		if (!(cfg->string_args >> i & 1) || i >= e->arg_count)
			continue;
		if (len >= RG_CALL_DATA_MAX - 256)
			break;
		long got = bpf_probe_read_user_str(&e->data[len & (RG_CALL_DATA_MAX - 1)], 256,
						   (void *)e->args[i]);
		if (got <= 0) {
			e->data[len & (RG_CALL_DATA_MAX - 1)] = 0;
			got = 1;
		}
		len += got;
	}
	return len;
}

static __always_inline int rg_call(struct pt_regs *ctx, __u64 cookie, bool usdt)
{
	__u32 probe = cookie >> 1, is_return = cookie & 1, zero = 0;

	if (rg_filtered_out() || probe >= RG_CALL_PROBES_MAX)
		return 0;
	struct rg_call_probe *cfg = bpf_map_lookup_elem(&rg_call_probes, &probe);
	struct rg_call_state *st = bpf_map_lookup_elem(&rg_call_state, &probe);
	struct rg_call_record *e = bpf_map_lookup_elem(&rg_call_scratch, &zero);
	if (!cfg || !st || !e)
		return 0;
	__sync_fetch_and_add(&st->calls, 1);

	/* The registers of the arguments, by their constant names (the verifier
	 * refuses a context read at a computed offset). */
	if (usdt) {
		int count = bpf_usdt_arg_cnt(ctx);
		e->arg_count = count > 0 ? count : 0;
		for (int i = 0; i < RG_CALL_ARGS; i++) {
			long value = 0;
			if (i < count)
				bpf_usdt_arg(ctx, i, &value);
			e->args[i] = value;
		}
	} else {
		e->arg_count = 0;
		e->args[0] = is_return ? 0 : PT_REGS_PARM1(ctx);
		e->args[1] = is_return ? 0 : PT_REGS_PARM2(ctx);
		e->args[2] = is_return ? 0 : PT_REGS_PARM3(ctx);
		e->args[3] = is_return ? 0 : PT_REGS_PARM4(ctx);
		e->args[4] = is_return ? 0 : PT_REGS_PARM5(ctx);
	}

	struct rg_call_entry_key entry_key = { .tid = (__u32)bpf_get_current_pid_tgid(), .probe = probe };
	struct rg_call_entry saved = {};
	bool read_at_return = (cfg->flags & RG_CALL_CAPTURE) && cfg->length_from != RG_LENGTH_ARG;
	if (read_at_return && !is_return) {
		/* The call fills the buffer: remember where, read it at return. */
		saved.buffer = rg_arg(e, cfg->buffer_arg);
		saved.length = rg_arg(e, cfg->length_arg);
		bpf_map_update_elem(&rg_call_entries, &entry_key, &saved, BPF_ANY);
	}
	if (read_at_return && is_return) {
		struct rg_call_entry *found = bpf_map_lookup_elem(&rg_call_entries, &entry_key);
		if (!found) {
			__sync_fetch_and_add(&st->unsaved, 1);
			return 0;
		}
		saved = *found;
		bpf_map_delete_elem(&rg_call_entries, &entry_key);
	}

	int stack_id = -ENOENT;
	if (cfg->flags & RG_CALL_STACK) {
		stack_id = bpf_get_stackid(ctx, &rg_call_stacks, BPF_F_USER_STACK);
		if (stack_id < 0)
			__sync_fetch_and_add(&st->stack_errors, 1);
	}
	rg_count_path(st, cookie, stack_id);

	if (!(cfg->flags & RG_CALL_RECORDS) || !rg_take_token(st, cfg))
		return 0;
	rg_claim(e, RG_KIND_FUNCTION_CALL, true, NULL);
	e->ip = PT_REGS_IP(ctx);
	e->retval = is_return ? PT_REGS_RC(ctx) : 0;
	e->stack_id = stack_id;
	e->probe = probe;
	e->is_return = is_return;
	e->usdt = usdt;
	e->data_truncated = 0;
	e->data_size = 0;
	__u32 len = 0;
	if (usdt) {
		len = rg_usdt_strings(e, cfg);
	} else if ((cfg->flags & RG_CALL_CAPTURE) && !is_return && cfg->length_from == RG_LENGTH_ARG) {
		len = rg_capture(e, cfg, rg_arg(e, cfg->buffer_arg), rg_arg(e, cfg->length_arg));
	} else if (read_at_return && is_return) {
		__u64 size = 0;
		long ret = PT_REGS_RC(ctx);
		if (cfg->length_from == RG_LENGTH_RETVAL)
			size = ret > 0 ? ret : 0;
		else if (ret > 0 && bpf_probe_read_user(&size, sizeof(size), (void *)saved.length) < 0)
			size = 0;
		len = rg_capture(e, cfg, saved.buffer, size);
	}
	if (len > RG_CALL_DATA_MAX)
		len = RG_CALL_DATA_MAX;
	e->data_len = len;
	rg_send(e, RG_KIND_FUNCTION_CALL, offsetof(struct rg_call_record, data) + len);
	return 0;
}

SEC("uprobe")
int rg_call_entry(struct pt_regs *ctx)
{
	return rg_call(ctx, bpf_get_attach_cookie(ctx), false);
}

SEC("uretprobe")
int rg_call_return(struct pt_regs *ctx)
{
	return rg_call(ctx, bpf_get_attach_cookie(ctx), false);
}

SEC("usdt")
int rg_call_usdt(struct pt_regs *ctx)
{
	return rg_call(ctx, bpf_usdt_cookie(ctx), true);
}
