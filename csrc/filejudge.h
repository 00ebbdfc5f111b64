/* The guard's file judge where BPF LSM does not run: fanotify permission
 * events, answered on a thread of its own (see filejudge.c). */
#ifndef RG_FILEJUDGE_H
#define RG_FILEJUDGE_H

#include <stddef.h>

#include "events.h"

struct rg_file_judge;

/* Opens the fanotify group and starts the thread that answers it. Decisions
 * read the guard's maps (cfg_fd: rg_guard_cfg, tainted_fd: rg_tainted);
 * cgroup_root is the cgroup2 mount, for the opener's scope. wake_fd becomes
 * readable when decisions wait to be taken. */
int rg_file_judge_open(int cfg_fd, int tainted_fd, const char *cgroup_root, struct rg_file_judge **out,
		       char *err, size_t errlen);
/* Marks path (a file, or a directory and thereby its entries) as protected
 * by rule rule_index of kind RG_PROTECT_*. */
int rg_file_judge_mark(struct rg_file_judge *j, const char *path, unsigned int kind, unsigned int rule_index,
		       char *err, size_t errlen);
int rg_file_judge_wake_fd(struct rg_file_judge *j);
/* Moves up to max waiting decisions into out; returns how many. */
unsigned int rg_file_judge_take(struct rg_file_judge *j, struct rg_block_record *out, unsigned int max);
/* Decisions the queue could not hold, per kind, since the start. */
void rg_file_judge_lost(struct rg_file_judge *j, unsigned long long *lost);
/* Events answered, refused, inodes marked, and of the marks those that
 * refuse truncate(2) too (pre-content events). */
void rg_file_judge_counts(struct rg_file_judge *j, unsigned long long *asked, unsigned long long *denied,
			  unsigned long long *marks, unsigned long long *pre_content_marks);
/* Stops the thread and closes the group: opens it had not answered yet are
 * allowed by the kernel. */
void rg_file_judge_close(struct rg_file_judge *j);
/* Whether this kernel delivers fanotify permission events; 0 or -errno with
 * err saying why. */
int rg_file_judge_probe(char *err, size_t errlen);

#endif
