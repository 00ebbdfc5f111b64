/* The process table's store: what exec and fork events say about processes,
 * each process's versions in time order, learned by the consumer as it
 * drains the ring, so an exec costs Python nothing when it happens.
 * runtimeguard.processes builds a Process from a version when an event's
 * workload is first read, and adds versions of its own (a process read from
 * /proc, credentials or a name an event showed) as msgpack Processes.
 *
 * Two open-addressing hash tables (entity id -> process, pid -> entity id),
 * linear probing with backward-shift deletion; a ring of exited processes,
 * the oldest forgotten past keep_exited, except those a process in the
 * table names as its parent: an exited ancestor is kept (parked off the
 * ring) while a descendant is, so a long-lived process keeps its ancestry.
 * When max_processes is reached a quarter goes: exited processes first,
 * then live ones (the oldest first: /proc still has those), parked
 * ancestors last. One mutex: tracers poll from their own threads
 * and events are read from any. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

struct version {
	long long since;
	struct rg_table_entry entry; /* as learned; a made version keeps only kind and pid */
	unsigned char *details;      /* an exec's encoded details, a made version's Process */
	unsigned int details_len;
};

struct process {
	unsigned long long entity;
	unsigned long long order; /* when first learned: the oldest are forgotten first */
	unsigned long long parent; /* the parent it names, when that was in the table (0: none) */
	unsigned int children;     /* processes in the table that name it as their parent */
	unsigned int pid;
	unsigned int count;
	unsigned int exited;
	unsigned int parked;       /* exited, kept off the ring while it has children */
	struct version versions[];
};

struct rg_proc_table {
	pthread_mutex_t lock;
	/* Counts learns that added a version: an answer cached while it held
	 * still holds (runtimeguard.processes reads it without the lock). */
	unsigned long long generation;
	unsigned int max_processes, keep_exited, max_versions;
	/* entity -> process */
	struct process **slots;
	unsigned int capacity, count; /* capacity: a power of two, at least twice max_processes */
	/* pid -> entity */
	unsigned int *pid_keys;
	unsigned long long *pid_entities;
	unsigned long long order;
	/* Exited processes, oldest first (a ring). */
	unsigned long long *exited;
	unsigned int exited_head, exited_count, exited_capacity;
	/* cgroups seen, and those new since the last look (the consumer names
	 * them while they exist). */
	unsigned long long *cgroups;
	unsigned int cgroup_capacity, cgroup_count;
	unsigned long long fresh_cgroups[RG_FRESH_CGROUPS];
	unsigned int fresh_count;
	/* Parents the table does not know (they predate the tracer): read from
	 * /proc by the consumer while they still run. */
	unsigned long long stranger_entities[RG_FRESH_CGROUPS];
	unsigned int stranger_pids[RG_FRESH_CGROUPS];
	unsigned int stranger_count;
};

static unsigned int hash64(unsigned long long x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return (unsigned int)x;
}

static unsigned int capacity_for(unsigned int n)
{
	unsigned int c = 64;

	while (c < 2 * n)
		c <<= 1;
	return c;
}

static void free_process(struct process *p)
{
	for (unsigned int i = 0; i < p->count; i++)
		free(p->versions[i].details);
	free(p);
}

void rg_proc_table_free(struct rg_proc_table *pt)
{
	if (!pt)
		return;
	for (unsigned int i = 0; pt->slots && i < pt->capacity; i++)
		if (pt->slots[i])
			free_process(pt->slots[i]);
	pthread_mutex_destroy(&pt->lock);
	free(pt->slots);
	free(pt->pid_keys);
	free(pt->pid_entities);
	free(pt->exited);
	free(pt->cgroups);
	free(pt);
}

struct rg_proc_table *rg_proc_table_new(unsigned int max_processes, unsigned int keep_exited,
					unsigned int max_versions)
{
	struct rg_proc_table *pt = calloc(1, sizeof(*pt));

	if (!pt)
		return NULL;
	pthread_mutex_init(&pt->lock, NULL);
	if (!max_processes || !max_versions)
		goto fail;
	pt->max_processes = max_processes;
	pt->keep_exited = keep_exited;
	pt->max_versions = max_versions;
	pt->capacity = capacity_for(max_processes);
	pt->slots = calloc(pt->capacity, sizeof(*pt->slots));
	pt->pid_keys = calloc(pt->capacity, sizeof(*pt->pid_keys));
	pt->pid_entities = calloc(pt->capacity, sizeof(*pt->pid_entities));
	pt->exited_capacity = keep_exited + keep_exited / 4 + 2;
	pt->exited = calloc(pt->exited_capacity, sizeof(*pt->exited));
	pt->cgroup_capacity = capacity_for(RG_MAX_CGROUPS);
	pt->cgroups = calloc(pt->cgroup_capacity, sizeof(*pt->cgroups));
	if (!pt->slots || !pt->pid_keys || !pt->pid_entities || !pt->exited || !pt->cgroups)
		goto fail;
	return pt;
fail:
	rg_proc_table_free(pt);
	return NULL;
}

/* ---- entity -> process ---- */

static unsigned int slot_of(const struct rg_proc_table *pt, unsigned long long entity)
{
	unsigned int mask = pt->capacity - 1, i = hash64(entity) & mask;

	while (pt->slots[i] && pt->slots[i]->entity != entity)
		i = (i + 1) & mask;
	return i;
}

static struct process *lookup(const struct rg_proc_table *pt, unsigned long long entity)
{
	return entity ? pt->slots[slot_of(pt, entity)] : NULL;
}

/* ---- pid -> entity ---- */

static unsigned int pid_slot_of(const struct rg_proc_table *pt, unsigned int pid)
{
	unsigned int mask = pt->capacity - 1, i = hash64(pid) & mask;

	while (pt->pid_keys[i] && pt->pid_keys[i] != pid)
		i = (i + 1) & mask;
	return i;
}

static void pid_set(struct rg_proc_table *pt, unsigned int pid, unsigned long long entity)
{
	unsigned int i = pid_slot_of(pt, pid);

	pt->pid_keys[i] = pid;
	pt->pid_entities[i] = entity;
}

/* Removes slot i of a linear-probing table, shifting back the entries after
 * it that probed past it (no tombstones). */
#define BACKWARD_SHIFT(pt, i, occupied, home, move, clear)                                             \
	do {                                                                                           \
		unsigned int mask_ = (pt)->capacity - 1, hole_ = (i), j_ = (i);                         \
		for (;;) {                                                                             \
			j_ = (j_ + 1) & mask_;                                                         \
			if (!(occupied))                                                               \
				break;                                                                 \
			unsigned int k_ = (home) & mask_;                                              \
			/* Movable when its home is not cyclically within (hole, j]. */                \
			if ((hole_ <= j_) ? (k_ <= hole_ || k_ > j_) : (k_ <= hole_ && k_ > j_)) {     \
				move;                                                                  \
				hole_ = j_;                                                            \
			}                                                                              \
		}                                                                                      \
		j_ = hole_;                                                                            \
		clear;                                                                                 \
	} while (0)

static void pid_drop(struct rg_proc_table *pt, unsigned int pid, unsigned long long entity)
{
	unsigned int i = pid_slot_of(pt, pid);

	if (!pt->pid_keys[i] || pt->pid_entities[i] != entity)
		return; /* the pid names another process since */
	BACKWARD_SHIFT(pt, i, pt->pid_keys[j_], hash64(pt->pid_keys[j_]),
		       (pt->pid_keys[hole_] = pt->pid_keys[j_], pt->pid_entities[hole_] = pt->pid_entities[j_]),
		       (pt->pid_keys[j_] = 0, pt->pid_entities[j_] = 0));
}

static void exited_push(struct rg_proc_table *pt, unsigned long long entity);

/* p no longer names its parent: a parked parent left childless goes back
 * on the ring, to be forgotten in turn. */
static void unlink_parent(struct rg_proc_table *pt, struct process *p)
{
	struct process *parent = p->parent ? lookup(pt, p->parent) : NULL;

	p->parent = 0;
	if (!parent || !parent->children)
		return;
	if (!--parent->children && parent->parked) {
		parent->parked = 0;
		exited_push(pt, parent->entity);
	}
}

static void forget(struct rg_proc_table *pt, unsigned long long entity)
{
	unsigned int i = slot_of(pt, entity);
	struct process *p = pt->slots[i];

	if (!p)
		return;
	unlink_parent(pt, p);
	i = slot_of(pt, entity); /* unlinking may have forgotten others (a parent unparked onto a full ring): slots move */
	pid_drop(pt, p->pid, entity);
	BACKWARD_SHIFT(pt, i, pt->slots[j_], hash64(pt->slots[j_]->entity), pt->slots[hole_] = pt->slots[j_],
		       pt->slots[j_] = NULL);
	pt->count--;
	free_process(p);
}

static int by_order(const void *a, const void *b)
{
	const unsigned long long *x = a, *y = b;

	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The table is full: a quarter goes. Exited processes first (oldest
 * first), then live ones (/proc still has them), parked ancestors last (no
 * one else remembers them). */
static void forget_oldest(struct rg_proc_table *pt)
{
	unsigned long long(*all)[2] = malloc(sizeof(*all) * pt->count);
	unsigned int n = 0;

	if (!all)
		return;
	for (unsigned int i = 0; i < pt->capacity; i++)
		if (pt->slots[i]) {
			const struct process *p = pt->slots[i];
			unsigned long long rank = p->parked ? 2 : p->exited ? 0 : 1;
			all[n][0] = rank << 62 | p->order;
			all[n][1] = p->entity;
			n++;
		}
	qsort(all, n, sizeof(*all), by_order);
	for (unsigned int i = 0; i < n / 4 + 1 && i < n; i++)
		forget(pt, all[i][1]);
	free(all);
}

static struct process *process_for(struct rg_proc_table *pt, unsigned long long entity, unsigned int pid)
{
	unsigned int i = slot_of(pt, entity);
	struct process *p = pt->slots[i];

	if (p)
		return p;
	if (pt->count >= pt->max_processes) {
		forget_oldest(pt);
		i = slot_of(pt, entity);
	}
	p = calloc(1, sizeof(*p) + pt->max_versions * sizeof(struct version));
	if (!p)
		return NULL;
	p->entity = entity;
	p->pid = pid;
	p->order = ++pt->order;
	pt->slots[i] = p;
	pt->count++;
	return p;
}

/* A version from since on; the same since learned twice (two tracers) is
 * kept once. Takes details (malloc'd) either way. */
static void add_version(struct rg_proc_table *pt, struct process *p, long long since,
			const struct rg_table_entry *entry, unsigned char *details, unsigned int details_len)
{
	unsigned int at = p->count;

	while (at && p->versions[at - 1].since > since) /* nearly always at the end */
		at--;
	if (at && p->versions[at - 1].since == since) {
		free(details);
		return;
	}
	if (p->count == pt->max_versions) {
		/* The oldest version goes: this one, if it is older than them all. */
		if (!at) {
			free(details);
			return;
		}
		free(p->versions[0].details);
		memmove(&p->versions[0], &p->versions[1], (p->count - 1) * sizeof(struct version));
		p->count--;
		at--;
	}
	__atomic_add_fetch(&pt->generation, 1, __ATOMIC_RELEASE);
	memmove(&p->versions[at + 1], &p->versions[at], (p->count - at) * sizeof(struct version));
	p->versions[at] = (struct version){ .since = since, .entry = *entry, .details = details,
					    .details_len = details_len };
	p->count++;
}

static void note_cgroup(struct rg_proc_table *pt, unsigned long long cgroup)
{
	unsigned int mask = pt->cgroup_capacity - 1, i = hash64(cgroup) & mask;

	if (!cgroup)
		return;
	while (pt->cgroups[i] && pt->cgroups[i] != cgroup)
		i = (i + 1) & mask;
	if (pt->cgroups[i])
		return;
	if (pt->cgroup_count >= RG_MAX_CGROUPS) {
		/* Seen so many: start over (a cgroup seen again is named again). */
		memset(pt->cgroups, 0, pt->cgroup_capacity * sizeof(*pt->cgroups));
		pt->cgroup_count = 0;
		i = hash64(cgroup) & mask;
	}
	pt->cgroups[i] = cgroup;
	pt->cgroup_count++;
	if (pt->fresh_count < RG_FRESH_CGROUPS)
		pt->fresh_cgroups[pt->fresh_count++] = cgroup;
}

static void note_parent(struct rg_proc_table *pt, unsigned int pid, unsigned long long entity)
{
	if (!entity || lookup(pt, entity) || pt->stranger_count >= RG_FRESH_CGROUPS)
		return;
	for (unsigned int i = 0; i < pt->stranger_count; i++)
		if (pt->stranger_entities[i] == entity)
			return;
	pt->stranger_pids[pt->stranger_count] = pid;
	pt->stranger_entities[pt->stranger_count++] = entity;
}

/* Onto the ring of exited processes, forgotten in chunks (not one per
 * exit) past keep_exited; one with children is parked instead. */
static void exited_push(struct rg_proc_table *pt, unsigned long long entity)
{
	pt->exited[(pt->exited_head + pt->exited_count) % pt->exited_capacity] = entity;
	pt->exited_count++;
	if (pt->exited_count <= pt->keep_exited + pt->keep_exited / 4 && pt->exited_count < pt->exited_capacity)
		return;
	while (pt->exited_count > pt->keep_exited) {
		unsigned long long oldest = pt->exited[pt->exited_head];
		pt->exited_head = (pt->exited_head + 1) % pt->exited_capacity;
		pt->exited_count--;
		struct process *p = lookup(pt, oldest);
		if (p && p->children)
			p->parked = 1;
		else
			forget(pt, oldest); /* may push a parent it unparks: the loop takes it too */
	}
}

static void mark_exited(struct rg_proc_table *pt, unsigned long long entity)
{
	struct process *p = lookup(pt, entity);

	if (!p || p->exited)
		return;
	p->exited = 1;
	exited_push(pt, entity);
}

static void learn_one(struct rg_proc_table *pt, const struct rg_table_entry *e, const unsigned char *details,
		      unsigned int details_len)
{
	if (e->kind == RG_KIND_PROCESS_EXIT) {
		mark_exited(pt, e->entity_id);
		return;
	}
	if (!e->entity_id)
		return;
	note_cgroup(pt, e->cgroup_id);
	note_parent(pt, e->parent_pid, e->parent_entity_id);
	struct process *p = process_for(pt, e->entity_id, e->pid);
	if (!p)
		return;
	unsigned char *copy = NULL;
	if (details_len) {
		copy = malloc(details_len);
		if (!copy)
			return;
		memcpy(copy, details, details_len);
	}
	add_version(pt, p, e->since, e, copy, details_len);
	p->pid = e->pid;
	pid_set(pt, e->pid, e->entity_id);
	if (e->parent_entity_id != p->parent && e->parent_entity_id != e->entity_id) {
		unlink_parent(pt, p);
		struct process *parent = lookup(pt, e->parent_entity_id);
		if (parent) {
			parent->children++;
			p->parent = parent->entity;
		}
	}
}

void rg_proc_table_learn(struct rg_proc_table *pt, const struct rg_table_entry *entries, unsigned int n,
			 const unsigned char *data, int raw)
{
	unsigned char encoded[RG_MAX_ENCODED_RECORD];

	pthread_mutex_lock(&pt->lock);
	for (unsigned int i = 0; i < n; i++) {
		const struct rg_table_entry *e = &entries[i];
		const unsigned char *details = data + e->details_offset;
		unsigned int len = e->details_len;
		if (raw && len) {
			/* The batch API keeps records: an exec's details are made here. */
			int made = rg_encode_details(details, len, e->at, encoded, sizeof(encoded));
			details = encoded;
			len = made > 0 ? made : 0;
		}
		learn_one(pt, e, details, len);
	}
	pthread_mutex_unlock(&pt->lock);
}

void rg_proc_table_touch(struct rg_proc_table *pt)
{
	__atomic_add_fetch(&pt->generation, 1, __ATOMIC_RELEASE);
}

int rg_proc_table_add(struct rg_proc_table *pt, unsigned long long entity, unsigned int pid, long long since,
		      const unsigned char *process, unsigned int len)
{
	struct rg_table_entry e = { .event = RG_NO_EVENT, .kind = RG_VERSION_MADE, .pid = pid,
				    .entity_id = entity, .since = since, .at = since };
	int ret = 0;

	if (!entity || !len || len > RG_MAX_ENCODED_RECORD)
		return -EINVAL;
	pthread_mutex_lock(&pt->lock);
	struct process *p = process_for(pt, entity, pid);
	unsigned char *copy = malloc(len);
	if (!p || !copy) {
		free(copy);
		ret = -ENOMEM;
	} else {
		memcpy(copy, process, len);
		add_version(pt, p, since, &e, copy, len);
		if (p->count == 1)
			pid_set(pt, pid, entity);
	}
	pthread_mutex_unlock(&pt->lock);
	return ret;
}

int rg_proc_table_find(struct rg_proc_table *pt, unsigned long long entity, long long ts, unsigned char *out,
		       size_t cap)
{
	int ret = -ENOENT;

	if (cap < sizeof(struct rg_proc_version))
		return -ENOBUFS;
	pthread_mutex_lock(&pt->lock);
	struct process *p = lookup(pt, entity);
	if (p && p->count) {
		unsigned int i = p->count - 1;
		while (i && p->versions[i].since > ts) /* before the first known: the earliest */
			i--;
		const struct version *v = &p->versions[i];
		struct rg_proc_version found = {
			.since = v->since,
			.until = i + 1 < p->count ? p->versions[i + 1].since : LLONG_MAX,
			.kind = v->entry.kind,
			.pid = v->entry.pid,
			.ns_pid = v->entry.ns_pid,
			.pid_ns = v->entry.pid_ns,
			.parent_pid = v->entry.parent_pid,
			.details_len = v->details_len,
			.parent_entity_id = v->entry.parent_entity_id,
			.at = v->entry.at,
			.boot_ns = v->entry.boot_ns,
		};
		if (v->details_len > cap - sizeof(found)) {
			ret = -ENOBUFS;
		} else {
			memcpy(out, &found, sizeof(found));
			memcpy(out + sizeof(found), v->details, v->details_len);
			ret = v->details_len;
		}
	}
	pthread_mutex_unlock(&pt->lock);
	return ret;
}

int rg_proc_table_since(struct rg_proc_table *pt, unsigned long long entity, long long ts, long long *since)
{
	int found = 0;

	pthread_mutex_lock(&pt->lock);
	struct process *p = lookup(pt, entity);
	if (p && p->count) {
		unsigned int i = p->count - 1;
		while (i && p->versions[i].since > ts)
			i--;
		*since = p->versions[i].since;
		found = 1;
	}
	pthread_mutex_unlock(&pt->lock);
	return found;
}

const unsigned long long *rg_proc_table_generation(struct rg_proc_table *pt)
{
	return &pt->generation;
}

unsigned long long rg_proc_table_by_pid(struct rg_proc_table *pt, unsigned int pid)
{
	unsigned long long entity;

	pthread_mutex_lock(&pt->lock);
	unsigned int i = pid ? pid_slot_of(pt, pid) : 0;
	entity = pid && pt->pid_keys[i] ? pt->pid_entities[i] : 0;
	pthread_mutex_unlock(&pt->lock);
	return entity;
}

unsigned int rg_proc_table_count(struct rg_proc_table *pt)
{
	unsigned int n;

	pthread_mutex_lock(&pt->lock);
	n = pt->count;
	pthread_mutex_unlock(&pt->lock);
	return n;
}

unsigned int rg_proc_table_strangers(struct rg_proc_table *pt, unsigned int *pids, unsigned long long *entities,
				     unsigned int cap)
{
	unsigned int n;

	pthread_mutex_lock(&pt->lock);
	n = pt->stranger_count < cap ? pt->stranger_count : cap;
	memcpy(pids, pt->stranger_pids, n * sizeof(*pids));
	memcpy(entities, pt->stranger_entities, n * sizeof(*entities));
	memmove(pt->stranger_pids, pt->stranger_pids + n, (pt->stranger_count - n) * sizeof(*pids));
	memmove(pt->stranger_entities, pt->stranger_entities + n, (pt->stranger_count - n) * sizeof(*entities));
	pt->stranger_count -= n;
	pthread_mutex_unlock(&pt->lock);
	return n;
}

unsigned int rg_proc_table_fresh_cgroups(struct rg_proc_table *pt, unsigned long long *out, unsigned int cap)
{
	unsigned int n;

	pthread_mutex_lock(&pt->lock);
	n = pt->fresh_count < cap ? pt->fresh_count : cap;
	memcpy(out, pt->fresh_cgroups, n * sizeof(*out));
	memmove(pt->fresh_cgroups, pt->fresh_cgroups + n, (pt->fresh_count - n) * sizeof(*out));
	pt->fresh_count -= n;
	pthread_mutex_unlock(&pt->lock);
	return n;
}
