/* The batch encoder: turns ring-buffer records into msgpack event maps.
 *
 * Field names match runtimeguard/schema.py. Kernel strings are not trusted to
 * be UTF-8: invalid bytes become U+FFFD so one odd path never fails a batch. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netpacket/packet.h>

#include "api.h"
#include "encode.h"

static const char *const kind_names[RG_KIND_SLOTS] = {
	[RG_KIND_PROCESS_EXEC] = "process_exec",
	[RG_KIND_PROCESS_FORK] = "process_fork",
	[RG_KIND_PROCESS_EXIT] = "process_exit",
	[RG_KIND_FILE_OPEN] = "file_open",
	[RG_KIND_NET_CONNECT] = "net_connect",
	[RG_KIND_NET_SENDMSG] = "net_sendmsg",
	[RG_KIND_PTRACE] = "ptrace",
	[RG_KIND_PROCESS_MEMORY] = "process_memory",
	[RG_KIND_LOST] = "lost",
	[RG_KIND_CONNECT_DENIED] = "connect_denied",
	[RG_KIND_EXFIL_BLOCKED] = "exfil_blocked",
	[RG_KIND_OPEN_INODE] = "open_inode",
	[RG_KIND_MIRAGE_TRAP] = "mirage_trap",
	[RG_KIND_PTRACE_DENIED] = "ptrace_denied",
	[RG_KIND_PROTECTED_FILE_CHANGED] = "protected_file_changed",
	[RG_KIND_NAMESPACE_DENIED] = "namespace_denied",
};

static const size_t kind_sizes[RG_KIND_SLOTS] = {
	[RG_KIND_PROCESS_EXEC] = sizeof(struct rg_exec_record),
	[RG_KIND_PROCESS_FORK] = sizeof(struct rg_fork_record),
	[RG_KIND_PROCESS_EXIT] = sizeof(struct rg_exit_record),
	[RG_KIND_FILE_OPEN] = sizeof(struct rg_file_record),
	[RG_KIND_NET_CONNECT] = sizeof(struct rg_net_record),
	[RG_KIND_NET_SENDMSG] = sizeof(struct rg_net_record),
	[RG_KIND_PTRACE] = sizeof(struct rg_ptrace_record),
	[RG_KIND_PROCESS_MEMORY] = sizeof(struct rg_memory_record),
	[RG_KIND_CONNECT_DENIED] = sizeof(struct rg_block_record),
	[RG_KIND_EXFIL_BLOCKED] = sizeof(struct rg_block_record),
	[RG_KIND_OPEN_INODE] = sizeof(struct rg_block_record),
	[RG_KIND_MIRAGE_TRAP] = sizeof(struct rg_block_record),
	[RG_KIND_PTRACE_DENIED] = sizeof(struct rg_block_record),
	[RG_KIND_PROTECTED_FILE_CHANGED] = sizeof(struct rg_block_record),
	[RG_KIND_NAMESPACE_DENIED] = sizeof(struct rg_block_record),
};

static void mp_name(struct mp_writer *w, const char *s) { mp_str_raw(w, s, strlen(s)); }

/* Length of the longest valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t need;
	unsigned int cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((need == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (need == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return need;
}

/* Kernel text: valid UTF-8 is copied, each invalid byte becomes U+FFFD. */
static void mp_text(struct mp_writer *w, const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0;

	while (i < n && s[i] < 0x80)
		i++;
	if (i == n) {
		mp_str_raw(w, text, n);
		return;
	}
	/* Slow path: measure, then write. */
	size_t out = 0;
	for (i = 0; i < n;) {
		size_t k = utf8_sequence(s + i, n - i);
		out += k ? k : 3;
		i += k ? k : 1;
	}
	mp_str_header(w, out);
	for (i = 0; i < n;) {
		size_t k = utf8_sequence(s + i, n - i);
		if (k) {
			memcpy(w->buf + w->len, s + i, k);
			w->len += k;
			i += k;
		} else {
			memcpy(w->buf + w->len, "\xef\xbf\xbd", 3);
			w->len += 3;
			i++;
		}
	}
}

static void mp_cstr(struct mp_writer *w, const char *s, size_t max)
{
	mp_text(w, s, strnlen(s, max));
}

static unsigned long long user_dev(unsigned long long kdev)
{
	/* Kernel dev_t is major << 20 | minor; stat(2) reports new_encode_dev(). */
	unsigned long long major = kdev >> 20, minor = kdev & 0xfffff;
	return (minor & 0xff) | (major << 8) | ((minor & ~0xffULL) << 12);
}

/* Keys go out in the order of the Struct's fields (runtimeguard/schema.py):
 * msgspec matches each key against the next expected field first, so keys in
 * order cost one comparison each. tests/test_encoder.py checks the order. */

/* The event's map header, its first keys, and the "data" key: the caller
 * writes the data map, then encode_ids(). n_after: keys after the ids. */
static void encode_head(struct rg_encoder *enc, struct mp_writer *w, const struct rg_header *h, uint32_t n_after)
{
	mp_map(w, 10 + n_after);
	mp_lit(w, "timestamp");
	mp_int(w, (long long)h->timestamp_ns + enc->realtime_offset_ns);
	mp_lit(w, "id");
	mp_uint(w, h->kind);
	mp_lit(w, "name");
	mp_name(w, kind_names[h->kind]);
	mp_lit(w, "data");
}

static void encode_ids(struct mp_writer *w, const struct rg_header *h)
{
	mp_lit(w, "seq");
	mp_uint(w, h->seq);
	mp_lit(w, "cpu");
	mp_uint(w, h->cpu);
	mp_lit(w, "pid");
	mp_uint(w, h->pid);
	mp_lit(w, "tid");
	mp_uint(w, h->tid);
	mp_lit(w, "entity_id");
	mp_uint(w, h->start_boottime ? rg_entity_id(h->pid, h->start_boottime) : 0);
	mp_lit(w, "cgroup_id");
	mp_uint(w, h->cgroup_id);
}

static void encode_exec(struct rg_encoder *enc, struct mp_writer *w, const struct rg_exec_record *r)
{
	/* argv: NUL-separated, the last argument possibly cut short. */
	size_t len = r->args_len < sizeof(r->args) ? r->args_len : sizeof(r->args);
	uint32_t argc = 0;
	for (size_t i = 0; i < len; i++)
		if (r->args[i] == 0)
			argc++;
	int tail = len > 0 && r->args[len - 1] != 0;

	encode_head(enc, w, &r->hdr, 0);
	mp_map(w, 13);
	mp_lit(w, "type");
	mp_lit(w, "process_exec");
	mp_lit(w, "executable");
	mp_cstr(w, r->filename, sizeof(r->filename));
	mp_lit(w, "argv");
	mp_array(w, argc + tail);
	for (size_t start = 0, i = 0; i < len; i++) {
		if (r->args[i] == 0 || i == len - 1) {
			size_t end = r->args[i] == 0 ? i : i + 1;
			mp_text(w, r->args + start, end - start);
			start = i + 1;
		}
	}
	mp_lit(w, "comm");
	mp_cstr(w, r->comm, sizeof(r->comm));
	mp_lit(w, "uid");
	mp_uint(w, r->uid);
	mp_lit(w, "euid");
	mp_uint(w, r->euid);
	mp_lit(w, "gid");
	mp_uint(w, r->gid);
	mp_lit(w, "ppid");
	mp_uint(w, r->ppid);
	mp_lit(w, "parent_entity_id");
	mp_uint(w, r->parent_start_boottime ? rg_entity_id(r->ppid, r->parent_start_boottime) : 0);
	mp_lit(w, "start_time");
	mp_int(w, (long long)r->hdr.start_boottime + enc->realtime_offset_ns);
	mp_lit(w, "return_code");
	mp_int(w, r->retval);
	mp_lit(w, "executable_truncated");
	mp_bool(w, r->filename_truncated);
	mp_lit(w, "argv_truncated");
	mp_bool(w, r->args_truncated || tail);
	encode_ids(w, &r->hdr);
}

static void encode_fork(struct rg_encoder *enc, struct mp_writer *w, const struct rg_fork_record *r)
{
	encode_head(enc, w, &r->hdr, 0);
	mp_map(w, 4);
	mp_lit(w, "type");
	mp_lit(w, "process_fork");
	mp_lit(w, "child_pid");
	mp_uint(w, r->child_pid);
	mp_lit(w, "child_entity_id");
	mp_uint(w, rg_entity_id(r->child_pid, r->child_start_boottime));
	mp_lit(w, "child_start_time");
	mp_int(w, (long long)r->child_start_boottime + enc->realtime_offset_ns);
	encode_ids(w, &r->hdr);
}

static void encode_exit(struct rg_encoder *enc, struct mp_writer *w, const struct rg_exit_record *r)
{
	unsigned int status = r->exit_code;
	int signal = status & 0x7f;

	encode_head(enc, w, &r->hdr, 0);
	mp_map(w, 5);
	mp_lit(w, "type");
	mp_lit(w, "process_exit");
	mp_lit(w, "exit_code");
	if (signal)
		mp_nil(w);
	else
		mp_uint(w, (status >> 8) & 0xff);
	mp_lit(w, "signal");
	if (signal)
		mp_uint(w, signal);
	else
		mp_nil(w);
	mp_lit(w, "duration_ns");
	mp_uint(w, r->hdr.timestamp_ns > r->hdr.start_boottime ? r->hdr.timestamp_ns - r->hdr.start_boottime : 0);
	mp_lit(w, "core_dumped");
	mp_bool(w, status & 0x80);
	encode_ids(w, &r->hdr);
}

/* Decimal digits of v, written backwards ending at end; returns the start. */
static char *format_decimal(char *end, unsigned long long v)
{
	do {
		*--end = '0' + v % 10;
		v /= 10;
	} while (v);
	return end;
}

static void put(char **at, const char *s, size_t n)
{
	memcpy(*at, s, n);
	*at += n;
}

static void put_decimal(char **at, unsigned long long v)
{
	char digits[20], *end = digits + sizeof(digits), *start = format_decimal(end, v);
	put(at, start, end - start);
}

/* target_context of an inode: "<path> (inode <ino> on <major>:<minor>)",
 * "inode <ino> on <major>:<minor>" without a path. */
static void encode_inode_target(struct mp_writer *w, unsigned long long dev, unsigned long long ino,
				const char *path, size_t path_len)
{
	char formatted[RG_PATH_LEN + 96], *at = formatted;

	if (path_len) {
		put(&at, path, path_len);
		put(&at, " (", 2);
	}
	put(&at, "inode ", 6);
	put_decimal(&at, ino);
	put(&at, " on ", 4);
	put_decimal(&at, dev >> 20);
	*at++ = ':';
	put_decimal(&at, dev & 0xfffff);
	if (path_len)
		*at++ = ')';
	mp_lit(w, "target_context");
	mp_map(w, path_len ? 5 : 4);
	mp_lit(w, "type");
	mp_lit(w, "inode");
	mp_lit(w, "formatted");
	mp_text(w, formatted, at - formatted);
	mp_lit(w, "device");
	mp_uint(w, user_dev(dev));
	mp_lit(w, "inode");
	mp_uint(w, ino);
	if (path_len) {
		mp_lit(w, "path");
		mp_text(w, path, path_len);
	}
}

static void encode_file(struct rg_encoder *enc, struct mp_writer *w, const struct rg_file_record *r)
{
	size_t path_len = strnlen(r->path, sizeof(r->path));
	int opened = r->retval >= 0 && r->ino;

	encode_head(enc, w, &r->hdr, opened);
	mp_map(w, 9);
	mp_lit(w, "type");
	mp_lit(w, "file_open");
	mp_lit(w, "path");
	mp_text(w, r->path, path_len);
	mp_lit(w, "flags");
	mp_uint(w, r->flags);
	mp_lit(w, "mode");
	mp_uint(w, r->mode);
	mp_lit(w, "result");
	mp_int(w, r->retval);
	mp_lit(w, "device");
	mp_uint(w, user_dev(r->dev));
	mp_lit(w, "inode");
	mp_uint(w, r->ino);
	mp_lit(w, "syscall");
	switch (r->syscall) {
	case RG_OPEN_OPEN: mp_lit(w, "open"); break;
	case RG_OPEN_OPENAT2: mp_lit(w, "openat2"); break;
	case RG_OPEN_CREAT: mp_lit(w, "creat"); break;
	default: mp_lit(w, "openat"); break;
	}
	mp_lit(w, "path_truncated");
	mp_bool(w, r->path_truncated);
	encode_ids(w, &r->hdr);
	if (opened)
		encode_inode_target(w, r->dev, r->ino, r->path, path_len);
}

static void mp_protocol(struct mp_writer *w, unsigned int protocol)
{
	switch (protocol) {
	case 0: mp_nil(w); break;
	case IPPROTO_TCP: mp_lit(w, "tcp"); break;
	case IPPROTO_UDP: mp_lit(w, "udp"); break;
	case IPPROTO_ICMP: mp_lit(w, "icmp"); break;
	case IPPROTO_ICMPV6: mp_lit(w, "icmpv6"); break;
	case IPPROTO_SCTP: mp_lit(w, "sctp"); break;
	case IPPROTO_RAW: mp_lit(w, "raw"); break;
	case 262: mp_lit(w, "mptcp"); break;
	default: {
		char text[16];
		int n = snprintf(text, sizeof(text), "proto-%u", protocol);
		mp_str_raw(w, text, n);
	}
	}
}

struct net_text {
	char addr[INET6_ADDRSTRLEN];
	char formatted[INET6_ADDRSTRLEN + 16];
	size_t addr_len, formatted_len;
	int v6;
};

/* addr holds a sockaddr's bytes in network order: inet_ntop reads them as
 * such, so 127.1.2.3 never comes out reversed. */
static void format_net(struct net_text *t, unsigned int family, const unsigned char *addr, unsigned int port)
{
	t->v6 = family == AF_INET6;
	t->addr[0] = 0;
	inet_ntop(t->v6 ? AF_INET6 : AF_INET, addr, t->addr, sizeof(t->addr));
	t->addr_len = strlen(t->addr);
	t->formatted_len = snprintf(t->formatted, sizeof(t->formatted), t->v6 ? "[%s]:%u" : "%s:%u", t->addr, port);
}

static void encode_net_target(struct mp_writer *w, const struct net_text *t, unsigned int port)
{
	mp_lit(w, "target_context");
	mp_map(w, 4);
	mp_lit(w, "type");
	if (t->v6)
		mp_lit(w, "ipv6");
	else
		mp_lit(w, "ipv4");
	mp_lit(w, "formatted");
	mp_str_raw(w, t->formatted, t->formatted_len);
	mp_lit(w, "address");
	mp_str_raw(w, t->addr, t->addr_len);
	mp_lit(w, "port");
	mp_uint(w, port);
}

static void mp_family(struct mp_writer *w, int v6)
{
	if (v6)
		mp_lit(w, "ipv6");
	else
		mp_lit(w, "ipv4");
}

static void encode_net(struct rg_encoder *enc, struct mp_writer *w, const struct rg_net_record *r)
{
	struct net_text text;

	format_net(&text, r->family, r->addr, r->port);
	encode_head(enc, w, &r->hdr, 1);
	mp_map(w, r->hdr.kind == RG_KIND_NET_SENDMSG ? 8 : 7);
	mp_lit(w, "type");
	mp_name(w, kind_names[r->hdr.kind]);
	mp_lit(w, "family");
	mp_family(w, text.v6);
	mp_lit(w, "protocol");
	mp_protocol(w, r->protocol);
	mp_lit(w, "address");
	mp_str_raw(w, text.addr, text.addr_len);
	mp_lit(w, "port");
	mp_uint(w, r->port);
	mp_lit(w, "result");
	mp_int(w, r->retval);
	mp_lit(w, "fd");
	mp_uint(w, r->fd);
	if (r->hdr.kind == RG_KIND_NET_SENDMSG) {
		mp_lit(w, "syscall");
		if (r->syscall == RG_SEND_SENDMSG)
			mp_lit(w, "sendmsg");
		else
			mp_lit(w, "sendto");
	}
	encode_ids(w, &r->hdr);
	encode_net_target(w, &text, r->port);
}

static void encode_pid_target(struct mp_writer *w, unsigned int pid)
{
	char formatted[32], *at = formatted;

	put(&at, "pid ", 4);
	put_decimal(&at, pid);
	mp_lit(w, "target_context");
	mp_map(w, 3);
	mp_lit(w, "type");
	mp_lit(w, "pid");
	mp_lit(w, "formatted");
	mp_str_raw(w, formatted, at - formatted);
	mp_lit(w, "pid");
	mp_uint(w, pid);
}

static void encode_ptrace(struct rg_encoder *enc, struct mp_writer *w, const struct rg_ptrace_record *r)
{
	encode_head(enc, w, &r->hdr, 1);
	mp_map(w, 4);
	mp_lit(w, "type");
	mp_lit(w, "ptrace");
	mp_lit(w, "request");
	mp_int(w, r->request);
	mp_lit(w, "target_pid");
	mp_uint(w, r->target_pid);
	mp_lit(w, "result");
	mp_int(w, r->retval);
	encode_ids(w, &r->hdr);
	encode_pid_target(w, r->target_pid);
}

/* How a process's memory was reached; 0 (not a memory method) is plain ptrace. */
static void mp_memory_method(struct mp_writer *w, unsigned int method)
{
	switch (method) {
	case RG_MEM_VM_READV: mp_lit(w, "process_vm_readv"); break;
	case RG_MEM_VM_WRITEV: mp_lit(w, "process_vm_writev"); break;
	case RG_MEM_PROC_MEM_OPEN: mp_lit(w, "proc_mem_open"); break;
	case RG_MEM_PIDFD_GETFD: mp_lit(w, "pidfd_getfd"); break;
	case RG_MEM_PROC_ENVIRON_OPEN: mp_lit(w, "proc_environ_open"); break;
	case RG_MEM_CLONE_FILES: mp_lit(w, "clone_files"); break;
	default: mp_lit(w, "ptrace"); break;
	}
}

static void encode_memory(struct rg_encoder *enc, struct mp_writer *w, const struct rg_memory_record *r)
{
	encode_head(enc, w, &r->hdr, 1);
	mp_map(w, 5);
	mp_lit(w, "type");
	mp_lit(w, "process_memory");
	mp_lit(w, "method");
	mp_memory_method(w, r->method == RG_MEM_VM_READV || r->method == RG_MEM_VM_WRITEV ||
				    r->method == RG_MEM_PROC_ENVIRON_OPEN ? r->method : RG_MEM_PROC_MEM_OPEN);
	mp_lit(w, "target_pid");
	mp_uint(w, r->target_pid);
	mp_lit(w, "result");
	mp_int(w, r->retval);
	mp_lit(w, "flags");
	mp_uint(w, r->flags);
	encode_ids(w, &r->hdr);
	encode_pid_target(w, r->target_pid);
}

static void mp_change_operation(struct mp_writer *w, unsigned int operation)
{
	switch (operation) {
	case RG_CHANGE_DELETE: mp_lit(w, "delete"); break;
	case RG_CHANGE_MOVE: mp_lit(w, "move"); break;
	case RG_CHANGE_CREATE: mp_lit(w, "create"); break;
	case RG_CHANGE_ATTRIBUTES: mp_lit(w, "attributes"); break;
	default: mp_lit(w, "modify"); break;
	}
}

static void mp_action(struct mp_writer *w, unsigned int action)
{
	switch (action) {
	case RG_ACTION_WOULD_BLOCK: mp_lit(w, "would_block"); break;
	case RG_ACTION_BLOCKED: mp_lit(w, "blocked"); break;
	case RG_ACTION_KILLED: mp_lit(w, "killed"); break;
	default: mp_lit(w, "observed"); break;
	}
}

/* The fields every decision's data has, after its type. */
static void encode_decision_fields(struct mp_writer *w, const struct rg_block_record *r, long long rule_index)
{
	mp_lit(w, "rule_index");
	mp_int(w, rule_index);
	mp_lit(w, "blocked");
	mp_bool(w, r->action == RG_ACTION_BLOCKED || r->action == RG_ACTION_KILLED);
	mp_lit(w, "would_deny");
	mp_bool(w, r->action == RG_ACTION_WOULD_BLOCK);
	mp_lit(w, "comm");
	mp_cstr(w, r->comm, sizeof(r->comm));
}

/* Guard decisions: the common keys, data, action, and the target. */
static void encode_block(struct rg_encoder *enc, struct mp_writer *w, const struct rg_block_record *r)
{
	unsigned int kind = r->hdr.kind;
	int raw = r->rule_index == RG_RULE_RAW_SOCKET;
	int net = !raw && (kind == RG_KIND_CONNECT_DENIED || kind == RG_KIND_EXFIL_BLOCKED);
	int change = kind == RG_KIND_PROTECTED_FILE_CHANGED;
	int file = !raw && (kind == RG_KIND_OPEN_INODE || kind == RG_KIND_MIRAGE_TRAP || change);
	const char *raw_family = r->family == AF_INET ? "ipv4" : r->family == AF_INET6 ? "ipv6" : "packet";
	struct net_text text;

	if (net)
		format_net(&text, r->family, r->addr, r->port);
	encode_head(enc, w, &r->hdr, 2);
	mp_map(w, raw || net ? 8 : change ? 9 : file ? 7 : 6);
	mp_lit(w, "type");
	mp_name(w, kind_names[kind]);
	encode_decision_fields(w, r, r->rule_index == RG_RULE_NET_DEFAULT ? -1 : r->rule_index == RG_RULE_TAINT ? -2
				     : r->rule_index == RG_RULE_PTRACE_DENY ? -3 : raw ? -4 : (long long)r->rule_index);
	if (raw || net) {
		mp_lit(w, "family");
		if (raw)
			mp_name(w, raw_family);
		else
			mp_family(w, text.v6);
		mp_lit(w, "protocol");
		mp_protocol(w, r->protocol);
		mp_lit(w, "tainted");
		mp_bool(w, r->rule_index == RG_RULE_TAINT);
	} else if (file) {
		if (change) {
			/* Made by an LSM hook, before the change: refused, or let through in audit mode. */
			mp_lit(w, "operation");
			mp_change_operation(w, r->flags);
		}
		mp_lit(w, "device");
		mp_uint(w, user_dev(r->dev));
		mp_lit(w, "inode");
		mp_uint(w, r->ino);
		if (change) {
			mp_lit(w, "detected_not_prevented");
			mp_bool(w, 0);
		}
	} else {
		mp_lit(w, "method");
		mp_memory_method(w, r->flags);
	}
	encode_ids(w, &r->hdr);
	mp_lit(w, "action");
	mp_action(w, r->action);
	if (raw) {
		char formatted[64];
		const char *what = r->family == AF_PACKET ? "packet" : r->flags == SOCK_DGRAM ? "ping"
				   : r->flags == SOCK_RAW ? "raw" : "packet";
		int n = snprintf(formatted, sizeof(formatted), "%s socket (%s, protocol %u)", what, raw_family,
				 r->protocol);
		mp_lit(w, "target_context");
		mp_map(w, 2);
		mp_lit(w, "type");
		mp_lit(w, "socket");
		mp_lit(w, "formatted");
		mp_str_raw(w, formatted, n);
	} else if (net) {
		encode_net_target(w, &text, r->port);
	} else if (file) {
		encode_inode_target(w, r->dev, r->ino, r->path, strnlen(r->path, sizeof(r->path)));
	} else {
		encode_pid_target(w, r->target_pid);
	}
}

/* The namespace kinds, in CLONE_NEW* bit order, as the schema names them. */
static const struct {
	unsigned int flag;
	const char *name;
} namespace_kinds[] = {
	{ 0x00000080, "time" }, { 0x00020000, "mnt" },   { 0x02000000, "cgroup" }, { 0x04000000, "uts" },
	{ 0x08000000, "ipc" },  { 0x10000000, "user" }, { 0x20000000, "pid" },    { 0x40000000, "net" },
};

static const char *const namespace_operations[] = {
	[RG_NS_UNSHARE] = "unshare",	 [RG_NS_CLONE] = "clone",	  [RG_NS_CLONE3] = "clone3",
	[RG_NS_SETNS] = "setns",	 [RG_NS_MOUNT] = "mount",	  [RG_NS_MOVE_MOUNT] = "move_mount",
	[RG_NS_FSMOUNT] = "fsmount",	 [RG_NS_OPEN_TREE] = "open_tree", [RG_NS_MOUNT_SETATTR] = "mount_setattr",
	[RG_NS_PIVOT_ROOT] = "pivot_root",
};

/* A namespace made or joined, or a mount: the operation, the kinds asked
 * for, and a target that says both ("unshare (user, mnt)"). */
static void encode_namespace(struct rg_encoder *enc, struct mp_writer *w, const struct rg_block_record *r)
{
	const char *operation = r->operation < sizeof(namespace_operations) / sizeof(namespace_operations[0]) &&
						namespace_operations[r->operation]
					? namespace_operations[r->operation]
					: "unshare";
	char formatted[128], *at = formatted;
	unsigned int kinds = 0;

	for (size_t i = 0; i < sizeof(namespace_kinds) / sizeof(namespace_kinds[0]); i++)
		kinds += (r->flags & namespace_kinds[i].flag) != 0;
	put(&at, operation, strlen(operation));
	for (size_t i = 0, n = 0; i < sizeof(namespace_kinds) / sizeof(namespace_kinds[0]); i++) {
		if (!(r->flags & namespace_kinds[i].flag))
			continue;
		put(&at, n++ ? ", " : " (", 2);
		put(&at, namespace_kinds[i].name, strlen(namespace_kinds[i].name));
	}
	if (kinds)
		put(&at, ")", 1);
	encode_head(enc, w, &r->hdr, 2);
	mp_map(w, 7);
	mp_lit(w, "type");
	mp_lit(w, "namespace_denied");
	encode_decision_fields(w, r, -5);
	mp_lit(w, "operation");
	mp_name(w, operation);
	mp_lit(w, "namespaces");
	mp_array(w, kinds);
	for (size_t i = 0; i < sizeof(namespace_kinds) / sizeof(namespace_kinds[0]); i++)
		if (r->flags & namespace_kinds[i].flag)
			mp_name(w, namespace_kinds[i].name);
	encode_ids(w, &r->hdr);
	mp_lit(w, "action");
	mp_action(w, r->action);
	mp_lit(w, "target_context");
	mp_map(w, 2);
	mp_lit(w, "type");
	mp_lit(w, "namespace");
	mp_lit(w, "formatted");
	mp_str_raw(w, formatted, at - formatted);
}

int rg_encode_record(struct rg_encoder *enc, struct mp_writer *w, const void *data, size_t len)
{
	const struct rg_header *h = data;

	if (len < sizeof(*h) || h->kind >= RG_KIND_SLOTS || !kind_sizes[h->kind] || len < kind_sizes[h->kind]) {
		enc->malformed++;
		return 0;
	}
	switch (h->kind) {
	case RG_KIND_PROCESS_EXEC: encode_exec(enc, w, data); break;
	case RG_KIND_PROCESS_FORK: encode_fork(enc, w, data); break;
	case RG_KIND_PROCESS_EXIT: encode_exit(enc, w, data); break;
	case RG_KIND_FILE_OPEN: encode_file(enc, w, data); break;
	case RG_KIND_NET_CONNECT:
	case RG_KIND_NET_SENDMSG: encode_net(enc, w, data); break;
	case RG_KIND_PTRACE: encode_ptrace(enc, w, data); break;
	case RG_KIND_PROCESS_MEMORY: encode_memory(enc, w, data); break;
	case RG_KIND_NAMESPACE_DENIED: encode_namespace(enc, w, data); break;
	default: encode_block(enc, w, data); break;
	}
	enc->delivered[h->kind]++;
	return 1;
}

void rg_encode_lost(struct rg_encoder *enc, struct mp_writer *w, const unsigned long long *lost_delta,
		    unsigned long long total)
{
	struct rg_header h = { .kind = RG_KIND_LOST };
	struct timespec ts;
	uint32_t kinds = 0;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	h.timestamp_ns = ts.tv_sec * 1000000000ULL + ts.tv_nsec;
	for (int k = 0; k < RG_KIND_SLOTS; k++)
		kinds += lost_delta[k] != 0;
	encode_head(enc, w, &h, 0);
	mp_map(w, 3);
	mp_lit(w, "type");
	mp_lit(w, "lost");
	mp_lit(w, "count");
	mp_uint(w, total);
	mp_lit(w, "by_kind");
	mp_map(w, kinds);
	for (int k = 0; k < RG_KIND_SLOTS; k++) {
		if (!lost_delta[k])
			continue;
		if (kind_names[k]) {
			mp_name(w, kind_names[k]);
		} else {
			char name[16];
			mp_str_raw(w, name, snprintf(name, sizeof(name), "kind-%d", k));
		}
		mp_uint(w, lost_delta[k]);
	}
	encode_ids(w, &h);
}
