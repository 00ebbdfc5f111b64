/* Feature probes: whether this kernel really runs each mechanism a sensor
 * relies on, learned by loading it (runtimeguard.capabilities). */
#include <errno.h>
#include <string.h>

#include <bpf/libbpf.h>

#include "tracer.h"
#include "probe.skel.h"

int rg_probe_fanotify_permission(char *err, size_t errlen)
{
	return rg_file_judge_probe(err, errlen);
}

int rg_probe(const char *program, char *err, size_t errlen)
{
	struct rg_probe *skel;
	struct bpf_program *prog, *target = NULL;
	int ret;

	rg_log_reset();
	skel = rg_probe__open();
	if (!skel)
		return rg_fail(err, errlen, -errno, "opening the probe object");
	bpf_object__for_each_program(prog, skel->obj) {
		int match = strcmp(bpf_program__name(prog), program) == 0;
		bpf_program__set_autoload(prog, match);
		if (match)
			target = prog;
	}
	if (!target) {
		rg_probe__destroy(skel);
		return rg_fail(err, errlen, -ENOENT, "no probe program %s", program);
	}
	ret = bpf_object__load(skel->obj);
	if (ret) {
		ret = rg_fail(err, errlen, ret, "loading %s", bpf_program__section_name(target));
	} else {
		enum bpf_prog_type type = bpf_program__type(target);
		/* Cgroup and uprobe programs need a target to attach to: loading is the test. */
		if (type != BPF_PROG_TYPE_CGROUP_SOCK_ADDR && type != BPF_PROG_TYPE_CGROUP_SKB &&
		    type != BPF_PROG_TYPE_CGROUP_SOCK && strcmp(program, "rg_probe_uprobe") != 0) {
			struct bpf_link *link = bpf_program__attach(target);
			if (!link)
				ret = rg_fail(err, errlen, -errno, "attaching %s", bpf_program__section_name(target));
			else
				bpf_link__destroy(link);
		}
	}
	rg_probe__destroy(skel);
	return ret;
}

int rg_probe_sock_destroy(char *err, size_t errlen)
{
	struct rg_sockdestroy *skel;
	int ret = rg_destroyer_open(NULL, &skel, err, errlen);

	if (ret)
		return ret;
	/* Its own empty maps: every socket's owner is unknown, none is destroyed. */
	ret = rg_destroyer_run(skel, err, errlen);
	rg_destroyer_close(skel);
	return ret < 0 ? ret : 0;
}
