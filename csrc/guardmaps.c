/* The guard's policy maps: the guard compiles its policy into policy-level
 * values, and these calls make the kernel's keys and values of them, so
 * that the encodings the BPF programs rely on (address families, IPPROTO_*
 * numbers, IPv4-mapped addresses as IPv4, the kernel's dev_t, host-name
 * hashes) are written here, in C, next to the headers that define them. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "api.h"
#include "loader.h"
#include "namehash.h"

/* A host name's longest text (RFC 1035's 255 octets on the wire) and label. */
#define PATTERN_TEXT_MAX 253
#define PATTERN_LABEL_MAX 63
#define RG_STR_(x) #x
#define RG_STR(x) RG_STR_(x)

static int guard_map_fd(struct rg_tracer *t, const char *name, char *err, size_t errlen)
{
	struct bpf_object *obj = rg_tracer_sensor_object(t, "guard");
	struct bpf_map *map;

	if (!obj)
		return rg_fail(err, errlen, -EOPNOTSUPP, "the guard is not loaded (the tracer was opened without a "
							 "guard cgroup)");
	if (!(map = bpf_object__find_map_by_name(obj, name)))
		return rg_fail(err, errlen, -ENOENT, "the guard has no map %s", name);
	return bpf_map__fd(map);
}

static int guard_map_write(struct rg_tracer *t, const char *name, const void *key, const void *value, char *err,
			   size_t errlen)
{
	int fd = guard_map_fd(t, name, err, errlen);

	if (fd < 0)
		return fd;
	if (bpf_map_update_elem(fd, key, value, BPF_ANY))
		return rg_fail(err, errlen, -errno, "writing the guard's map %s", name);
	return 0;
}

/* An address as the socket hooks see it. */
struct address {
	unsigned short family; /* AF_INET or AF_INET6 */
	unsigned char bytes[RG_ADDR_LEN]; /* network order; IPv4 in the first 4 */
	int mapped;            /* an IPv4-mapped IPv6 address ::ffff:a.b.c.d */
};

/* text: an IPv4 or IPv6 address; 0, or -EINVAL for anything else. */
static int parse_address(const char *text, struct address *a)
{
	struct in6_addr v6;

	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, text, a->bytes) == 1) {
		a->family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, text, &v6) != 1)
		return -EINVAL;
	a->family = AF_INET6;
	memcpy(a->bytes, v6.s6_addr, sizeof(v6.s6_addr));
	a->mapped = IN6_IS_ADDR_V4MAPPED(&v6);
	return 0;
}

/* The IPv4 address an IPv4-mapped one carries: the hooks match
 * ::ffff:a.b.c.d as a.b.c.d, and the DNS programs file it so. */
static void fold_mapped(struct address *a)
{
	unsigned char v4[4];

	if (!a->mapped)
		return;
	memcpy(v4, a->bytes + 12, sizeof(v4));
	memset(a->bytes, 0, sizeof(a->bytes));
	memcpy(a->bytes, v4, sizeof(v4));
	a->family = AF_INET;
	a->mapped = 0;
}

/* A single address as rg_resolved and rg_dns_servers are keyed. */
static int address_key(const char *text, struct rg_resolved_key *key)
{
	struct address a;

	if (parse_address(text, &a))
		return -EINVAL;
	fold_mapped(&a);
	memset(key, 0, sizeof(*key));
	key->family = a.family;
	memcpy(key->addr, a.bytes, sizeof(key->addr));
	return 0;
}

static int rule_terms(unsigned int slot, const struct rg_guard_rule_terms *terms, struct rg_net_rule *r, char *err,
		      size_t errlen)
{
	static const unsigned short protocols[] = {
		[RG_GUARD_PROTO_ANY] = 0, [RG_GUARD_PROTO_TCP] = IPPROTO_TCP, [RG_GUARD_PROTO_UDP] = IPPROTO_UDP,
	};

	if (slot >= RG_MAX_NET_RULES)
		return rg_fail(err, errlen, -E2BIG, "network rule %u: the guard holds at most %d", slot,
			       RG_MAX_NET_RULES);
	if (terms->port_lo > terms->port_hi || terms->port_hi > 65535)
		return rg_fail(err, errlen, -EINVAL, "network rule %u: ports %u-%u are not a range within 0-65535",
			       slot, terms->port_lo, terms->port_hi);
	if (terms->protocol >= sizeof(protocols) / sizeof(protocols[0]))
		return rg_fail(err, errlen, -EINVAL, "network rule %u: protocol %u is not one of RG_GUARD_PROTO_ANY, "
			       "_TCP or _UDP", slot, terms->protocol);
	if (terms->action != RG_NET_ALLOW && terms->action != RG_NET_DENY)
		return rg_fail(err, errlen, -EINVAL, "network rule %u: action %u is neither RG_NET_ALLOW nor "
			       "RG_NET_DENY", slot, terms->action);
	memset(r, 0, sizeof(*r));
	r->port_lo = terms->port_lo;
	r->port_hi = terms->port_hi;
	r->protocol = protocols[terms->protocol];
	r->action = terms->action;
	r->rule_index = terms->rule_index;
	return 0;
}

int rg_guard_set_address_rule(struct rg_tracer *t, unsigned int slot, const char *address, unsigned int prefix_len,
			      const struct rg_guard_rule_terms *terms, char *err, size_t errlen)
{
	struct rg_net_rule r;
	struct address a;
	int ret;

	rg_log_reset();
	if ((ret = rule_terms(slot, terms, &r, err, errlen)))
		return ret;
	if (parse_address(address, &a))
		return rg_fail(err, errlen, -EINVAL, "network rule %u: %s is not an IPv4 or IPv6 address", slot,
			       address);
	unsigned int width = a.family == AF_INET ? 32 : 128;
	if (prefix_len > width)
		return rg_fail(err, errlen, -EINVAL, "network rule %u: prefix /%u is longer than an %s address's %u "
			       "bits", slot, prefix_len, a.family == AF_INET ? "IPv4" : "IPv6", width);
	/* Only a network within the mapped range is an IPv4 one; a shorter
	 * prefix covers IPv6 addresses the hooks see as IPv6. */
	if (a.mapped && prefix_len >= 96) {
		fold_mapped(&a);
		prefix_len -= 96;
	}
	r.family = a.family;
	r.prefix_len = prefix_len;
	for (unsigned int i = 0; i < RG_ADDR_LEN; i++) {
		unsigned int bits = prefix_len > 8 * i ? prefix_len - 8 * i : 0;
		r.addr[i] = a.bytes[i] & (bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits)));
	}
	return guard_map_write(t, "rg_net_rules", &slot, &r, err, errlen);
}

/* Whether text is a host pattern the DNS programs can match: lower case
 * labels of [a-z0-9_-], one to 63 bytes each, a leading "*." for a glob. */
static const char *host_pattern_flaw(const char *text)
{
	size_t len = strlen(text), label = 0;
	const char *p = text;

	if (!len)
		return "empty";
	if (len > PATTERN_TEXT_MAX)
		return "longer than " RG_STR(PATTERN_TEXT_MAX) " bytes";
	if (p[0] == '*' && p[1] == '.')
		p += 2;
	for (; *p; p++) {
		unsigned char c = *p;
		if (c == '.') {
			if (!label)
				return "an empty label";
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
			if (++label > PATTERN_LABEL_MAX)
				return "a label longer than " RG_STR(PATTERN_LABEL_MAX) " bytes";
		} else if (c >= 'A' && c <= 'Z') {
			return "upper case (names are matched in lower case)";
		} else {
			return c == '*' ? "a '*' that is not a leading \"*.\"" : "a byte other than a-z, 0-9, '-', '_' "
										    "and '.'";
		}
	}
	return label ? NULL : "an empty label";
}

int rg_guard_add_host_pattern(struct rg_tracer *t, const char *pattern, unsigned int bit, char *err, size_t errlen)
{
	struct rg_host_pattern value = {};
	const char *flaw;

	rg_log_reset();
	if ((flaw = host_pattern_flaw(pattern)))
		return rg_fail(err, errlen, -EINVAL, "host pattern %.260s: %s", pattern, flaw);
	if (bit >= RG_HOST_PATTERNS)
		return rg_fail(err, errlen, -E2BIG, "host pattern %s: bit %u; the guard holds at most %d patterns",
			       pattern, bit, RG_HOST_PATTERNS);
	value.bits = 1ULL << bit;
	value.len = strlen(pattern);
	memcpy(value.text, pattern, value.len);
	unsigned long long key = rg_name_hash(pattern, value.len);
	return guard_map_write(t, "rg_host_patterns", &key, &value, err, errlen);
}

int rg_guard_set_host_rule(struct rg_tracer *t, unsigned int slot, const char *pattern,
			   const struct rg_guard_rule_terms *terms, char *err, size_t errlen)
{
	struct rg_host_pattern known;
	struct rg_net_rule r;
	size_t len = strlen(pattern);
	unsigned long long key = rg_name_hash(pattern, len);
	int fd, ret;

	rg_log_reset();
	if ((ret = rule_terms(slot, terms, &r, err, errlen)))
		return ret;
	if ((fd = guard_map_fd(t, "rg_host_patterns", err, errlen)) < 0)
		return fd;
	/* The rule names its pattern's bit, the one the pattern was added with. */
	if (bpf_map_lookup_elem(fd, &key, &known)) {
		if (errno != ENOENT)
			return rg_fail(err, errlen, -errno, "network rule %u: reading host pattern %s", slot, pattern);
		known.len = 0;
	}
	if (known.len != len || memcmp(known.text, pattern, len) || !known.bits)
		return rg_fail(err, errlen, -ENOENT, "network rule %u: host pattern %.260s was not added first", slot,
			       pattern);
	r.pattern = __builtin_ctzll(known.bits) + 1;
	return guard_map_write(t, "rg_net_rules", &slot, &r, err, errlen);
}

int rg_guard_trust_dns_server(struct rg_tracer *t, const char *address, char *err, size_t errlen)
{
	struct rg_resolved_key key;
	unsigned char trusted = 1;

	rg_log_reset();
	if (address_key(address, &key))
		return rg_fail(err, errlen, -EINVAL, "DNS server %s is not an IPv4 or IPv6 address", address);
	return guard_map_write(t, "rg_dns_servers", &key, &trusted, err, errlen);
}

int rg_guard_allow_resolved(struct rg_tracer *t, const char *address, unsigned long long patterns, const char *name,
			    unsigned long long ttl_ns, char *err, size_t errlen)
{
	struct rg_resolved_key key;
	struct rg_resolved_value value = {};
	struct rg_dns_name text = {};
	struct timespec now;
	size_t len = strlen(name);
	int ret;

	rg_log_reset();
	if (address_key(address, &key))
		return rg_fail(err, errlen, -EINVAL, "resolved address %s is not an IPv4 or IPv6 address", address);
	if (!len || len >= RG_DNS_NAME_LEN)
		return rg_fail(err, errlen, -EINVAL, "resolved address %s: the name must be 1 to %d bytes, not %zu",
			       address, RG_DNS_NAME_LEN - 1, len);
	if (!patterns)
		return rg_fail(err, errlen, -EINVAL, "resolved address %s: no host pattern to open it to", address);
	/* The DNS programs' expiry clock: it counts suspended time too. */
	clock_gettime(CLOCK_BOOTTIME, &now);
	value.expires_ns = (unsigned long long)now.tv_sec * 1000000000ULL + now.tv_nsec + ttl_ns;
	value.patterns = patterns;
	value.name_hash = rg_name_hash(name, len);
	memcpy(text.text, name, len);
	/* The name first: a decision the address gets already finds it. */
	if ((ret = guard_map_write(t, "rg_names", &value.name_hash, &text, err, errlen)))
		return ret;
	return guard_map_write(t, "rg_resolved", &key, &value, err, errlen);
}

int rg_guard_answered_name(struct rg_tracer *t, unsigned long long name_hash, char *name, size_t size, char *err,
			   size_t errlen)
{
	struct rg_dns_name text;
	int fd;

	rg_log_reset();
	if (size < RG_DNS_NAME_LEN)
		return rg_fail(err, errlen, -ENOBUFS, "a name needs %d bytes of room, not %zu", RG_DNS_NAME_LEN, size);
	if ((fd = guard_map_fd(t, "rg_names", err, errlen)) < 0)
		return fd;
	if (bpf_map_lookup_elem(fd, &name_hash, &text))
		return errno == ENOENT ? 0 : rg_fail(err, errlen, -errno, "reading the name of hash %#llx", name_hash);
	text.text[RG_DNS_NAME_LEN - 1] = 0;
	snprintf(name, size, "%s", text.text);
	return 1;
}

int rg_guard_protect_inode(struct rg_tracer *t, unsigned long long st_dev, unsigned long long st_ino,
			   unsigned int kind, unsigned int rule_index, int is_dir, char *err, size_t errlen)
{
	struct rg_inode_key key = { .dev = rg_kernel_dev(st_dev), .ino = st_ino };
	struct rg_protected_value value = { .kind = kind, .rule_index = rule_index, .is_dir = !!is_dir };

	rg_log_reset();
	if (kind != RG_PROTECT_FILE && kind != RG_PROTECT_MIRAGE)
		return rg_fail(err, errlen, -EINVAL, "inode %llu on %u:%u: kind %u is neither RG_PROTECT_FILE nor "
			       "RG_PROTECT_MIRAGE", st_ino, major(st_dev), minor(st_dev), kind);
	return guard_map_write(t, "rg_protected", &key, &value, err, errlen);
}

int rg_guard_protect_pid(struct rg_tracer *t, unsigned int pid, unsigned int rule_index, char *err, size_t errlen)
{
	rg_log_reset();
	if (!pid)
		return rg_fail(err, errlen, -EINVAL, "protected pid 0 is no process");
	return guard_map_write(t, "rg_protected_pids", &pid, &rule_index, err, errlen);
}

int rg_guard_configure(struct rg_tracer *t, const struct rg_guard_config *cfg, char *err, size_t errlen)
{
	unsigned int zero = 0;

	rg_log_reset();
	if (cfg->mode != RG_MODE_AUDIT && cfg->mode != RG_MODE_ENFORCE)
		return rg_fail(err, errlen, -EINVAL, "guard mode %u is neither RG_MODE_AUDIT nor RG_MODE_ENFORCE",
			       cfg->mode);
	if (cfg->net_rule_count > RG_MAX_NET_RULES)
		return rg_fail(err, errlen, -E2BIG, "%u network rules; the guard holds at most %d",
			       cfg->net_rule_count, RG_MAX_NET_RULES);
	if (cfg->dns_min_ttl_ns > cfg->dns_max_ttl_ns)
		return rg_fail(err, errlen, -EINVAL, "DNS answers held at least %llu ns but at most %llu ns",
			       cfg->dns_min_ttl_ns, cfg->dns_max_ttl_ns);
	return guard_map_write(t, "rg_guard_cfg", &zero, cfg, err, errlen);
}

unsigned long long rg_host_name_hash(const char *text, size_t len)
{
	return rg_name_hash(text, len);
}
