/* The maps the guard (guard.bpf.c) and its socket destroyer
 * (sockdestroy.bpf.c) share: the loader creates them in the guard object and
 * hands their fds to the destroyer (bpf_map__reuse_fd). Include after
 * vmlinux.h, bpf_helpers.h and events.h. */
#ifndef RG_SOCKOWNER_H
#define RG_SOCKOWNER_H

/* Thread group ids of tainted processes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} rg_tainted SEC(".maps");

/* Tainted processes that have exited, until their pid is reused (a fork
 * creates it again): their sockets outlive them, orphaned with data queued.
 * LRU: a workload that churns through tainted processes evicts the oldest,
 * never a live process's taint (rg_tainted). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} rg_tainted_gone SEC(".maps");

/* Who connected a socket, kept with the socket, so that its packets can be
 * judged by the process's taint where no process is at hand (egress), and
 * the socket destroyed before the guard detaches. */
struct rg_sock_owner {
	__u32 tgid;
	__u32 reported; /* one report per socket, not one per packet */
	__u64 cgroup_id;
	char comm[RG_COMM_LEN];
	__u32 tainted;  /* the owner was seen tainted: stays so once its process is gone */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rg_sock_owner);
} rg_sock_owners SEC(".maps");

/* Whether a socket's owner is tainted, living or gone. */
static __always_inline bool rg_owner_tainted(const struct rg_sock_owner *owner)
{
	return owner->tainted || bpf_map_lookup_elem(&rg_tainted, &owner->tgid) ||
	       bpf_map_lookup_elem(&rg_tainted_gone, &owner->tgid);
}

#endif
