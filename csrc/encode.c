/* The batch encoder: turns ring-buffer records into events for Python.
 *
 * Field names match runtimeguard/schema.py. Kernel strings are not trusted to
 * be UTF-8: invalid bytes become U+FFFD so one odd path never fails a batch. */
#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netpacket/packet.h>

#include "api.h"
#include "encode.h"

const struct rg_kind_info rg_kinds[RG_KIND_SLOTS] = {
#define RG_KIND_INFO(NAME, id, name, size, decision) [id] = { name, size, decision },
	RG_EVENT_KINDS(RG_KIND_INFO)
#undef RG_KIND_INFO
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

/* Whether n bytes are all valid UTF-8 (NUL included: a sequence never spans one). */
static int utf8_valid(const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0;

	for (uint64_t word; i + 8 <= n; i += 8) {
		memcpy(&word, s + i, 8);
		if (word & 0x8080808080808080ULL)
			break;
	}
	while (i < n) {
		size_t k = utf8_sequence(s + i, n - i);
		if (!k)
			return 0;
		i += k;
	}
	return 1;
}

static size_t cstr_len(const char *s, size_t max)
{
	const char *end = memchr(s, 0, max);

	return end ? (size_t)(end - s) : max;
}

/* Kernel text: valid UTF-8 is copied, each invalid byte becomes U+FFFD.
 * Where that happens the record's fields also go out as bytes, under
 * "<name>_bytes" (runtimeguard.schema), so no name is lost or confused. */
static void mp_text_known(struct mp_writer *w, const char *text, size_t n, int valid)
{
	const unsigned char *s = (const unsigned char *)text;

	if (valid) {
		mp_str_raw(w, text, n);
		return;
	}
	/* Slow path: measure, then write. */
	size_t out = 0;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_sequence(s + i, n - i);
		out += k ? k : 3;
		i += k ? k : 1;
	}
	mp_str_header(w, out);
	for (size_t i = 0; i < n;) {
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

static void mp_text(struct mp_writer *w, const char *text, size_t n)
{
	mp_text_known(w, text, n, utf8_valid(text, n));
}

static void mp_cstr(struct mp_writer *w, const char *s, size_t max)
{
	mp_text(w, s, cstr_len(s, max));
}

static unsigned long long user_dev(unsigned long long kdev)
{
	/* Kernel dev_t is major << 20 | minor; stat(2) reports new_encode_dev(). */
	unsigned long long major = kdev >> 20, minor = kdev & 0xfffff;
	return (minor & 0xff) | (major << 8) | ((minor & ~0xffULL) << 12);
}

/* Each event is an array of the header fields nearly every reader wants
 * (id, timestamp, pid, tid), then its details: one msgpack blob Python
 * decodes only when they are read (runtimeguard.schema.Event and _Details).
 * In columnar mode (the batch API) the header goes into a fixed row, and the
 * record itself is kept beside it: its details are made only if the row's
 * event is asked for (rg_encode_details).
 *
 * Details: [seq, cpu, entity_id, cgroup_id, uid, euid, gid, comm, action,
 * data, target?], target for guard decisions only. Data keys go out
 * in the order of the Struct's fields (runtimeguard/schema.py): msgspec
 * matches each key against the next expected field first, so keys in order
 * cost one comparison each. tests/test_encoder.py checks the order. */

#define EVENT_FIELDS 5

/* Runs of records mostly come from one process: its entity id once per run. */
static unsigned long long entity_of(struct rg_encoder *enc, unsigned int pid, unsigned long long start)
{
	if (pid != enc->last_pid || start != enc->last_start) {
		enc->last_pid = pid;
		enc->last_start = start;
		enc->last_entity = rg_entity_id(pid, start);
	}
	return enc->last_entity;
}

static void mp_id(struct mp_writer *w, unsigned int id)
{
	if (id == RG_ID_UNKNOWN)
		mp_nil(w);
	else
		mp_uint(w, id);
}

static const char *const action_names[] = {
	[0] = "observed",
	[RG_ACTION_WOULD_BLOCK] = "would_block",
	[RG_ACTION_BLOCKED] = "blocked",
	[RG_ACTION_KILLED] = "killed",
	[RG_ACTION_REPORTED] = "observed",
};

static void fill_row(struct rg_encoder *enc, struct rg_event_row *row, const struct rg_header *h)
{
	row->timestamp = (long long)h->timestamp_ns + enc->realtime_offset_ns;
	row->seq = h->seq;
	row->entity_id = h->start_boottime ? entity_of(enc, h->pid, h->start_boottime) : 0;
	row->cgroup_id = h->cgroup_id;
	row->id = h->kind;
	row->cpu = h->cpu;
	row->pid = h->pid;
	row->tid = h->tid;
	row->uid = h->uid;
	row->gid = h->gid;
	row->result = 0;
}

/* Starts an event: its header (array prefix or row), then the details'
 * first fields up to the data map, which the caller writes next. */
static void event_begin(struct rg_encoder *enc, struct rg_output *o, const struct rg_header *h, unsigned int action,
			int with_target)
{
	struct mp_writer *w = &o->w;
	struct rg_event_row *row = &o->row;

	fill_row(enc, row, h);
	if (!o->columnar) {
		mp_array(w, EVENT_FIELDS);
		mp_uint(w, row->id);
		mp_int(w, row->timestamp);
		mp_uint(w, row->pid);
		mp_uint(w, row->tid);
		mp_byte(w, 0xc6); /* bin 32, its length patched by event_end */
		w->len += 4;
	}
	o->details_at = w->len;
	mp_array(w, with_target ? 11 : 10);
	mp_uint(w, row->seq);
	mp_uint(w, row->cpu);
	mp_uint(w, row->entity_id);
	mp_uint(w, row->cgroup_id);
	mp_id(w, h->uid);
	mp_id(w, h->euid);
	mp_id(w, h->gid);
	mp_cstr(w, h->comm, sizeof(h->comm));
	mp_name(w, action_names[action <= RG_ACTION_REPORTED ? action : 0]);
}

/* The data map, its size counted as its keys are written (key()) and
 * filled in by event_end: a map16 header, whatever the count. */
static void data_begin(struct rg_output *o, const char *type)
{
	struct mp_writer *w = &o->w;

	mp_byte(w, 0xde);
	w->len += 2;
	o->data_at = w->len;
	o->data_keys = 0;
	mp_str_raw(w, "type", 4);
	o->data_keys++;
	mp_name(w, type);
}

#define key(o, name) ((o)->data_keys++, mp_lit(&(o)->w, name))

static void event_end(struct rg_output *o)
{
	struct mp_writer *w = &o->w;
	uint32_t n = w->len - o->details_at;

	w->buf[o->data_at - 2] = o->data_keys >> 8;
	w->buf[o->data_at - 1] = o->data_keys;

	if (o->columnar) {
		o->row.details_offset = o->details_at;
		o->row.details_len = n;
		o->rows[o->count] = o->row;
	} else {
		unsigned char *at = w->buf + o->details_at - 4;
		for (int i = 0; i < 4; i++)
			at[i] = n >> (24 - 8 * i);
	}
	o->count++;
}

/* A decision's target, its fields only (runtimeguard.schema._Target):
 * [type, address, port, device, inode, path, pid, socket, protocol]; its
 * text is made in Python, when it is read, as every target's is. */
static void mp_target_head(struct mp_writer *w, const char *type, uint32_t fields)
{
	mp_array(w, fields);
	mp_name(w, type);
}

/* A path the kernel's dentry walk wrote backward into field (rg_path):
 * from start (clamped to the field's last byte) to its NUL. */
static const char *walked_path(const char *field, unsigned int start, size_t *len)
{
	size_t at = start < RG_PATH_LEN - 1 ? start : RG_PATH_LEN - 1;

	*len = cstr_len(field + at, RG_PATH_LEN - at);
	return field + at;
}

static const char *const fd_kind_names[] = {
#define RG_FD_KIND_NAME(NAME, id, name) [id] = name,
	RG_FD_KINDS(RG_FD_KIND_NAME)
#undef RG_FD_KIND_NAME
};

static const char *fd_kind_name(unsigned char kind)
{
	return kind < sizeof(fd_kind_names) / sizeof(fd_kind_names[0]) && fd_kind_names[kind] ? fd_kind_names[kind]
												: "other";
}

/* The context an exec's program starts in: who (login uid, saved and
 * filesystem uids, capabilities), where (terminal, working directory, what
 * descriptors 0-2 are), and the exec's own id. */
static void encode_exec_context(struct rg_output *o, const struct rg_exec_record *r)
{
	struct mp_writer *w = &o->w;
	static const char *const stdio_keys[3] = {"stdin", "stdout", "stderr"};

	if (r->auid != RG_ID_UNKNOWN) {
		key(o, "auid");
		mp_uint(w, r->auid);
	}
	key(o, "suid");
	mp_uint(w, r->suid);
	key(o, "fsuid");
	mp_uint(w, r->fsuid);
	key(o, "cap_effective");
	mp_uint(w, r->cap_effective);
	key(o, "cap_permitted");
	mp_uint(w, r->cap_permitted);
	for (int i = 0; i < 3; i++) {
		o->data_keys++;
		mp_name(w, stdio_keys[i]);
		mp_name(w, fd_kind_name(r->stdio[i]));
	}
	size_t tty_len = cstr_len(r->tty, sizeof(r->tty));
	if (tty_len) {
		/* A pty slave is "pts3" in the kernel, /dev/pts/3 on disk: named as
		 * the device is (os.ttyname without "/dev/"). */
		char name[RG_TTY_LEN + 1];
		size_t n = 0;
		if (tty_len > 3 && !memcmp(r->tty, "pts", 3) && r->tty[3] >= '0' && r->tty[3] <= '9') {
			memcpy(name, "pts/", 4);
			memcpy(name + 4, r->tty + 3, tty_len - 3);
			n = tty_len + 1;
		} else {
			memcpy(name, r->tty, tty_len);
			n = tty_len;
		}
		key(o, "tty");
		mp_text(w, name, n);
	}
	size_t cwd_len;
	const char *cwd = walked_path(r->cwd_path, r->cwd_path_start, &cwd_len);
	if (cwd_len) {
		int cwd_raw = !utf8_valid(cwd, cwd_len);
		key(o, "cwd");
		mp_text_known(w, cwd, cwd_len, !cwd_raw);
		key(o, "cwd_truncated");
		mp_bool(w, r->cwd_truncated);
		if (cwd_raw) {
			key(o, "cwd_bytes");
			mp_bin(w, cwd, cwd_len);
		}
	}
	/* Which identities the exec shows: environment names the kernel found,
	 * argv patterns found here. */
	char names[RG_IDENTITY_MAX][RG_IDENTITY_NAME_MAX + 8];
	size_t args_len = r->args_len < sizeof(r->args) ? r->args_len : sizeof(r->args);
	unsigned int found = rg_identity_names(r->identity_mask, r->args, args_len, names, RG_IDENTITY_MAX);
	if (found) {
		key(o, "identities");
		mp_array(w, found);
		for (unsigned int i = 0; i < found; i++)
			mp_name(w, names[i]);
	}
	if (r->env_scan_cut) {
		key(o, "environment_scan_truncated");
		mp_bool(w, 1);
	}
	if (r->retval == 0) {
		key(o, "secureexec");
		mp_bool(w, r->secureexec);
		char id[96];
		int n = snprintf(id, sizeof(id), "%s:%u:%llu", rg_boot_id(), r->hdr.pid, r->hdr.timestamp_ns);
		key(o, "exec_id");
		mp_str_raw(w, id, n > 0 && n < (int)sizeof(id) ? (size_t)n : 0);
	}
}

static void encode_exec(struct rg_encoder *enc, struct rg_output *o, const struct rg_exec_record *r)
{
	struct mp_writer *w = &o->w;
	/* argv: NUL-separated, the last argument possibly cut short. */
	size_t len = r->args_len < sizeof(r->args) ? r->args_len : sizeof(r->args);
	uint32_t argc = 0;
	for (size_t i = 0; i < len; i++)
		if (r->args[i] == 0)
			argc++;
	int tail = len > 0 && r->args[len - 1] != 0;
	size_t exe_len = cstr_len(r->filename, sizeof(r->filename)), comm_len = cstr_len(r->hdr.comm, RG_COMM_LEN);
	int exe_raw = !utf8_valid(r->filename, exe_len), argv_raw = !utf8_valid(r->args, len),
	    comm_raw = !utf8_valid(r->hdr.comm, comm_len);
	/* The executed file's path sits at the end of exe_path (written backward). */
	size_t resolved_len;
	const char *resolved_text = walked_path(r->exe_path, r->exe_path_start, &resolved_len);
	int resolved = r->retval == 0 && resolved_len > 0, resolved_raw = resolved && !utf8_valid(resolved_text, resolved_len);

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = r->retval;
	data_begin(o, "process_exec");
	key(o, "executable");
	mp_text_known(w, r->filename, exe_len, !exe_raw);
	key(o, "argv");
	mp_array(w, argc + tail);
	for (size_t start = 0, i = 0; i < len; i++) {
		if (r->args[i] == 0 || i == len - 1) {
			size_t end = r->args[i] == 0 ? i : i + 1;
			mp_text(w, r->args + start, end - start);
			start = i + 1;
		}
	}
	key(o, "comm");
	mp_text_known(w, r->hdr.comm, comm_len, !comm_raw);
	key(o, "uid");
	mp_uint(w, r->hdr.uid);
	key(o, "euid");
	mp_uint(w, r->hdr.euid);
	key(o, "gid");
	mp_uint(w, r->hdr.gid);
	key(o, "ppid");
	mp_uint(w, r->ppid);
	key(o, "parent_entity_id");
	mp_uint(w, r->parent_start_boottime ? rg_entity_id(r->ppid, r->parent_start_boottime) : 0);
	key(o, "start_time");
	mp_int(w, (long long)r->hdr.start_boottime + enc->realtime_offset_ns);
	key(o, "return_code");
	mp_int(w, r->retval);
	key(o, "executable_truncated");
	mp_bool(w, r->filename_truncated);
	key(o, "argv_truncated");
	mp_bool(w, r->args_truncated || tail);
	key(o, "ns_pid");
	mp_uint(w, r->ns_pid);
	key(o, "pid_ns");
	mp_uint(w, r->pid_ns);
	if (resolved) {
		key(o, "resolved_executable");
		mp_text_known(w, resolved_text, resolved_len, !resolved_raw);
		key(o, "resolved_executable_truncated");
		mp_bool(w, r->exe_path_truncated);
		key(o, "executable_device");
		mp_uint(w, user_dev(r->exe_dev));
		key(o, "executable_inode");
		mp_uint(w, r->exe_ino);
		key(o, "fileless");
		mp_bool(w, r->exe_unlinked);
	}
	if (exe_raw) {
		key(o, "executable_bytes");
		mp_bin(w, r->filename, exe_len);
	}
	if (argv_raw) {
		key(o, "argv_bytes");
		mp_array(w, argc + tail);
		for (size_t start = 0, i = 0; i < len; i++) {
			if (r->args[i] == 0 || i == len - 1) {
				size_t end = r->args[i] == 0 ? i : i + 1;
				mp_bin(w, r->args + start, end - start);
				start = i + 1;
			}
		}
	}
	if (comm_raw) {
		key(o, "comm_bytes");
		mp_bin(w, r->hdr.comm, comm_len);
	}
	if (resolved_raw) {
		key(o, "resolved_executable_bytes");
		mp_bin(w, resolved_text, resolved_len);
	}
	encode_exec_context(o, r);
	event_end(o);
}

static void encode_fork(struct rg_encoder *enc, struct rg_output *o, const struct rg_fork_record *r)
{
	struct mp_writer *w = &o->w;

	event_begin(enc, o, &r->hdr, 0, 0);
	data_begin(o, "process_fork");
	key(o, "child_pid");
	mp_uint(w, r->child_pid);
	key(o, "child_entity_id");
	mp_uint(w, rg_entity_id(r->child_pid, r->child_start_boottime));
	key(o, "child_start_time");
	mp_int(w, (long long)r->child_start_boottime + enc->realtime_offset_ns);
	key(o, "child_ns_pid");
	mp_uint(w, r->child_ns_pid);
	key(o, "child_pid_ns");
	mp_uint(w, r->child_pid_ns);
	event_end(o);
}

static void encode_exit(struct rg_encoder *enc, struct rg_output *o, const struct rg_exit_record *r)
{
	struct mp_writer *w = &o->w;
	unsigned int status = r->exit_code;
	int signal = status & 0x7f;

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = status;
	data_begin(o, "process_exit");
	key(o, "exit_code");
	if (signal)
		mp_nil(w);
	else
		mp_uint(w, (status >> 8) & 0xff);
	key(o, "signal");
	if (signal)
		mp_uint(w, signal);
	else
		mp_nil(w);
	key(o, "duration_ns");
	mp_uint(w, r->hdr.timestamp_ns > r->hdr.start_boottime ? r->hdr.timestamp_ns - r->hdr.start_boottime : 0);
	key(o, "core_dumped");
	mp_bool(w, status & 0x80);
	event_end(o);
}

static void encode_file(struct rg_encoder *enc, struct rg_output *o, const struct rg_file_record *r)
{
	struct mp_writer *w = &o->w;

	/* rg_encode_record checked that the text's lengths fit the record. */
	size_t path_len = r->path_len;
	const char *resolved_text = r->text + path_len;
	size_t resolved_len = r->resolved_len;
	int path_raw = !utf8_valid(r->text, path_len), resolved_raw = resolved_len && !utf8_valid(resolved_text, resolved_len);

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = r->retval;
	data_begin(o, "file_open");
	key(o, "path");
	mp_text_known(w, r->text, path_len, !path_raw);
	key(o, "flags");
	mp_uint(w, r->flags);
	key(o, "mode");
	mp_uint(w, r->mode);
	key(o, "result");
	mp_int(w, r->retval);
	key(o, "device");
	mp_uint(w, user_dev(r->dev));
	key(o, "inode");
	mp_uint(w, r->ino);
	key(o, "syscall");
	switch (r->syscall) {
	case RG_OPEN_OPEN: mp_lit(w, "open"); break;
	case RG_OPEN_OPENAT2: mp_lit(w, "openat2"); break;
	case RG_OPEN_CREAT: mp_lit(w, "creat"); break;
	default: mp_lit(w, "openat"); break;
	}
	key(o, "path_truncated");
	mp_bool(w, r->path_truncated);
	if (resolved_len) {
		key(o, "resolved_path");
		mp_text_known(w, resolved_text, resolved_len, !resolved_raw);
		key(o, "resolved_path_truncated");
		mp_bool(w, r->resolved_truncated);
	}
	if (path_raw) {
		key(o, "path_bytes");
		mp_bin(w, r->text, path_len);
	}
	if (resolved_raw) {
		key(o, "resolved_path_bytes");
		mp_bin(w, resolved_text, resolved_len);
	}
	event_end(o);
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

static void mp_address(struct mp_writer *w, unsigned int family, const unsigned char *addr)
{
	char text[INET6_ADDRSTRLEN] = "";

	inet_ntop(family == AF_INET6 ? AF_INET6 : AF_INET, addr, text, sizeof(text));
	mp_str_raw(w, text, strlen(text));
}

static void mp_family(struct mp_writer *w, unsigned int family)
{
	if (family == AF_INET6)
		mp_lit(w, "ipv6");
	else
		mp_lit(w, "ipv4");
}

static void encode_net(struct rg_encoder *enc, struct rg_output *o, const struct rg_net_record *r)
{
	struct mp_writer *w = &o->w;
	int send = r->hdr.kind == RG_KIND_NET_SENDMSG;

	int local = r->local_family == AF_INET || r->local_family == AF_INET6;

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = r->retval;
	data_begin(o, rg_kinds[r->hdr.kind].name);
	key(o, "family");
	mp_family(w, r->family);
	key(o, "protocol");
	mp_protocol(w, r->protocol);
	key(o, "address");
	mp_address(w, r->family, r->addr);
	key(o, "port");
	mp_uint(w, r->port);
	key(o, "result");
	mp_int(w, r->retval);
	key(o, "fd");
	mp_uint(w, r->fd);
	if (send) {
		key(o, "syscall");
		if (r->syscall == RG_SEND_SENDMSG)
			mp_lit(w, "sendmsg");
		else
			mp_lit(w, "sendto");
	}
	if (local) {
		key(o, "local_address");
		mp_address(w, r->local_family, r->local_addr);
		key(o, "local_port");
		mp_uint(w, r->local_port);
	}
	event_end(o);
}

static void encode_ptrace(struct rg_encoder *enc, struct rg_output *o, const struct rg_ptrace_record *r)
{
	struct mp_writer *w = &o->w;

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = r->retval;
	data_begin(o, "ptrace");
	key(o, "request");
	mp_int(w, r->request);
	key(o, "target_pid");
	mp_uint(w, r->target_pid);
	key(o, "result");
	mp_int(w, r->retval);
	event_end(o);
}

/* A probed function's call. Its probe is named by index: the caller that
 * attached it knows the symbol, file and offset. */
static void encode_call(struct rg_encoder *enc, struct rg_output *o, const struct rg_call_record *r)
{
	struct mp_writer *w = &o->w;
	unsigned int args = r->usdt ? r->arg_count : RG_CALL_ARGS;

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = r->retval;
	data_begin(o, "function_call");
	key(o, "probe");
	mp_uint(w, r->probe);
	key(o, "phase");
	if (r->is_return)
		mp_lit(w, "return");
	else
		mp_lit(w, "entry");
	key(o, "address");
	mp_uint(w, r->ip);
	key(o, "stack_id");
	mp_int(w, r->stack_id);
	if (r->is_return) {
		key(o, "result");
		mp_int(w, r->retval);
	} else {
		if (args > RG_CALL_ARGS)
			args = RG_CALL_ARGS;
		key(o, "arguments");
		mp_array(w, args);
		for (unsigned int i = 0; i < args; i++)
			mp_uint(w, r->args[i]);
	}
	if (r->data_len || r->data_size) {
		key(o, "data");
		mp_bin(w, r->data, r->data_len);
		key(o, "data_size");
		mp_uint(w, r->data_size);
		if (r->data_truncated) {
			key(o, "data_truncated");
			mp_bool(w, 1);
		}
	}
	event_end(o);
}

static const char *const dns_statuses[] = {
	[RG_DNS_COUNTED] = "counted",
	[RG_DNS_NO_QUERY] = "no_query",
	[RG_DNS_UNTRUSTED_SERVER] = "untrusted_server",
	[RG_DNS_MALFORMED] = "malformed",
};

/* A DNS answer a guarded process received. Its name was checked in the
 * kernel (lower-case letters, digits, '-', '_' and dots only). */
static void encode_dns(struct rg_encoder *enc, struct rg_output *o, const struct rg_dns_record *r)
{
	struct mp_writer *w = &o->w;
	unsigned int count = r->address_count < RG_DNS_ADDRESSES ? r->address_count : RG_DNS_ADDRESSES;
	char type[16];

	event_begin(enc, o, &r->hdr, 0, 0);
	data_begin(o, "dns_answer");
	key(o, "name");
	mp_text(w, r->name, r->name_len);
	key(o, "query_type");
	if (r->qtype == 1)
		mp_lit(w, "A");
	else if (r->qtype == 28)
		mp_lit(w, "AAAA");
	else
		mp_str_raw(w, type, snprintf(type, sizeof(type), "TYPE%u", r->qtype));
	key(o, "server");
	mp_address(w, r->server_family, r->server);
	key(o, "server_port");
	mp_uint(w, r->server_port);
	key(o, "protocol");
	if (r->protocol == IPPROTO_TCP)
		mp_lit(w, "tcp");
	else
		mp_lit(w, "udp");
	key(o, "rcode");
	mp_uint(w, r->rcode);
	key(o, "status");
	mp_name(w, r->status >= RG_DNS_COUNTED && r->status <= RG_DNS_MALFORMED ? dns_statuses[r->status]
										   : "malformed");
	key(o, "addresses");
	mp_array(w, count);
	for (unsigned int i = 0; i < count; i++)
		mp_address(w, r->families[i], r->addresses[i]);
	key(o, "addresses_total");
	mp_uint(w, r->addresses_total);
	key(o, "ttl");
	mp_uint(w, r->ttl);
	event_end(o);
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

static void encode_memory(struct rg_encoder *enc, struct rg_output *o, const struct rg_memory_record *r)
{
	struct mp_writer *w = &o->w;

	event_begin(enc, o, &r->hdr, 0, 0);
	o->row.result = r->retval;
	data_begin(o, "process_memory");
	key(o, "method");
	mp_memory_method(w, r->method == RG_MEM_VM_READV || r->method == RG_MEM_VM_WRITEV ||
				    r->method == RG_MEM_PROC_ENVIRON_OPEN ? r->method : RG_MEM_PROC_MEM_OPEN);
	key(o, "target_pid");
	mp_uint(w, r->target_pid);
	key(o, "result");
	mp_int(w, r->retval);
	key(o, "flags");
	mp_uint(w, r->flags);
	event_end(o);
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

/* The fields every decision's data has, after its type. */
static void encode_decision_fields(struct rg_output *o, const struct rg_block_record *r, long long rule_index)
{
	struct mp_writer *w = &o->w;

	key(o, "rule_index");
	mp_int(w, rule_index);
	key(o, "blocked");
	mp_bool(w, r->action == RG_ACTION_BLOCKED || r->action == RG_ACTION_KILLED);
	key(o, "would_deny");
	mp_bool(w, r->action == RG_ACTION_WOULD_BLOCK);
	key(o, "comm");
	mp_cstr(w, r->hdr.comm, sizeof(r->hdr.comm));
}

/* Guard decisions: the common keys, data, action, and the target. */
static void encode_block(struct rg_encoder *enc, struct rg_output *o, const struct rg_block_record *r)
{
	struct mp_writer *w = &o->w;
	unsigned int kind = r->hdr.kind;
	int raw = r->rule_index == RG_RULE_RAW_SOCKET;
	int net = !raw && (kind == RG_KIND_CONNECT_DENIED || kind == RG_KIND_EXFIL_BLOCKED);
	int change = kind == RG_KIND_PROTECTED_FILE_CHANGED;
	int file = !raw && (kind == RG_KIND_OPEN_INODE || kind == RG_KIND_MIRAGE_TRAP || change);
	const char *raw_family = r->family == AF_INET ? "ipv4" : r->family == AF_INET6 ? "ipv6" : "packet";

	event_begin(enc, o, &r->hdr, r->action, 1);
	data_begin(o, rg_kinds[kind].name);
	encode_decision_fields(o, r, r->rule_index == RG_RULE_NET_DEFAULT ? -1 : r->rule_index == RG_RULE_TAINT ? -2
				     : r->rule_index == RG_RULE_PTRACE_DENY ? -3 : raw ? -4
				     : r->rule_index == RG_RULE_DNS_UNTRUSTED ? -6 : (long long)r->rule_index);
	if (raw || net) {
		key(o, "family");
		if (raw)
			mp_name(w, raw_family);
		else
			mp_family(w, r->family);
		key(o, "protocol");
		mp_protocol(w, r->protocol);
		key(o, "tainted");
		mp_bool(w, r->rule_index == RG_RULE_TAINT);
	} else if (file) {
		if (change) {
			/* Made by an LSM hook, before the change: refused, or let through in audit mode. */
			key(o, "operation");
			mp_change_operation(w, r->flags);
		}
		key(o, "device");
		mp_uint(w, user_dev(r->dev));
		key(o, "inode");
		mp_uint(w, r->ino);
		if (change) {
			key(o, "detected_not_prevented");
			mp_bool(w, 0);
		}
	} else {
		key(o, "method");
		mp_memory_method(w, r->flags);
	}
	if (raw) {
		const char *what = r->family == AF_PACKET ? "packet" : r->flags == SOCK_DGRAM ? "ping"
				   : r->flags == SOCK_RAW ? "raw" : "packet";
		mp_target_head(w, "socket", 9);
		for (int i = 0; i < 6; i++)
			mp_nil(w);
		mp_name(w, what);
		mp_uint(w, r->protocol);
	} else if (net) {
		/* The name hash, when the destination was answered for one, is
		 * the tenth field: the guard names the target from it. */
		mp_target_head(w, r->family == AF_INET6 ? "ipv6" : "ipv4", r->name_hash ? 10 : 3);
		mp_address(w, r->family, r->addr);
		mp_uint(w, r->port);
		if (r->name_hash) {
			for (int i = 0; i < 6; i++)
				mp_nil(w);
			mp_uint(w, r->name_hash);
		}
	} else if (file) {
		size_t path_len = strnlen(r->path, sizeof(r->path));
		mp_target_head(w, "inode", path_len ? 6 : 5);
		mp_nil(w);
		mp_nil(w);
		mp_uint(w, user_dev(r->dev));
		mp_uint(w, r->ino);
		if (path_len)
			mp_text(w, r->path, path_len);
	} else {
		mp_target_head(w, "pid", 7);
		for (int i = 0; i < 5; i++)
			mp_nil(w);
		mp_uint(w, r->target_pid);
	}
	event_end(o);
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

/* A namespace made or joined, or a mount: the operation and the kinds asked
 * for; its target ("unshare (user, mnt)") is made from them when read. */
static void encode_namespace(struct rg_encoder *enc, struct rg_output *o, const struct rg_block_record *r)
{
	struct mp_writer *w = &o->w;
	const char *operation = r->operation < sizeof(namespace_operations) / sizeof(namespace_operations[0]) &&
						namespace_operations[r->operation]
					? namespace_operations[r->operation]
					: "unshare";
	unsigned int kinds = 0;

	for (size_t i = 0; i < sizeof(namespace_kinds) / sizeof(namespace_kinds[0]); i++)
		kinds += (r->flags & namespace_kinds[i].flag) != 0;
	event_begin(enc, o, &r->hdr, r->action, 1);
	data_begin(o, "namespace_denied");
	encode_decision_fields(o, r, -5);
	key(o, "operation");
	mp_name(w, operation);
	key(o, "namespaces");
	mp_array(w, kinds);
	for (size_t i = 0; i < sizeof(namespace_kinds) / sizeof(namespace_kinds[0]); i++)
		if (r->flags & namespace_kinds[i].flag)
			mp_name(w, namespace_kinds[i].name);
	mp_target_head(w, "namespace", 1);
	event_end(o);
}

/* The shortest a record of kind may be: a file record's text only holds
 * what it uses. */
static size_t kind_min_size(unsigned int kind)
{
	switch (kind) {
	case RG_KIND_FILE_OPEN: return offsetof(struct rg_file_record, text);
	case RG_KIND_FUNCTION_CALL: return offsetof(struct rg_call_record, data);
	case RG_KIND_DNS_ANSWER: return offsetof(struct rg_dns_record, name) + 1;
	default: return rg_kinds[kind].record_size;
	}
}

/* Whether a record's text lengths stay within it (and their limits). */
static int text_fits(const struct rg_header *h, size_t len)
{
	if (h->kind == RG_KIND_FUNCTION_CALL) {
		const struct rg_call_record *r = (const void *)h;
		return r->data_len <= RG_CALL_DATA_MAX && offsetof(struct rg_call_record, data) + r->data_len <= len;
	}
	if (h->kind == RG_KIND_DNS_ANSWER) {
		const struct rg_dns_record *r = (const void *)h;
		return r->name_len < RG_DNS_NAME_LEN && offsetof(struct rg_dns_record, name) + r->name_len <= len;
	}
	if (h->kind != RG_KIND_FILE_OPEN)
		return 1;
	const struct rg_file_record *r = (const void *)h;
	return r->path_len < RG_PATH_LEN && r->resolved_len < RG_PATH_LEN &&
	       offsetof(struct rg_file_record, text) + r->path_len + r->resolved_len <= len;
}

/* The bytes of a record worth keeping: up to the end of its trailing path,
 * where it has one (most of a file record is an unused path buffer). */
static size_t record_used(const struct rg_header *h)
{
	size_t size = rg_kinds[h->kind].record_size;

	if (h->kind == RG_KIND_FILE_OPEN) {
		const struct rg_file_record *r = (const void *)h;
		return offsetof(struct rg_file_record, text) + r->path_len + r->resolved_len;
	}
	if (h->kind == RG_KIND_FUNCTION_CALL)
		return offsetof(struct rg_call_record, data) + ((const struct rg_call_record *)h)->data_len;
	if (h->kind == RG_KIND_DNS_ANSWER)
		return offsetof(struct rg_dns_record, name) + ((const struct rg_dns_record *)h)->name_len + 1;
	if (rg_kinds[h->kind].decision) {
		const struct rg_block_record *r = (const void *)h;
		return offsetof(struct rg_block_record, path) + strnlen(r->path, sizeof(r->path));
	}
	return size;
}

/* The batch API: the row, and the record itself (its used bytes), its
 * details made only if the row's event is asked for (rg_encode_details). */
static void keep_record(struct rg_encoder *enc, struct rg_output *o, const struct rg_header *h)
{
	struct mp_writer *w = &o->w;
	struct rg_event_row *row = &o->rows[o->count];
	size_t used = record_used(h);

	fill_row(enc, row, h);
	switch (h->kind) {
	case RG_KIND_PROCESS_EXEC: row->result = ((const struct rg_exec_record *)h)->retval; break;
	case RG_KIND_PROCESS_EXIT: row->result = ((const struct rg_exit_record *)h)->exit_code; break;
	case RG_KIND_FILE_OPEN: row->result = ((const struct rg_file_record *)h)->retval; break;
	case RG_KIND_NET_CONNECT:
	case RG_KIND_NET_SENDMSG: row->result = ((const struct rg_net_record *)h)->retval; break;
	case RG_KIND_PTRACE: row->result = ((const struct rg_ptrace_record *)h)->retval; break;
	case RG_KIND_PROCESS_MEMORY: row->result = ((const struct rg_memory_record *)h)->retval; break;
	case RG_KIND_FUNCTION_CALL: row->result = ((const struct rg_call_record *)h)->retval; break;
	}
	row->details_offset = w->len;
	row->details_len = used;
	memcpy(w->buf + w->len, h, used);
	w->len += used;
	o->count++;
}

/* The process table's entry for an exec, fork or exit: the event about to
 * be written, or (as_event 0) none. */
static void add_table_entry(struct rg_encoder *enc, struct rg_output *o, const struct rg_header *h, int as_event)
{
	struct rg_table_entry *e = &o->table[o->table_count];
	long long at = (long long)h->timestamp_ns + enc->realtime_offset_ns;
	unsigned long long entity = h->start_boottime ? entity_of(enc, h->pid, h->start_boottime) : 0;

	if (h->kind == RG_KIND_PROCESS_EXEC && ((const struct rg_exec_record *)h)->retval != 0)
		return; /* a failed exec changes nothing */
	memset(e, 0, sizeof(*e));
	e->event = as_event ? o->count : RG_NO_EVENT;
	e->kind = h->kind;
	e->cgroup_id = h->cgroup_id;
	e->at = at;
	if (h->kind == RG_KIND_PROCESS_FORK) {
		const struct rg_fork_record *r = (const void *)h;
		e->pid = r->child_pid;
		e->ns_pid = r->child_ns_pid;
		e->pid_ns = r->child_pid_ns;
		e->parent_pid = h->pid;
		e->entity_id = rg_entity_id(r->child_pid, r->child_start_boottime);
		e->since = (long long)r->child_start_boottime + enc->realtime_offset_ns;
		e->boot_ns = r->child_start_boottime;
		e->parent_entity_id = entity;
	} else {
		e->pid = h->pid;
		e->entity_id = entity;
		e->since = at;
		e->boot_ns = h->timestamp_ns;
		if (h->kind == RG_KIND_PROCESS_EXEC) {
			const struct rg_exec_record *r = (const void *)h;
			e->parent_pid = r->ppid;
			e->parent_entity_id = r->parent_start_boottime ? rg_entity_id(r->ppid, r->parent_start_boottime) : 0;
		}
	}
	o->table_count++;
}

/* An exec's entry learns where its details (or, kept raw, its record) went. */
static void table_entry_details(struct rg_output *o, unsigned int entries_before)
{
	struct rg_table_entry *e;

	if (o->table_count == entries_before)
		return;
	e = &o->table[o->table_count - 1];
	if (e->kind != RG_KIND_PROCESS_EXEC)
		return;
	if (o->raw) {
		e->details_offset = o->rows[o->count - 1].details_offset;
		e->details_len = o->rows[o->count - 1].details_len;
	} else {
		e->details_offset = o->details_at;
		e->details_len = o->w.len - o->details_at;
	}
}

int rg_encode_record(struct rg_encoder *enc, struct rg_output *o, const void *data, size_t len)
{
	const struct rg_header *h = data;

	if (len < sizeof(*h) || h->kind >= RG_KIND_SLOTS || !rg_kinds[h->kind].record_size || len < kind_min_size(h->kind) ||
	    !text_fits(h, len)) {
		enc->malformed++;
		return 0;
	}
	enc->delivered[h->kind]++;
	unsigned int entries_before = o->table_count;
	if (o->table && (h->kind == RG_KIND_PROCESS_EXEC || h->kind == RG_KIND_PROCESS_FORK ||
			 h->kind == RG_KIND_PROCESS_EXIT)) {
		int as_event = !(o->table_only >> h->kind & 1);
		add_table_entry(enc, o, h, as_event);
		if (!as_event)
			return 2;
	}
	if (o->raw) {
		keep_record(enc, o, h);
		table_entry_details(o, entries_before);
		return 1;
	}
	switch (h->kind) {
	case RG_KIND_PROCESS_EXEC: encode_exec(enc, o, data); break;
	case RG_KIND_PROCESS_FORK: encode_fork(enc, o, data); break;
	case RG_KIND_PROCESS_EXIT: encode_exit(enc, o, data); break;
	case RG_KIND_FILE_OPEN: encode_file(enc, o, data); break;
	case RG_KIND_NET_CONNECT:
	case RG_KIND_NET_SENDMSG: encode_net(enc, o, data); break;
	case RG_KIND_PTRACE: encode_ptrace(enc, o, data); break;
	case RG_KIND_PROCESS_MEMORY: encode_memory(enc, o, data); break;
	case RG_KIND_NAMESPACE_DENIED: encode_namespace(enc, o, data); break;
	case RG_KIND_FUNCTION_CALL: encode_call(enc, o, data); break;
	case RG_KIND_DNS_ANSWER: encode_dns(enc, o, data); break;
	default: encode_block(enc, o, data); break;
	}
	table_entry_details(o, entries_before);
	return 1;
}

int rg_encode_details(const void *record, size_t len, long long timestamp, unsigned char *out, size_t cap)
{
	unsigned long long delivered[RG_KIND_SLOTS] = {};
	struct rg_encoder enc = { .delivered = delivered };
	struct rg_event_row row;
	struct rg_output o = { .w = { .buf = out, .cap = cap }, .columnar = 1, .rows = &row };  /* not raw */
	unsigned char padded[sizeof(struct rg_call_record) + sizeof(struct rg_exec_record)] = {};
	const struct rg_header *h = record;

	/* Kept records may end before their path buffer does: pad them back. */
	if (len < sizeof(*h) || h->kind >= RG_KIND_SLOTS || !rg_kinds[h->kind].record_size || len > sizeof(padded))
		return -EINVAL;
	if (cap < RG_MAX_ENCODED_RECORD)
		return -ENOBUFS;
	memcpy(padded, record, len);
	/* The offset the consumer used for the row's timestamp, for the other times. */
	enc.realtime_offset_ns = timestamp - (long long)h->timestamp_ns;
	if (!rg_encode_record(&enc, &o, padded, rg_kinds[h->kind].record_size))
		return -EINVAL;
	return o.w.len;
}

void rg_encode_lost(struct rg_encoder *enc, struct rg_output *o, const unsigned long long *lost_delta,
		    unsigned long long total)
{
	struct mp_writer *w = &o->w;
	struct rg_header h = { .kind = RG_KIND_LOST, .uid = RG_ID_UNKNOWN, .euid = RG_ID_UNKNOWN,
			       .gid = RG_ID_UNKNOWN };
	struct timespec ts;
	uint32_t kinds = 0;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	h.timestamp_ns = ts.tv_sec * 1000000000ULL + ts.tv_nsec;
	for (int k = 0; k < RG_KIND_SLOTS; k++)
		kinds += lost_delta[k] != 0;
	event_begin(enc, o, &h, 0, 0);
	o->row.result = total;
	data_begin(o, "lost");
	key(o, "count");
	mp_uint(w, total);
	key(o, "by_kind");
	mp_map(w, kinds);
	for (int k = 0; k < RG_KIND_SLOTS; k++) {
		if (!lost_delta[k])
			continue;
		if (rg_kinds[k].name) {
			mp_name(w, rg_kinds[k].name);
		} else {
			char name[16];
			mp_str_raw(w, name, snprintf(name, sizeof(name), "kind-%d", k));
		}
		mp_uint(w, lost_delta[k]);
	}
	event_end(o);
}
