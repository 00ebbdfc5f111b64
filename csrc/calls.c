/* The calls sensor's probes: attaching uprobes and USDT probes to the files
 * they name, configuring them, and reading what the kernel counted (call
 * paths, stacks, per-probe state) and what the programs cost. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "api.h"
#include "loader.h"

static struct bpf_object *calls_object(struct rg_tracer *t, char *err, size_t errlen, int *code)
{
	struct bpf_object *obj = rg_tracer_sensor_object(t, "calls");

	*code = 0;
	if (!obj)
		*code = rg_fail(err, errlen, -EOPNOTSUPP, "the calls sensor is not loaded (the tracer was opened "
							  "without function_call events)");
	return obj;
}

static int calls_map_fd(struct rg_tracer *t, const char *name, char *err, size_t errlen)
{
	int code;
	struct bpf_object *obj = calls_object(t, err, errlen, &code);
	struct bpf_map *map;

	if (!obj)
		return code;
	if (!(map = bpf_object__find_map_by_name(obj, name)))
		return rg_fail(err, errlen, -ENOENT, "the calls sensor has no map %s", name);
	return bpf_map__fd(map);
}

static int probe_in_range(unsigned int probe, char *err, size_t errlen)
{
	if (probe >= RG_CALL_PROBES_MAX)
		return rg_fail(err, errlen, -E2BIG, "probe %u: at most %d probes", probe, RG_CALL_PROBES_MAX);
	return 0;
}

int rg_tracer_set_probe(struct rg_tracer *t, unsigned int probe, const struct rg_call_probe *config, char *err,
			size_t errlen)
{
	int probes, states, ret;
	/* A full bucket to start with. */
	struct rg_call_state state = { .tokens = (long long)config->burst * 1000000000LL };

	rg_log_reset();
	if ((ret = probe_in_range(probe, err, errlen)))
		return ret;
	if (config->capture_bytes > RG_CALL_DATA_MAX)
		return rg_fail(err, errlen, -EINVAL, "probe %u: capture of %u bytes, more than the %d a record holds",
			       probe, config->capture_bytes, RG_CALL_DATA_MAX);
	if (config->rate && (config->rate > 1000000000ULL || !config->burst || config->burst > 1000000ULL))
		return rg_fail(err, errlen, -EINVAL, "probe %u: rate %llu/s, burst %llu: the rate must be at most 10^9 "
			       "and the burst between 1 and 10^6", probe, config->rate, config->burst);
	if ((probes = calls_map_fd(t, "rg_call_probes", err, errlen)) < 0)
		return probes;
	if ((states = calls_map_fd(t, "rg_call_state", err, errlen)) < 0)
		return states;
	state.refilled_ns = 0;
	if (bpf_map_update_elem(states, &probe, &state, BPF_ANY) || bpf_map_update_elem(probes, &probe, config, BPF_ANY))
		return rg_fail(err, errlen, -errno, "probe %u: writing its configuration", probe);
	return 0;
}

static struct bpf_program *calls_program(struct rg_tracer *t, const char *name, char *err, size_t errlen, int *code)
{
	struct bpf_object *obj = calls_object(t, err, errlen, code);
	struct bpf_program *prog = obj ? bpf_object__find_program_by_name(obj, name) : NULL;

	if (obj && !prog)
		*code = rg_fail(err, errlen, -ENOENT, "the calls sensor has no program %s", name);
	return prog;
}

int rg_tracer_attach_uprobe(struct rg_tracer *t, unsigned int probe, const char *path, unsigned long long offset,
			    int is_return, int pid, char *err, size_t errlen)
{
	int code;
	struct bpf_program *prog;

	rg_log_reset();
	if ((code = probe_in_range(probe, err, errlen)))
		return code;
	if (!(prog = calls_program(t, is_return ? "rg_call_return" : "rg_call_entry", err, errlen, &code)))
		return code;
	LIBBPF_OPTS(bpf_uprobe_opts, opts, .bpf_cookie = RG_CALL_COOKIE(probe, !!is_return), .retprobe = !!is_return);
	struct bpf_link *link = bpf_program__attach_uprobe_opts(prog, pid, path, offset, &opts);
	if (!link)
		return rg_fail(err, errlen, -errno, "attaching a %s to %s at file offset 0x%llx",
			       is_return ? "uretprobe" : "uprobe", path, offset);
	return rg_tracer_keep_link(t, link, err, errlen);
}

int rg_tracer_attach_usdt(struct rg_tracer *t, unsigned int probe, const char *path, const char *provider,
			  const char *name, int pid, char *err, size_t errlen)
{
	int code;
	struct bpf_program *prog;

	rg_log_reset();
	if ((code = probe_in_range(probe, err, errlen)))
		return code;
	if (!(prog = calls_program(t, "rg_call_usdt", err, errlen, &code)))
		return code;
	LIBBPF_OPTS(bpf_usdt_opts, opts, .usdt_cookie = RG_CALL_COOKIE(probe, 0));
	struct bpf_link *link = bpf_program__attach_usdt(prog, pid, path, provider, name, &opts);
	if (!link)
		return rg_fail(err, errlen, -errno, "attaching USDT probe %s:%s in %s", provider, name, path);
	return rg_tracer_keep_link(t, link, err, errlen);
}

int rg_tracer_probe_state(struct rg_tracer *t, unsigned int probe, struct rg_call_state *out, char *err,
			  size_t errlen)
{
	int fd, ret;

	rg_log_reset();
	if ((ret = probe_in_range(probe, err, errlen)))
		return ret;
	if ((fd = calls_map_fd(t, "rg_call_state", err, errlen)) < 0)
		return fd;
	if (bpf_map_lookup_elem(fd, &probe, out))
		return rg_fail(err, errlen, -errno, "reading probe %u's state", probe);
	return 0;
}

int rg_tracer_call_paths(struct rg_tracer *t, struct rg_call_path_key *keys, struct rg_call_path_count *counts,
			 unsigned int cap, char *err, size_t errlen)
{
	struct rg_call_path_key key, next;
	unsigned int n = 0;
	int fd;

	rg_log_reset();
	if ((fd = calls_map_fd(t, "rg_call_paths", err, errlen)) < 0)
		return fd;
	/* A hash map walked while programs add to it: an entry added meanwhile
	 * may be missed this time, and is read the next. */
	for (int ret = bpf_map_get_next_key(fd, NULL, &next); ret == 0 && n < cap;
	     ret = bpf_map_get_next_key(fd, &key, &next)) {
		key = next;
		if (bpf_map_lookup_elem(fd, &key, &counts[n]) == 0)
			keys[n++] = key;
	}
	return n;
}

int rg_tracer_call_stack(struct rg_tracer *t, int stack_id, struct rg_stack_frame *frames, unsigned int cap,
			 char *err, size_t errlen)
{
	struct rg_stack_frame stack[RG_CALL_STACK_DEPTH];
	unsigned int n = 0;
	int fd;

	rg_log_reset();
	if ((fd = calls_map_fd(t, "rg_call_stacks", err, errlen)) < 0)
		return fd;
	if (stack_id < 0)
		return rg_fail(err, errlen, -EINVAL, "stack id %d: no stack was stored", stack_id);
	__u32 key = stack_id;
	if (bpf_map_lookup_elem(fd, &key, stack))
		return rg_fail(err, errlen, -errno, "reading stack %d", stack_id);
	/* The kernel zeroes the frames past the stack's end. */
	while (n < RG_CALL_STACK_DEPTH && n < cap && stack[n].status) {
		frames[n] = stack[n];
		n++;
	}
	return n;
}

/* BPF_ENABLE_STATS: the kernel times every program's runs while the
 * returned descriptor is open (its run_time_ns, run_cnt). */
int rg_enable_bpf_stats(char *err, size_t errlen)
{
	int fd;

	rg_log_reset();
	if ((fd = bpf_enable_stats(BPF_STATS_RUN_TIME)) < 0)
		return rg_fail(err, errlen, fd, "enabling BPF run-time statistics");
	return fd;
}

/* The memlock figure the kernel charges a map (its /proc fdinfo). */
static unsigned long long map_memlock(int fd)
{
	char path[64], line[128];
	unsigned long long bytes = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (!(f = fopen(path, "re")))
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "memlock: %llu", &bytes) == 1)
			break;
	fclose(f);
	return bytes;
}

int rg_tracer_program_stats(struct rg_tracer *t, const char *sensor, struct rg_program_stats *out, unsigned int cap,
			    char *err, size_t errlen)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	unsigned int n = 0;

	rg_log_reset();
	if (!(obj = rg_tracer_sensor_object(t, sensor)))
		return 0;
	bpf_object__for_each_program(prog, obj) {
		struct bpf_prog_info info = {};
		__u32 len = sizeof(info);
		int fd = bpf_program__fd(prog);

		if (fd < 0 || n >= cap)
			continue;
		if (bpf_obj_get_info_by_fd(fd, &info, &len))
			return rg_fail(err, errlen, -errno, "reading program %s's statistics", bpf_program__name(prog));
		memset(&out[n], 0, sizeof(out[n]));
		snprintf(out[n].name, sizeof(out[n].name), "%s", bpf_program__name(prog));
		out[n].run_time_ns = info.run_time_ns;
		out[n].run_count = info.run_cnt;
		out[n].recursion_misses = info.recursion_misses;
		n++;
	}
	return n;
}

unsigned long long rg_tracer_calls_memory(struct rg_tracer *t)
{
	struct bpf_object *obj = rg_tracer_sensor_object(t, "calls");
	struct bpf_map *map;
	unsigned long long total = 0;

	if (!obj)
		return 0;
	/* The shared maps (the ring, counters, filters) are the tracer's, not the sensor's;
	 * libbpf's USDT maps are the probes'. */
	bpf_object__for_each_map(map, obj)
		if (strncmp(bpf_map__name(map), "rg_call", 7) == 0 || strncmp(bpf_map__name(map), "__bpf_usdt", 10) == 0)
			total += map_memlock(bpf_map__fd(map));
	return total;
}
