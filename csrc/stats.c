/* What a tracer delivered and lost, for rg_tracer_stats and the ring
 * consumer's "lost" notices. */
#include <errno.h>
#include <string.h>

#include <bpf/bpf.h>

#include "tracer.h"

/* Decisions the file judge's queue could not hold count as lost too. */
static void add_judge_lost(struct rg_tracer *t, unsigned long long *total)
{
	unsigned long long lost[RG_KIND_SLOTS];

	if (!t->judge)
		return;
	rg_file_judge_lost(t->judge, lost);
	for (int k = 0; k < RG_KIND_SLOTS; k++)
		total[k] += lost[k];
}

int rg_tracer_read_lost(struct rg_tracer *t, unsigned long long total[RG_KIND_SLOTS])
{
	unsigned int zero = 0;

	if (bpf_map_lookup_elem(t->shared_fds[SHARED_COUNTERS], &zero, t->percpu))
		return -errno;
	for (int c = 0; c < t->ncpus; c++)
		for (int k = 0; k < RG_KIND_SLOTS; k++)
			total[k] += t->percpu[c].lost[k];
	add_judge_lost(t, total);
	return 0;
}

void rg_tracer_stats(struct rg_tracer *t, struct rg_stats *out)
{
	unsigned long long cons = *(volatile unsigned long *)t->consumer_page;
	unsigned long long prod = *(volatile unsigned long *)t->producer_page;

	memset(out, 0, sizeof(*out));
	memcpy(out->delivered, t->delivered, sizeof(out->delivered));
	/* Loss as the kernel counts it now, reported in the stream or not yet. */
	if (rg_tracer_read_lost(t, out->lost))
		memcpy(out->lost, t->lost_seen, sizeof(out->lost));
	if (t->judge)
		rg_file_judge_counts(t->judge, &out->file_judge_asked, &out->file_judge_denied, &out->file_judge_marks,
				     &out->file_judge_pre_content_marks);
	out->malformed = t->enc.malformed;
	out->bytes = t->bytes;
	out->polls = t->polls;
	out->poll_cpu_ns = t->poll_cpu_ns;
	out->ring_size = t->opts.ring_bytes;
	out->ring_used = prod - cons;
}
