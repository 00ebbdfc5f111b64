/* What the tracer's loader shares with the parts of csrc/ that work on its
 * sensors (calls.c): libbpf's messages in errors, a sensor's object, and
 * links it keeps until it closes. Not part of the API Python sees. */
#ifndef RG_LOADER_H
#define RG_LOADER_H

#include <stddef.h>
#include <sys/sysmacros.h>
#include <bpf/libbpf.h>

struct rg_tracer;

/* Forgets libbpf's messages: call before the step an error would be about. */
void rg_log_reset(void);
/* Writes "<fmt>: <strerror(code)>" and libbpf's messages since the last
 * reset into err; returns code as -errno. */
int rg_fail(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The loaded object of sensor name ("calls"), or NULL where it is not loaded. */
struct bpf_object *rg_tracer_sensor_object(struct rg_tracer *t, const char *name);
/* Keeps link until the tracer closes; on failure destroys it. */
int rg_tracer_keep_link(struct rg_tracer *t, struct bpf_link *link, char *err, size_t errlen);

/* A device as the BPF programs read it from a superblock (the kernel's dev_t,
 * MKDEV: 20 bits of minor); user space's st_dev encodes it otherwise. */
static inline unsigned long long rg_kernel_dev(unsigned long long st_dev)
{
	return (unsigned long long)major(st_dev) << 20 | minor(st_dev);
}

#endif
