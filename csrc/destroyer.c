/* The guard's socket destroyer (bpf/sockdestroy.bpf.c): an iter/tcp program
 * calling the kfunc bpf_sock_destroy on the TCP sockets of tainted
 * processes, run before the guard detaches so that what they queued is
 * discarded, never sent. */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "tracer.h"
#include "sockdestroy.skel.h"

/* The guard's socket destroyer shares the guard's taint and socket owner
 * maps. Optional: where it does not load (no bpf_sock_destroy kfunc before
 * Linux 6.5), the guard runs without it and says why. */
static const char *const destroyer_maps[] = { "rg_tainted", "rg_tainted_gone", "rg_sock_owners" };

int rg_destroyer_open(struct bpf_object *guard, struct rg_sockdestroy **out, char *err, size_t errlen)
{
	struct rg_sockdestroy *skel;
	int ret;

	rg_log_reset();
	*out = NULL;
	if (!(skel = rg_sockdestroy__open()))
		return rg_fail(err, errlen, -errno, "opening the socket destroyer");
	for (size_t m = 0; guard && m < RG_COUNT(destroyer_maps); m++) {
		struct bpf_map *theirs = bpf_object__find_map_by_name(guard, destroyer_maps[m]);
		struct bpf_map *ours = bpf_object__find_map_by_name(skel->obj, destroyer_maps[m]);
		if (!theirs || !ours || (ret = bpf_map__reuse_fd(ours, bpf_map__fd(theirs)))) {
			rg_sockdestroy__destroy(skel);
			return rg_fail(err, errlen, theirs && ours ? ret : -ENOENT, "socket destroyer: sharing map %s",
				    destroyer_maps[m]);
		}
	}
	if ((ret = rg_sockdestroy__load(skel))) {
		rg_sockdestroy__destroy(skel);
		return rg_fail(err, errlen, ret, "loading the socket destroyer (iter/tcp, kfunc bpf_sock_destroy)");
	}
	*out = skel;
	return 0;
}

/* Runs the destroyer once: creates an iterator over the TCP sockets of the
 * caller's network namespace and reads it to its end. */
int rg_destroyer_run(struct rg_sockdestroy *skel, char *err, size_t errlen)
{
	struct bpf_link *link = bpf_program__attach_iter(skel->progs.rg_destroy_tainted, NULL);
	char buf[4096];
	int fd, count = 0, ret = 0;
	ssize_t n;

	if (!link)
		return rg_fail(err, errlen, -errno, "attaching the socket destroyer's iterator");
	if ((fd = bpf_iter_create(bpf_link__fd(link))) < 0) {
		ret = rg_fail(err, errlen, -errno, "creating the socket destroyer's iterator");
		bpf_link__destroy(link);
		return ret;
	}
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			ret = rg_fail(err, errlen, -errno, "reading the socket destroyer's iterator");
			break;
		}
		for (ssize_t i = 0; i < n; i++)
			count += buf[i] == '\n';
	}
	close(fd);
	bpf_link__destroy(link);
	return ret ? ret : count;
}

void rg_destroyer_close(struct rg_sockdestroy *destroyer)
{
	rg_sockdestroy__destroy(destroyer);
}

int rg_tracer_destroy_tainted_sockets(struct rg_tracer *t, char *err, size_t errlen)
{
	rg_log_reset();
	if (!t->destroyer) {
		snprintf(err, errlen, "%s", t->destroyer_why[0] ? t->destroyer_why : "no socket destroyer loaded");
		return t->destroyer_error ? t->destroyer_error : -EOPNOTSUPP;
	}
	return rg_destroyer_run(t->destroyer, err, errlen);
}
