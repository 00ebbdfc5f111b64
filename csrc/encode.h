/* The batch encoder: ring-buffer records in, msgpack event maps out, in the
 * shape runtimeguard.schema.Event decodes. */
#ifndef RG_ENCODE_H
#define RG_ENCODE_H

#include "msgpack.h"
#include "events.h"

/* Room one encoded record may take at most (exec: argv and path, escaped). */
#define RG_MAX_ENCODED_RECORD 8192

struct rg_encoder {
	long long realtime_offset_ns; /* CLOCK_REALTIME - CLOCK_BOOTTIME */
	unsigned long long *delivered; /* RG_KIND_SLOTS counters */
	unsigned long long malformed;
};

/* Returns 1 when the record became an event, 0 when it was skipped as malformed. */
int rg_encode_record(struct rg_encoder *enc, struct mp_writer *w, const void *data, size_t len);
/* A "lost" notice for records the ring buffer could not take. */
void rg_encode_lost(struct rg_encoder *enc, struct mp_writer *w, const unsigned long long *lost_delta,
		    unsigned long long total);

#endif
