/* The ring consumer: drains the ring buffer (and the fanotify file judge's
 * queue) into batches, on a rhythm that keeps batches large and no record
 * waiting much longer than max_latency_ms. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include "tracer.h"

/* The epoll set's entries, told apart by their data; nothing reads it back,
 * as every wake-up drains both. The ring's keeps what libbpf registered it
 * with: its index among the ring buffer's rings, the first and only one. */
enum wake_source { WAKE_RING = 0, WAKE_FILE_JUDGE = 1 };

static int handle_record(void *ctx, void *data, size_t len);

static int map_ring_positions(struct rg_tracer *t, char *err, size_t errlen)
{
	int fd = t->shared_fds[SHARED_EVENTS];

	t->page_size = sysconf(_SC_PAGESIZE);
	t->consumer_page = mmap(NULL, t->page_size, PROT_READ, MAP_SHARED, fd, 0);
	if (t->consumer_page == MAP_FAILED) {
		t->consumer_page = NULL;
		return rg_fail(err, errlen, -errno, "mapping the ring buffer's consumer position");
	}
	t->producer_page = mmap(NULL, t->page_size, PROT_READ, MAP_SHARED, fd, t->page_size);
	if (t->producer_page == MAP_FAILED) {
		t->producer_page = NULL;
		return rg_fail(err, errlen, -errno, "mapping the ring buffer's producer position");
	}
	return 0;
}

int rg_ring_open(struct rg_tracer *t, char *err, size_t errlen)
{
	int ret;

	t->ring = ring_buffer__new(t->shared_fds[SHARED_EVENTS], handle_record, t, NULL);
	if (!t->ring)
		return rg_fail(err, errlen, -errno, "opening ring buffer %s", rg_shared_map_names[SHARED_EVENTS]);
	t->epoll_fd = ring_buffer__epoll_fd(t->ring);
	/* Edge-triggered: the ring's epoll then reports only the wake-ups the BPF
	 * side forces past the fill threshold, not "some data is there", so a
	 * consumer polling in a loop is not handed a few records per call. */
	struct epoll_event ring_event = { .events = EPOLLIN | EPOLLET, .data.fd = WAKE_RING };
	if (epoll_ctl(t->epoll_fd, EPOLL_CTL_MOD, t->shared_fds[SHARED_EVENTS], &ring_event))
		return rg_fail(err, errlen, -errno, "making the ring buffer's wake-up edge-triggered");
	if (t->judge) {
		struct epoll_event judge_event = { .events = EPOLLIN, .data.fd = WAKE_FILE_JUDGE };
		if (epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, rg_file_judge_wake_fd(t->judge), &judge_event))
			return rg_fail(err, errlen, -errno, "watching the file judge's queue");
	}
	if ((ret = map_ring_positions(t, err, errlen)))
		return ret;
	t->ncpus = libbpf_num_possible_cpus();
	t->percpu = calloc(t->ncpus > 0 ? t->ncpus : 1, sizeof(struct rg_counters));
	/* Room for the batch limit plus the judge's decisions and a loss notice
	 * past it (batch_has_room_for_two). */
	t->out.w.cap = (size_t)t->opts.batch_limit * 512 + 4 * RG_MAX_ENCODED_RECORD;
	t->out.w.buf = malloc(t->out.w.cap);
	t->out.rows = calloc(t->opts.batch_limit + 4, sizeof(*t->out.rows));
	t->out.table = calloc(t->opts.batch_limit + 4, sizeof(*t->out.table));
	if (t->ncpus <= 0 || !t->percpu || !t->out.w.buf || !t->out.rows || !t->out.table)
		return rg_fail(err, errlen, -ENOMEM, "allocating the consumer's buffers");
	/* Forks and exits nobody asked for only feed the process table; an
	 * exec is kept as an event either way (the table reads its details). */
	t->out.table_only = (1ULL << RG_KIND_PROCESS_FORK | 1ULL << RG_KIND_PROCESS_EXIT) & ~t->opts.wanted_mask;
	return 0;
}

void rg_ring_close(struct rg_tracer *t)
{
	if (t->ring)
		ring_buffer__free(t->ring);
	if (t->consumer_page)
		munmap(t->consumer_page, t->page_size);
	if (t->producer_page)
		munmap(t->producer_page, t->page_size);
	free(t->out.w.buf);
	free(t->out.rows);
	free(t->out.table);
	free(t->percpu);
}

/* Returned by the ring's callback: ring_buffer__consume stops there and
 * returns it, the records after it left for the next batch. */
#define RG_STOP_BATCH (-ENOBUFS)

/* A msgpack batch starts with an array32 header (0xdd, then the count
 * big-endian), written in place once the count is known. */
#define ARRAY32_HEADER_LEN 5

static void write_array32_header(unsigned char *buf, unsigned int count)
{
	struct mp_writer header = { .buf = buf, .cap = ARRAY32_HEADER_LEN };

	mp_byte(&header, 0xdd);
	mp_be32(&header, count);
}

static int take_record(struct rg_tracer *t, const void *data, size_t len);

/* Whether the batch takes two more events: one of the judge's decisions and
 * the ring's record it goes ahead of. */
static int batch_has_room_for_two(struct rg_tracer *t)
{
	return t->out.count + 2 < t->opts.batch_limit && t->out.w.cap - t->out.w.len >= 3 * RG_MAX_ENCODED_RECORD;
}

/* Encodes the judge's decisions made up to ts first: the stream stays in
 * time order (a decoy's open before the sends it taints), as far as the
 * batch has room for them and the record that follows. */
static void take_judged_until(struct rg_tracer *t, unsigned long long ts)
{
	while (t->judged_pos < t->judged_count && t->judged[t->judged_pos].hdr.timestamp_ns <= ts &&
	       batch_has_room_for_two(t))
		take_record(t, &t->judged[t->judged_pos++], sizeof(t->judged[0]));
}

static int handle_record(void *ctx, void *data, size_t len)
{
	struct rg_tracer *t = ctx;

	t->bytes += len;
	if (t->judged_pos < t->judged_count && len >= sizeof(struct rg_header))
		take_judged_until(t, ((const struct rg_header *)data)->timestamp_ns);
	return take_record(t, data, len);
}

/* Encodes one record into the batch; RG_STOP_BATCH once the batch is full. */
static int take_record(struct rg_tracer *t, const void *data, size_t len)
{
	if (rg_encode_record(&t->enc, &t->out, data, len) == 1) {
		unsigned int kind = ((const struct rg_header *)data)->kind;
		if (!(t->opts.wanted_mask >> kind & 1))
			t->batch_unwanted++;
	}
	/* The record is consumed either way; stop while room remains for one
	 * more (forks and exits that only feed the process table take a table
	 * entry and no event). */
	if (t->out.count >= t->opts.batch_limit || t->out.table_count >= t->opts.batch_limit ||
	    t->out.w.cap - t->out.w.len < RG_MAX_ENCODED_RECORD)
		return RG_STOP_BATCH;
	return 0;
}

static void refill_judged(struct rg_tracer *t)
{
	if (t->judge && t->judged_pos == t->judged_count) {
		t->judged_pos = 0;
		t->judged_count = rg_file_judge_take(t->judge, t->judged, RG_JUDGED_BATCH);
	}
}

/* The judge's decisions left after the ring's records, while the batch has room. */
static void take_judged(struct rg_tracer *t)
{
	for (refill_judged(t); !t->backlog && t->judged_pos < t->judged_count; refill_judged(t))
		t->backlog = take_record(t, &t->judged[t->judged_pos++], sizeof(t->judged[0])) == RG_STOP_BATCH;
}

/* A "lost" notice for what was lost since the last one, if anything was. */
static void check_lost(struct rg_tracer *t)
{
	unsigned long long total[RG_KIND_SLOTS] = {}, delta[RG_KIND_SLOTS], sum = 0;

	if (rg_tracer_read_lost(t, total))
		return;
	for (int k = 0; k < RG_KIND_SLOTS; k++) {
		delta[k] = total[k] - t->lost_seen[k];
		sum += delta[k];
	}
	if (!sum)
		return;
	memcpy(t->lost_seen, total, sizeof(total));
	rg_encode_lost(&t->enc, &t->out, delta, sum);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int drain(struct rg_tracer *t, long long now)
{
	refill_judged(t);
	int ret = ring_buffer__consume(t->ring);

	t->last_drain_ms = now;
	t->backlog = ret == RG_STOP_BATCH;
	if (ret < 0 && ret != RG_STOP_BATCH)
		return ret;
	if (t->judge)
		take_judged(t);
	if (t->out.w.cap - t->out.w.len >= RG_MAX_ENCODED_RECORD && t->out.count < t->opts.batch_limit + 4)
		check_lost(t);
	return 0;
}

/* Drains on a rhythm, not on every call: when the last drain left records
 * behind, when the BPF side forced a wake-up (the ring past its fill
 * threshold), when max_latency_ms has passed since the last drain, or when
 * the caller's timeout runs out. Batches stay large, and no record waits in
 * the ring much longer than max_latency_ms. */
static int poll_batch(struct rg_tracer *t, int timeout_ms, int columnar, struct rg_batch *out)
{
	long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct epoll_event ev;
	int ret;

	t->polls++;
	t->enc.realtime_offset_ns = rg_realtime_offset_ns();
	t->batch_unwanted = 0;
	t->out.count = 0;
	t->out.table_count = 0;
	t->out.columnar = columnar;
	t->out.raw = columnar;
	t->out.w.len = columnar ? 0 : ARRAY32_HEADER_LEN;
	for (;;) {
		long long now = now_ms();
		long long wait = t->backlog ? 0 : t->last_drain_ms + t->opts.max_latency_ms - now;

		if (deadline >= 0 && deadline - now < wait)
			wait = deadline - now;
		if (wait < 0)
			wait = 0;
		int woken = epoll_wait(t->epoll_fd, &ev, 1, (int)wait);
		if (woken < 0 && errno == EINTR)
			return -EINTR;
		now = now_ms();
		int timed_out = deadline >= 0 && now >= deadline;
		if (woken > 0 || t->backlog || now >= t->last_drain_ms + t->opts.max_latency_ms || timed_out) {
			if ((ret = drain(t, now)))
				return ret;
			/* A full batch ends the poll, events in it or not (forks and
			 * exits that only feed the process table fill it too). */
			if (t->out.count || t->backlog)
				break;
		}
		if (timed_out)
			break;
	}
	if (!columnar)
		write_array32_header(t->out.w.buf, t->out.count);
	out->data = t->out.w.buf;
	out->len = t->out.w.len;
	out->rows = columnar ? t->out.rows : NULL;
	out->count = t->out.count;
	out->unwanted = t->batch_unwanted;
	out->table = t->out.table;
	out->table_count = t->out.table_count;
	out->fresh_cgroup_count = out->stranger_count = 0;
	out->fresh_cgroups = t->fresh_cgroups;
	out->stranger_pids = t->stranger_pids;
	out->stranger_entities = t->stranger_entities;
	if (t->proc_table && t->out.table_count) {
		rg_proc_table_learn(t->proc_table, t->out.table, t->out.table_count, t->out.w.buf, columnar);
		out->fresh_cgroup_count = rg_proc_table_fresh_cgroups(t->proc_table, t->fresh_cgroups, RG_FRESH_CGROUPS);
		out->stranger_count = rg_proc_table_strangers(t->proc_table, t->stranger_pids, t->stranger_entities,
							      RG_FRESH_CGROUPS);
	}
	return t->out.count;
}

static long long thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int rg_tracer_poll(struct rg_tracer *t, int timeout_ms, int columnar, struct rg_batch *out)
{
	long long start = thread_cpu_ns();
	int ret = poll_batch(t, timeout_ms, columnar, out);

	t->poll_cpu_ns += thread_cpu_ns() - start;
	return ret;
}

void rg_tracer_set_proc_table(struct rg_tracer *t, struct rg_proc_table *pt)
{
	t->proc_table = pt;
}

int rg_tracer_epoll_fd(struct rg_tracer *t)
{
	return t->epoll_fd;
}

/* The same encoder on records from a buffer, [u32 length][record]..., as
 * the ring buffer's callback would have been handed them. */
int rg_encode_records(const unsigned char *records, size_t len, unsigned char *out, size_t cap,
		      size_t *out_len, unsigned long long *malformed)
{
	unsigned long long delivered[RG_KIND_SLOTS] = {};
	struct rg_encoder enc = { .realtime_offset_ns = 0, .delivered = delivered };
	struct rg_output o = { .w = { .buf = out, .len = ARRAY32_HEADER_LEN, .cap = cap } };
	unsigned int count = 0;
	size_t pos = 0;

	*out_len = 0;
	*malformed = 0;
	if (cap < o.w.len)
		return -ENOBUFS;
	while (pos + 4 <= len) {
		unsigned int n;
		memcpy(&n, records + pos, 4);
		pos += 4;
		if (n > len - pos)
			n = len - pos;
		if (o.w.cap - o.w.len < RG_MAX_ENCODED_RECORD) {
			*malformed = enc.malformed;
			return -ENOBUFS;
		}
		count += rg_encode_record(&enc, &o, records + pos, n);
		pos += n;
	}
	write_array32_header(out, count);
	*out_len = o.w.len;
	*malformed = enc.malformed;
	return count;
}
