/* The batch encoder: ring-buffer records in, events out: a msgpack array of
 * the shape runtimeguard.schema.Event decodes, or (columnar) fixed rows and
 * their details. */
#ifndef RG_ENCODE_H
#define RG_ENCODE_H

#include "msgpack.h"
#include "api.h"


struct rg_encoder {
	long long realtime_offset_ns; /* CLOCK_REALTIME - CLOCK_BOOTTIME */
	unsigned long long *delivered; /* RG_KIND_SLOTS counters */
	unsigned long long malformed;
	/* The last record's process and its entity id. */
	unsigned int last_pid;
	unsigned long long last_start, last_entity;
};

/* One batch being written. */
struct rg_output {
	struct mp_writer w;         /* events (msgpack), or the details of the rows (columnar) */
	int columnar;               /* rows, not msgpack events */
	int raw;                    /* keep each record, its details made when read (else: made now) */
	struct rg_event_row *rows;  /* columnar: one per event */
	unsigned int count;         /* events written */
	struct rg_table_entry *table; /* the process events (exec, fork, exit); NULL: not wanted. The
				       * caller keeps room for one more entry per record. */
	unsigned int table_count;
	unsigned long long table_only; /* kinds (bits) that feed the table and are not made into events */
	/* The event being written. */
	struct rg_event_row row;
	size_t details_at;
	size_t data_at;       /* just past the data map's header */
	unsigned int data_keys;
};

/* Returns 1 when the record became an event, 2 when it only fed the process
 * table (table_only), 0 when it was skipped as malformed. */
int rg_encode_record(struct rg_encoder *enc, struct rg_output *o, const void *data, size_t len);
/* A "lost" notice for records the ring buffer could not take. */
void rg_encode_lost(struct rg_encoder *enc, struct rg_output *o, const unsigned long long *lost_delta,
		    unsigned long long total);

#endif
