/* Hostname rules: DNS answers read before the process can read them.
 *
 * Egress (cgroup_skb): a query a guarded socket sends to port 53, UDP or TCP,
 * is remembered by (cgroup, server, server port, local port, message id,
 * protocol) with its question's name and type. Ingress (cgroup_skb): the
 * program runs as the packet is handed to the socket, before any read can
 * return it. An answer counts only if it matches a remembered query of the
 * same cgroup, the same name and type, and comes from a trusted server; its
 * A and AAAA addresses then enter rg_resolved, marked with the host patterns
 * the question's name matches, before the process sees a byte. The connect
 * and send hooks (rg_egress) match host rules by those marks.
 *
 * Names are matched as text: lower case, labels of [a-z0-9_-] only (a name
 * with any other byte, or a label holding a dot, matches no pattern and is
 * not counted). Patterns are found by hash, each suffix of the name at a
 * label boundary looked up as "*.suffix" and the whole name as itself, and a
 * hit is confirmed by comparing the text, so a colliding name matches nothing.
 *
 * Included by guard.bpf.c (the maps and config are the guard's). */

#include "namehash.h"

#define RG_DNS_PORT 53
#define RG_DNS_NAME_MASK (RG_DNS_NAME_LEN - 1)
/* Callback steps for one message's answer section: a step skips one label
 * of an owner name, or reads one record's fixed part. */
#define RG_DNS_ANSWER_STEPS 1024
/* Pattern hits one name may have (suffixes at label boundaries that a
 * pattern names); more are ignored. */
#define RG_DNS_HITS 8
/* An index masked in a way the compiler keeps: it drops a mask that an
 * earlier bounds check makes redundant, and older verifiers (6.1) cannot
 * always carry that check's bound to the access. */
#define RG_MASKED(v, mask) ({ __u32 __m = (v); barrier_var(__m); __m & (mask); })
#define RG_DNS_TYPE_A 1
#define RG_DNS_TYPE_AAAA 28

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct rg_dns_query_key);
	__type(value, struct rg_dns_query);
} rg_dns_queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rg_resolved_key);
	__type(value, struct rg_resolved_value);
} rg_resolved SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RG_HOST_PATTERNS);
	__type(key, __u64);
	__type(value, struct rg_host_pattern);
} rg_host_patterns SEC(".maps");

/* Servers whose answers count (the policy's network.dns.servers). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct rg_resolved_key);
	__type(value, __u8);
} rg_dns_servers SEC(".maps");

/* Name hash -> name, for the decisions' target hostnames. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct rg_dns_name);
} rg_names SEC(".maps");

struct rg_dns_hit {
	__u64 key;
	__u32 at;   /* the name's suffix starts here ('.' of a glob's "*.", 0 for the whole name) */
	__u32 glob;
};

/* Everything the parse's callbacks carry from one step to the next lives
 * here, in map memory, not on the stack: the verifier tracks what a stack
 * slot holds from step to step and would follow every value a position or
 * a counter takes; a value read from a map is just a number to it, so each
 * callback is checked once. The steps reach the packet through their ctx
 * (only the skb pointer, the same at every step). */
struct rg_dns_state {
	__u32 base;       /* the message's first byte in the packet */
	__u32 end;        /* the message's length */
	__u32 pos;        /* answers: the next byte to read */
	__u32 left;       /* answers: records still to read */
	__u32 in_name;    /* answers: the next step skips a label of an owner name */
	__u32 count;      /* addresses found (rg_dns_found) */
	__u32 total;      /* A and AAAA records read */
	__u32 min_ttl;    /* seconds, bounded */
	__u32 label_left; /* question: bytes of the current label still to come */
	__u32 name_len;
	__s32 name_state; /* question: 0 going, 1 whole, -1 not a name this parser takes */
	__u32 hits;
	__u64 now, min_ttl_ns, max_ttl_ns;
	__u64 hash;       /* of the name, from its end back */
	__u64 patterns;
	struct rg_dns_hit hit[RG_DNS_HITS];
	/* the comparison of one hit */
	__u32 cmp_from, cmp_at, cmp_len;
	__s32 cmp_differs;
	__u64 cmp_key;
};

/* The record being built (rec.name holds the question's name as text), and
 * the parse's state. */
struct rg_dns_scratch {
	struct rg_dns_record rec;
	struct rg_dns_state st;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_dns_scratch);
} rg_dns_scratch SEC(".maps");

/* An answer's addresses as the parse finds them, keyed by their number. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RG_DNS_ADDRESSES);
	__type(key, __u32);
	__type(value, struct rg_resolved_key);
} rg_dns_found SEC(".maps");

static __always_inline struct rg_dns_scratch *rg_dns_buf(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&rg_dns_scratch, &zero);
}

struct rg_dns_ctx {
	struct __sk_buff *skb;
};

/* Where a DNS message sits in a packet, and between whom. */
struct rg_dns_packet {
	__u8 server[RG_ADDR_LEN];
	__u16 family;
	__u16 server_port;
	__u16 local_port;
	__u8 protocol;
	__u32 offset; /* the message's first byte */
	__u32 len;    /* its length (what this packet holds of it) */
};

/* 0 when skb carries a DNS message to (egress) or from (ingress) port 53. */
static __always_inline int rg_dns_locate(struct __sk_buff *skb, bool ingress, struct rg_dns_packet *p)
{
	__u8 ip[40], l4h[14];
	__u32 l4, proto;

	if (bpf_skb_load_bytes(skb, 0, ip, 20))
		return -1;
	/* By the packet's IP version: an AF_INET6 socket may carry IPv4. */
	if ((ip[0] >> 4) == 4) {
		if ((ip[6] & 0x3f) || ip[7])
			return -1; /* a fragment */
		l4 = (ip[0] & 0xf) * 4;
		proto = ip[9];
		p->family = AF_INET;
		if (ingress)
			__builtin_memcpy(p->server, ip + 12, 4);
		else
			__builtin_memcpy(p->server, ip + 16, 4);
	} else if ((ip[0] >> 4) == 6) {
		if (bpf_skb_load_bytes(skb, 0, ip, 40))
			return -1;
		l4 = 40; /* extension headers: not DNS this parser reads */
		proto = ip[6];
		p->family = AF_INET6;
		if (ingress)
			__builtin_memcpy(p->server, ip + 8, 16);
		else
			__builtin_memcpy(p->server, ip + 24, 16);
	} else {
		return -1;
	}
	if (proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, l4, l4h, 8))
			return -1;
		p->offset = l4 + 8;
	} else if (proto == IPPROTO_TCP) {
		__u8 length[2];

		if (bpf_skb_load_bytes(skb, l4, l4h, 14))
			return -1;
		__u32 payload = l4 + (l4h[12] >> 4) * 4;
		/* Only a segment that starts with a message (its two-byte length):
		 * what follows a message cut across segments is not read. */
		if (skb->len < payload + 2 + 12 || bpf_skb_load_bytes(skb, payload, length, 2))
			return -1;
		p->offset = payload + 2;
		__u32 want = (__u32)length[0] << 8 | length[1];
		if (want < skb->len - p->offset)
			p->len = want;
	} else {
		return -1;
	}
	__u16 sport = (__u16)l4h[0] << 8 | l4h[1], dport = (__u16)l4h[2] << 8 | l4h[3];
	if (ingress ? sport != RG_DNS_PORT : dport != RG_DNS_PORT)
		return -1;
	p->server_port = RG_DNS_PORT;
	p->local_port = ingress ? dport : sport;
	p->protocol = proto;
	if (skb->len <= p->offset)
		return -1;
	if (!p->len || p->len > skb->len - p->offset)
		p->len = skb->len - p->offset;
	return 0;
}

/* The message's bytes are read from the packet at offsets the callbacks
 * carry (a helper's offset argument), never by indexing a buffer with
 * them: an index used on a pointer would make the verifier track every
 * value it takes, and the callbacks would never converge. */
static __always_inline __u32 rg_be16(const __u8 *b)
{
	return (__u32)b[0] << 8 | b[1];
}

/* ---- the question's name, as text ---- */

/* Step i reads the question's byte 12 + i: the first length byte starts
 * the name, each later one becomes the '.' at text[i - 1], each other byte
 * the character there. */
static long rg_dns_name_step(__u64 i, void *ctx)
{
	struct rg_dns_ctx *c = ctx;
	struct rg_dns_scratch *s = rg_dns_buf();
	__u8 b;

	if (!s)
		return 1;
	struct rg_dns_state *st = &s->st;
	if (12 + i >= st->end || i >= RG_DNS_NAME_LEN || bpf_skb_load_bytes(c->skb, st->base + 12 + (__u32)i, &b, 1)) {
		st->name_state = -1;
		return 1;
	}
	if (!st->label_left) {
		if (b == 0) {
			st->name_len = i ? i - 1 : 0;
			st->name_state = 1;
			return 1;
		}
		if (b > 63) { /* a compression pointer: a question is written out whole */
			st->name_state = -1;
			return 1;
		}
		st->label_left = b;
		if (i)
			s->rec.name[RG_MASKED(i - 1, RG_DNS_NAME_MASK)] = '.';
		return 0;
	}
	if (b >= 'A' && b <= 'Z')
		b += 'a' - 'A';
	if (!((b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' || b == '_')) {
		st->name_state = -1;
		return 1;
	}
	s->rec.name[RG_MASKED(i - 1, RG_DNS_NAME_MASK)] = b;
	st->label_left--;
	return 0;
}

/* The question (the one the message must hold): its name into s->rec.name,
 * its type; the offset after it, 0 when it cannot be read. */
static __always_inline __u32 rg_dns_question(struct rg_dns_ctx *c, const __u8 *head, struct rg_dns_scratch *s,
					     __u16 *qtype)
{
	struct rg_dns_state *st = &s->st;
	__u8 tail[4];

	if (rg_be16(head + 4) != 1) /* qdcount */
		return 0;
	st->label_left = 0;
	st->name_state = 0;
	st->name_len = 0;
	bpf_loop(RG_DNS_NAME_LEN, rg_dns_name_step, c, 0);
	__u32 len = st->name_len;
	if (st->name_state != 1 || len > RG_DNS_NAME_LEN - 2)
		return 0;
	/* The name's wire form is its text plus two bytes (the first length, the root). */
	__u32 at = 12 + (len ? len + 2 : 1);
	if (at + 4 > st->end || bpf_skb_load_bytes(c->skb, st->base + at, tail, 4))
		return 0;
	s->rec.name_len = len;
	s->rec.name[RG_MASKED(len, RG_DNS_NAME_MASK)] = 0;
	*qtype = rg_be16(tail);
	if (rg_be16(tail + 2) != 1) /* class IN */
		return 0;
	return at + 4;
}

/* ---- host patterns ---- */

static __always_inline void rg_dns_note_hit(struct rg_dns_state *st, __u64 key, __u32 at, __u32 glob)
{
	if (!bpf_map_lookup_elem(&rg_host_patterns, &key))
		return;
	__u32 h = st->hits;
	if (h >= RG_DNS_HITS)
		return;
	struct rg_dns_hit *hit = &st->hit[RG_MASKED(h, RG_DNS_HITS - 1)];
	hit->key = key;
	hit->at = at;
	hit->glob = glob;
	st->hits = h + 1;
}

/* The name hashed from its last byte back (namehash.h), so the hash at a
 * '.' is the hash of the suffix from there: "*" added to it is the key of
 * the glob naming that suffix.
 * ctx: non-NULL to look patterns up (answers), NULL to only hash (queries). */
static long rg_dns_hash_step(__u64 i, void *ctx)
{
	struct rg_dns_scratch *s = rg_dns_buf();

	if (!s)
		return 1;
	struct rg_dns_state *st = &s->st;
	__u32 len = st->name_len;
	if (i >= len)
		return 1;
	__u32 j = len - 1 - (__u32)i;
	__u8 c = s->rec.name[RG_MASKED(j, RG_DNS_NAME_MASK)];
	st->hash = rg_name_hash_step(st->hash, c);
	if (c == '.' && ctx)
		rg_dns_note_hit(st, rg_glob_key(st->hash), j, 1);
	return 0;
}

static long rg_dns_compare_step(__u64 i, void *ctx)
{
	struct rg_dns_scratch *s = rg_dns_buf();

	if (!s)
		return 1;
	struct rg_dns_state *st = &s->st;
	__u64 key = st->cmp_key;
	const struct rg_host_pattern *p = bpf_map_lookup_elem(&rg_host_patterns, &key);
	if (i >= st->cmp_len)
		return 1;
	if (!p || p->text[RG_MASKED(st->cmp_from + i, RG_DNS_NAME_MASK)] !=
			  s->rec.name[RG_MASKED(st->cmp_at + i, RG_DNS_NAME_MASK)]) {
		st->cmp_differs = 1;
		return 1;
	}
	return 0;
}

/* The patterns a hit really names: its text compared with the name's. */
static long rg_dns_confirm_step(__u64 i, void *ctx)
{
	struct rg_dns_scratch *s = rg_dns_buf();

	if (!s)
		return 1;
	struct rg_dns_state *st = &s->st;
	if (i >= st->hits || i >= RG_DNS_HITS)
		return 1;
	struct rg_dns_hit *h = &st->hit[RG_MASKED(i, RG_DNS_HITS - 1)];
	__u64 key = h->key;
	const struct rg_host_pattern *p = bpf_map_lookup_elem(&rg_host_patterns, &key);
	if (!p)
		return 0;
	/* A glob's "*" stands for one label or more: its ".suffix" against the
	 * name's from the hit's '.'. */
	__u32 skip = h->glob ? 1 : 0, at = h->at, plen = p->len;
	if (plen < skip || plen - skip != st->name_len - at)
		return 0;
	st->cmp_key = key;
	st->cmp_from = skip;
	st->cmp_at = at;
	st->cmp_len = plen - skip;
	st->cmp_differs = 0;
	bpf_loop(RG_DNS_NAME_LEN, rg_dns_compare_step, NULL, 0);
	if (!st->cmp_differs)
		st->patterns |= p->bits;
	return 0;
}

/* The name's hash into st->hash, and (find) the patterns it matches into
 * st->patterns. */
static __always_inline void rg_dns_match_name(struct rg_dns_scratch *s, bool find)
{
	struct rg_dns_state *st = &s->st;
	int look = 1;

	st->hash = RG_NAME_HASH_START;
	st->hits = 0;
	st->patterns = 0;
	bpf_loop(RG_DNS_NAME_LEN, rg_dns_hash_step, find ? &look : NULL, 0);
	if (!find || !st->name_len)
		return;
	rg_dns_note_hit(st, st->hash, 0, 0);
	if (st->hits)
		bpf_loop(RG_DNS_HITS, rg_dns_confirm_step, NULL, 0);
}

/* ---- queries ---- */

static __always_inline void rg_dns_query_key(struct __sk_buff *skb, const struct rg_dns_packet *p, __u16 id,
					     struct rg_dns_query_key *key)
{
	key->cgroup_id = bpf_skb_cgroup_id(skb);
	__builtin_memcpy(key->server, p->server, RG_ADDR_LEN);
	key->family = p->family;
	key->local_port = p->local_port;
	key->id = id;
	key->protocol = p->protocol;
}

/* 0 when skb carries a DNS message the guard reads: its place, its header
 * (12 bytes) in head, and the parse's bounds set. */
static __always_inline int rg_dns_message(struct __sk_buff *skb, bool ingress, struct rg_guard_config *cfg,
					  struct rg_dns_scratch *s, struct rg_dns_packet *p, __u8 *head)
{
	if (!cfg || !cfg->dns_observe || !s || rg_dns_locate(skb, ingress, p) || p->len < 12 ||
	    bpf_skb_load_bytes(skb, p->offset, head, 12))
		return -1;
	s->st.base = p->offset;
	s->st.end = p->len;
	return 0;
}

/* Whether a server's answers count (network.dns.servers); also the egress
 * hooks' check of port 53 under network.dns.refuse_unobserved. */
static __always_inline bool rg_dns_trusted(const __u8 *addr, __u32 family)
{
	struct rg_resolved_key key = { .family = family };

	__builtin_memcpy(key.addr, addr, RG_ADDR_LEN);
	return bpf_map_lookup_elem(&rg_dns_servers, &key) != NULL;
}

SEC("cgroup_skb/egress")
int rg_guard_dns_query(struct __sk_buff *skb)
{
	struct rg_guard_config *cfg = rg_config();
	struct rg_dns_packet p = {};
	struct rg_dns_scratch *s = rg_dns_buf();
	struct rg_dns_ctx c = { .skb = skb };
	__u16 qtype = 0;
	__u8 head[12];

	if (rg_dns_message(skb, false, cfg, s, &p, head))
		return 1;
	/* A standard query (QR 0, opcode 0). */
	if ((head[2] & 0xf8) || !rg_dns_question(&c, head, s, &qtype))
		return 1;
	rg_dns_match_name(s, false);

	struct rg_dns_query_key key = {};
	struct rg_dns_query q = { .name_hash = s->st.hash, .sent_ns = bpf_ktime_get_boot_ns(), .qtype = qtype };
	struct bpf_sock *sk = skb->sk;
	if (sk && (sk = bpf_sk_fullsock(sk))) {
		struct rg_sock_owner *owner = bpf_sk_storage_get(&rg_sock_owners, sk, 0, 0);
		if (owner)
			q.tgid = owner->tgid;
	}
	rg_dns_query_key(skb, &p, rg_be16(head), &key);
	bpf_map_update_elem(&rg_dns_queries, &key, &q, BPF_ANY);
	return 1;
}

/* ---- answers ---- */

static __always_inline void rg_dns_hold(struct rg_dns_state *st, struct rg_resolved_key *key, __u32 ttl,
					 __u64 name_hash)
{
	__u64 held = (__u64)ttl * 1000000000ULL;

	if (held < st->min_ttl_ns)
		held = st->min_ttl_ns;
	if (held > st->max_ttl_ns)
		held = st->max_ttl_ns;
	struct rg_resolved_value v = { .expires_ns = st->now + held, .patterns = st->patterns, .name_hash = name_hash };
	/* An address keeps the marks of every name answered with it (a CDN's
	 * address serves many) until the last of those answers runs out. */
	struct rg_resolved_value *old = bpf_map_lookup_elem(&rg_resolved, key);
	if (old && old->expires_ns > st->now) {
		v.patterns |= old->patterns;
		if (old->expires_ns > v.expires_ns)
			v.expires_ns = old->expires_ns;
	}
	bpf_map_update_elem(&rg_resolved, key, &v, BPF_ANY);

	__u32 secs = held / 1000000000ULL;
	if (!st->total || secs < st->min_ttl)
		st->min_ttl = secs;
	st->total++;
	__u32 n = st->count;
	if (n < RG_DNS_ADDRESSES && !bpf_map_update_elem(&rg_dns_found, &n, key, BPF_ANY))
		st->count = n + 1;
}

/* One step of the answer section: a label of an owner name skipped, or a
 * record's fixed part read (and its address held, for A and AAAA). */
static long rg_dns_answer_step(__u64 i, void *ctx)
{
	struct rg_dns_ctx *c = ctx;
	struct rg_dns_scratch *s = rg_dns_buf();
	__u8 f[10];

	if (!s)
		return 1;
	struct rg_dns_state *st = &s->st;
	__u32 at = st->pos;
	if (!st->left || at >= st->end)
		return 1;
	if (st->in_name) {
		if (bpf_skb_load_bytes(c->skb, st->base + at, f, 1))
			return 1;
		if (f[0] == 0) {
			st->pos = at + 1;
			st->in_name = 0;
		} else if ((f[0] & 0xc0) == 0xc0) {
			st->pos = at + 2; /* a pointer ends the name */
			st->in_name = 0;
		} else if (f[0] > 63) {
			return 1;
		} else {
			st->pos = at + 1 + f[0];
		}
		return 0;
	}
	if (at + 10 > st->end || bpf_skb_load_bytes(c->skb, st->base + at, f, 10))
		return 1;
	__u32 type = rg_be16(f), class = rg_be16(f + 2);
	__u32 ttl = rg_be16(f + 4) << 16 | rg_be16(f + 6);
	__u32 rdlen = rg_be16(f + 8);
	if (at + 10 + rdlen > st->end)
		return 1; /* the rest of the message is in a later segment */
	struct rg_resolved_key key = {};
	if (class == 1 && type == RG_DNS_TYPE_A && rdlen == 4) {
		key.family = AF_INET;
		if (!bpf_skb_load_bytes(c->skb, st->base + at + 10, key.addr, 4))
			rg_dns_hold(st, &key, ttl, st->hash);
	} else if (class == 1 && type == RG_DNS_TYPE_AAAA && rdlen == 16) {
		key.family = AF_INET6;
		if (!bpf_skb_load_bytes(c->skb, st->base + at + 10, key.addr, 16))
			rg_dns_hold(st, &key, ttl, st->hash);
	}
	st->pos = at + 10 + rdlen;
	st->left--;
	st->in_name = 1;
	return 0;
}

/* The addresses found, into the record: indexed by the step. */
static long rg_dns_copy_address(__u64 i, void *ctx)
{
	struct rg_dns_scratch *s = rg_dns_buf();
	__u32 k = i;
	struct rg_resolved_key *found = bpf_map_lookup_elem(&rg_dns_found, &k);

	if (!s || !found)
		return 1;
	__u32 at = RG_MASKED(k, RG_DNS_ADDRESSES - 1);
	__builtin_memcpy(s->rec.addresses[at], found->addr, RG_ADDR_LEN);
	s->rec.families[at] = found->family;
	return 0;
}

SEC("cgroup_skb/ingress")
int rg_guard_dns_answer(struct __sk_buff *skb)
{
	struct rg_guard_config *cfg = rg_config();
	struct rg_dns_packet p = {};
	struct rg_dns_scratch *s = rg_dns_buf();
	struct rg_dns_ctx c = { .skb = skb };
	__u16 qtype = 0;
	__u8 head[12];

	if (rg_dns_message(skb, true, cfg, s, &p, head))
		return 1;
	/* A response (QR 1) to a standard query (opcode 0); anything else on
	 * port 53 is not an answer this guard reads. */
	if ((head[2] & 0xf8) != 0x80)
		return 1;
	struct rg_dns_record *rec = &s->rec;
	struct rg_dns_state *st = &s->st;
	__u32 after = rg_dns_question(&c, head, s, &qtype);
	struct rg_dns_query_key key = {};
	struct rg_who who = { .cgroup_id = bpf_skb_cgroup_id(skb) };
	__u32 status;

	rec->address_count = rec->addresses_total = 0;
	rec->ttl = 0;
	rec->patterns = rec->name_hash = 0;
	if (!after) {
		rec->name_len = 0;
		rec->name[0] = 0;
		status = RG_DNS_MALFORMED;
	} else {
		rg_dns_match_name(s, true);
		rg_dns_query_key(skb, &p, rg_be16(head), &key);
		struct rg_dns_query *q = bpf_map_lookup_elem(&rg_dns_queries, &key);
		if (!q || q->name_hash != st->hash || q->qtype != qtype) {
			status = RG_DNS_NO_QUERY;
		} else {
			who.pid = q->tgid;
			/* One answer per query: a second one (forged, or a copy) finds none. */
			bpf_map_delete_elem(&rg_dns_queries, &key);
			if (!rg_dns_trusted(p.server, p.family))
				status = RG_DNS_UNTRUSTED_SERVER;
			else
				status = RG_DNS_COUNTED;
		}
		rec->patterns = st->patterns;
		rec->name_hash = st->hash;
	}
	if (status == RG_DNS_COUNTED) {
		st->pos = after;
		st->left = rg_be16(head + 6);
		st->in_name = 1;
		st->count = st->total = st->min_ttl = 0;
		st->now = bpf_ktime_get_boot_ns();
		st->min_ttl_ns = cfg->dns_min_ttl_ns;
		st->max_ttl_ns = cfg->dns_max_ttl_ns;
		if (st->left)
			bpf_loop(RG_DNS_ANSWER_STEPS, rg_dns_answer_step, &c, 0);
		__u32 count = st->count;
		if (count)
			bpf_loop(count, rg_dns_copy_address, NULL, 0);
		rec->address_count = count;
		rec->addresses_total = st->total;
		rec->ttl = st->min_ttl;
		__u64 name_hash = st->hash;
		bpf_map_update_elem(&rg_names, &name_hash, (struct rg_dns_name *)rec->name, BPF_ANY);
	}
	rg_claim(rec, RG_KIND_DNS_ANSWER, false, &who);
	__builtin_memcpy(rec->server, p.server, RG_ADDR_LEN);
	rec->server_family = p.family;
	rec->server_port = p.server_port;
	rec->protocol = p.protocol;
	rec->qtype = qtype;
	rec->rcode = head[3] & 0xf;
	rec->status = status;
	rec->pad = 0;
	__u32 name_len = rec->name_len;
	if (name_len > RG_DNS_NAME_LEN - 1)
		name_len = RG_DNS_NAME_LEN - 1;
	rg_send(rec, RG_KIND_DNS_ANSWER, offsetof(struct rg_dns_record, name) + name_len + 1);
	return 1;
}

/* The host patterns an egress destination carries, and the name it was
 * answered for: none for an address no counted answer named, or whose
 * answers have run out. */
static __always_inline __u64 rg_resolved_patterns(const __u8 *addr, __u32 family, __u64 *name_hash)
{
	struct rg_resolved_key key = { .family = family };

	__builtin_memcpy(key.addr, addr, RG_ADDR_LEN);
	struct rg_resolved_value *v = bpf_map_lookup_elem(&rg_resolved, &key);
	if (!v || v->expires_ns <= bpf_ktime_get_boot_ns())
		return 0;
	*name_hash = v->name_hash;
	return v->patterns;
}
