/* What a caller changes in an open tracer: the filters (which processes,
 * commands and cgroups are traced), any sensor's map by name, the identity
 * patterns the process sensor looks for, and the paths the fanotify file
 * judge protects. */
#include <errno.h>
#include <string.h>

#include <bpf/bpf.h>

#include "tracer.h"

static int add_filter(struct rg_tracer *t, enum shared_map filter, const void *key, char *err, size_t errlen)
{
	unsigned char one = 1;

	rg_log_reset();
	if (bpf_map_update_elem(t->shared_fds[filter], key, &one, BPF_ANY))
		return rg_fail(err, errlen, -errno, "adding to filter map %s", rg_shared_map_names[filter]);
	return 0;
}

int rg_tracer_add_pid(struct rg_tracer *t, unsigned int pid, char *err, size_t errlen)
{
	return add_filter(t, SHARED_FILTER_PIDS, &pid, err, errlen);
}

int rg_tracer_add_comm(struct rg_tracer *t, const char *comm, char *err, size_t errlen)
{
	char key[RG_COMM_LEN] = {};

	strncpy(key, comm, sizeof(key) - 1);
	return add_filter(t, SHARED_FILTER_COMMS, key, err, errlen);
}

int rg_tracer_add_cgroup(struct rg_tracer *t, unsigned long long cgroup_id, char *err, size_t errlen)
{
	return add_filter(t, SHARED_FILTER_CGROUPS, &cgroup_id, err, errlen);
}

static int map_update(struct rg_tracer *t, const char *map, const void *key, const void *value, char *err,
		      size_t errlen)
{
	rg_log_reset();
	for (int i = 0; i < SENSOR_COUNT; i++) {
		struct bpf_map *m = t->sensors[i].obj ? bpf_object__find_map_by_name(t->sensors[i].obj, map) : NULL;
		if (!m)
			continue;
		if (bpf_map_update_elem(bpf_map__fd(m), key, value, BPF_ANY))
			return rg_fail(err, errlen, -errno, "updating map %s", map);
		return 0;
	}
	return rg_fail(err, errlen, -ENOENT, "no loaded sensor has map %s", map);
}

int rg_tracer_watch_inode(struct rg_tracer *t, unsigned long long st_dev, unsigned long long ino, char *err,
			  size_t errlen)
{
	struct rg_inode_key key = { .dev = rg_kernel_dev(st_dev), .ino = ino };
	unsigned char one = 1;

	return map_update(t, "rg_watch_inodes", &key, &one, err, errlen);
}

static int identity_refused(int ret, const char *pattern, char *err, size_t errlen)
{
	if (ret == -ENOSPC)
		return rg_fail(err, errlen, ret, "identity pattern %s: all %d patterns of its kind are in use by live tracers",
			    pattern, RG_IDENTITY_MAX);
	return rg_fail(err, errlen, ret, "identity pattern %s", pattern);
}

int rg_tracer_watch_env(struct rg_tracer *t, const char *pattern, char *err, size_t errlen)
{
	unsigned long long key;
	unsigned int kind, len, zero = 0;
	int bit = rg_identity_hold_env(pattern), ret;

	if (bit < 0)
		return identity_refused(bit, pattern, err, errlen);
	if (t->identity_env_bits >> bit & 1) {
		rg_identity_release(1ULL << bit, 0); /* held already */
		return 0;
	}
	t->identity_env_bits |= 1ULL << bit;
	unsigned int value = bit;
	if ((ret = rg_identity_env_key(bit, &key, &kind, &len)) ||
	    (ret = map_update(t, "rg_identity_names", &key, &value, err, errlen)))
		return ret;
	if (kind == RG_IDENTITY_PREFIX)
		t->identity.prefix_lengths |= 1ULL << len;
	else if (kind == RG_IDENTITY_SUFFIX)
		t->identity.suffix_lengths |= 1ULL << len;
	t->identity.enabled = 1;
	return map_update(t, "rg_identity_cfg", &zero, &t->identity, err, errlen);
}

int rg_tracer_watch_argv(struct rg_tracer *t, const char *pattern, char *err, size_t errlen)
{
	int slot = rg_identity_hold_argv(pattern);

	if (slot < 0)
		return identity_refused(slot, pattern, err, errlen);
	if (t->identity_argv_bits >> slot & 1)
		rg_identity_release(0, 1ULL << slot);
	t->identity_argv_bits |= 1ULL << slot;
	return 0;
}

int rg_tracer_protect_path(struct rg_tracer *t, const char *path, unsigned int kind, unsigned int rule_index,
			   char *err, size_t errlen)
{
	if (!t->judge)
		return rg_fail(err, errlen, -EOPNOTSUPP, "protecting %s: the fanotify file judge is not running", path);
	return rg_file_judge_mark(t->judge, path, kind, rule_index, err, errlen);
}
