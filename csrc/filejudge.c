/* The guard's file judge where BPF LSM does not run: fanotify permission
 * events.
 *
 * Every protected file and every directory beneath a protected directory
 * carries an inode mark for FAN_OPEN_PERM and FAN_ACCESS_PERM (directories
 * with FAN_EVENT_ON_CHILD, so entries created later are covered too). An open
 * of a marked inode waits in the kernel until this thread answers: FAN_DENY
 * is EPERM before the open, whatever made it (any open syscall, 32-bit
 * syscalls, io_uring, exec, a path through an overlay whose lower layer holds
 * the file). FAN_ACCESS_PERM refuses reads through a descriptor handed in
 * by a process the guard does not judge (Linux 6.14+ decides at open time
 * whether a file raises read events at all: one opened before the marks
 * raises none). Where the filesystem takes pre-content events, FAN_PRE_ACCESS
 * refuses truncate(2) by path too. Inode marks cost nothing measurable to
 * opens of unmarked files.
 *
 * The thread never touches Python: it reads the guard's BPF maps (the same
 * configuration and taint the BPF programs use), the opener's cgroup from
 * /proc, answers, then queues a block record for the consumer, which encodes
 * it like a ring buffer record. The thread opens nothing that is marked, so
 * the guard never waits on itself. If the guard dies, the kernel allows
 * every pending and later open (fail-open). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>

#include "filejudge.h"
#include "loader.h"

#define MARK_MASK (FAN_OPEN_PERM | FAN_ACCESS_PERM)
#define MARK_DIR_MASK (MARK_MASK | FAN_EVENT_ON_CHILD | FAN_ONDIR)
/* Pre-content events (Linux 6.14+, on filesystems that allow them: ext4 here,
 * not tmpfs): raised before a read, a write or a truncate, truncate(2) by
 * path included, which nothing else here can refuse. Older headers lack them. */
#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_CLASS_PRE_CONTENT
#define FAN_CLASS_PRE_CONTENT 0x08
#endif
#define QUEUE_CAP 4096
#define SEEN_ACCESSES 256
#define MAX_MOUNTS 64
#define NEW_DIR_MASK (FAN_CREATE | FAN_MOVED_TO | FAN_ONDIR)
/* Each mark pins its inode in memory: a tree larger than this is refused. */
#define MAX_MARKS 262144
/* Open addressing, grown at half full. */
#define TABLE_MIN 1024

struct protected_inode {
	unsigned long long dev; /* kernel dev_t; 0: an empty slot */
	unsigned long long ino;
	unsigned int kind, rule_index, is_dir;
};

struct rg_file_judge {
	int fan_fd, stop_fd, wake_fd;
	/* Directories made or moved beneath a protected one: a notification
	 * group (FAN_CREATE, FAN_MOVED_TO of directories) and the thread that
	 * marks them. Not the judge's thread: marking a tree opens its
	 * directories, and only the judge can answer those opens. */
	int notify_fd;
	int cfg_fd, tainted_fd;
	char cgroup_root[PATH_MAX];
	pthread_t thread, tracker;
	int started, tracker_started;
	/* A descriptor on each filesystem with protected directories, for
	 * open_by_handle_at(). */
	struct {
		unsigned long long dev;
		int fd;
	} mounts[MAX_MOUNTS];
	unsigned int n_mounts;

	pthread_mutex_t lock; /* the table and the queue */
	struct protected_inode *table;
	size_t table_cap, marks;
	struct rg_block_record *queue;
	unsigned int head, count;
	unsigned long long lost[RG_KIND_SLOTS];
	unsigned long long asked, denied;
	size_t pre_content_marks; /* marks that refuse truncate(2) too */

	/* The thread's own: the latest (process, inode) pairs reported. A read
	 * is reported only when its process was not seen opening or reading
	 * the inode lately: a descriptor from before the guard, or inherited,
	 * once, not each read. */
	struct seen_access {
		unsigned long long dev, ino;
		unsigned int pid, action;
	} seen[SEEN_ACCESSES];
	unsigned int seen_next;
};

static int judge_fail(char *err, size_t errlen, int code, const char *fmt, const char *arg)
{
	size_t n = snprintf(err, errlen, fmt, arg);

	if (n < errlen)
		snprintf(err + n, errlen - n, ": %s", strerror(code));
	return -code;
}

/* ---- protected inodes ---- */

static size_t slot_of(const struct protected_inode *table, size_t cap, unsigned long long dev,
		      unsigned long long ino)
{
	size_t i = (size_t)((ino * 0x9e3779b97f4a7c15ULL) ^ dev) & (cap - 1);

	while (table[i].dev && (table[i].dev != dev || table[i].ino != ino))
		i = (i + 1) & (cap - 1);
	return i;
}

/* With the lock held. */
static const struct protected_inode *table_find(struct rg_file_judge *j, unsigned long long dev,
						unsigned long long ino)
{
	if (!j->table_cap)
		return NULL;
	const struct protected_inode *p = &j->table[slot_of(j->table, j->table_cap, dev, ino)];
	return p->dev ? p : NULL;
}

/* With the lock held. */
static int table_put(struct rg_file_judge *j, const struct protected_inode *p)
{
	if ((j->marks + 1) * 2 > j->table_cap) {
		size_t cap = j->table_cap ? j->table_cap * 2 : TABLE_MIN;
		struct protected_inode *grown = calloc(cap, sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		for (size_t i = 0; i < j->table_cap; i++)
			if (j->table[i].dev)
				grown[slot_of(grown, cap, j->table[i].dev, j->table[i].ino)] = j->table[i];
		free(j->table);
		j->table = grown;
		j->table_cap = cap;
	}
	struct protected_inode *slot = &j->table[slot_of(j->table, j->table_cap, p->dev, p->ino)];
	if (!slot->dev)
		j->marks++;
	*slot = *p; /* marked again: the later rule names it */
	return 0;
}

static int remember_mount(struct rg_file_judge *j, unsigned long long dev, const char *path, char *err,
			  size_t errlen)
{
	int known = 0, fd;

	pthread_mutex_lock(&j->lock);
	for (unsigned int i = 0; i < j->n_mounts; i++)
		known |= j->mounts[i].dev == dev;
	pthread_mutex_unlock(&j->lock);
	if (known)
		return 0;
	if (j->n_mounts == MAX_MOUNTS) {
		snprintf(err, errlen, "protecting %s: protected directories on more than %d filesystems", path,
			 MAX_MOUNTS);
		return -E2BIG;
	}
	/* Not O_PATH: open_by_handle_at() refuses those. */
	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return judge_fail(err, errlen, errno, "protecting %s", path);
	pthread_mutex_lock(&j->lock);
	j->mounts[j->n_mounts].dev = dev;
	j->mounts[j->n_mounts++].fd = fd;
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/* Adds pre-content events to a mark where the kernel and the filesystem
 * have them; where not (EINVAL before 6.14, EOPNOTSUPP on tmpfs), the mark
 * refuses opens and reads only. */
static void mark_pre_content(struct rg_file_judge *j, int dirfd, const char *path, int is_dir)
{
	if (fanotify_mark(j->fan_fd, FAN_MARK_ADD, FAN_PRE_ACCESS | (is_dir ? FAN_EVENT_ON_CHILD : 0), dirfd, path))
		return;
	pthread_mutex_lock(&j->lock);
	j->pre_content_marks++;
	pthread_mutex_unlock(&j->lock);
}

static int mark_one(struct rg_file_judge *j, const char *path, const struct stat *st, unsigned int kind,
		    unsigned int rule_index, char *err, size_t errlen)
{
	struct protected_inode p = { .dev = rg_kernel_dev(st->st_dev), .ino = st->st_ino, .kind = kind,
				     .rule_index = rule_index, .is_dir = S_ISDIR(st->st_mode) };
	int ret;

	pthread_mutex_lock(&j->lock);
	ret = j->marks >= MAX_MARKS ? -E2BIG : table_put(j, &p);
	pthread_mutex_unlock(&j->lock);
	if (ret == -E2BIG) {
		snprintf(err, errlen, "protecting %s: more than %d files and directories to mark; protect a narrower "
			 "directory, or use the tracepoint backend", path, MAX_MARKS);
		return ret;
	}
	if (ret)
		return judge_fail(err, errlen, -ret, "protecting %s", path);
	/* Opened before it is marked: the opener never waits on the judge. */
	if (p.is_dir && (ret = remember_mount(j, p.dev, path, err, errlen)))
		return ret;
	/* In the table before the mark: the first event finds its rule. */
	if (fanotify_mark(j->fan_fd, FAN_MARK_ADD, p.is_dir ? MARK_DIR_MASK : MARK_MASK, AT_FDCWD, path))
		return judge_fail(err, errlen, errno, "fanotify_mark(%s) for open and read permission", path);
	mark_pre_content(j, AT_FDCWD, path, p.is_dir);
	if (p.is_dir && fanotify_mark(j->notify_fd, FAN_MARK_ADD, NEW_DIR_MASK, AT_FDCWD, path))
		return judge_fail(err, errlen, errno, "fanotify_mark(%s) for new directories", path);
	return 0;
}

/* nftw() takes no context: the walk in progress, one at a time. */
static pthread_mutex_t walk_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	struct rg_file_judge *judge;
	unsigned int kind, rule_index;
	char *err;
	size_t errlen;
	int ret;
} walk;

static int mark_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	/* Beneath the top: directories and regular files (opening a FIFO or a
	 * device for the event could block or act). Symbolic links are not
	 * followed: their targets are marked where they are protected. */
	if (type == FTW_DNR || type == FTW_NS) { /* st is not valid for FTW_NS */
		walk.ret = judge_fail(walk.err, walk.errlen, EACCES, "protecting %s: cannot read it", path);
		return 1;
	}
	if (ftw->level > 0 && !S_ISDIR(st->st_mode) && !S_ISREG(st->st_mode))
		return 0;
	walk.ret = mark_one(walk.judge, path, st, walk.kind, walk.rule_index, walk.err, walk.errlen);
	return walk.ret ? 1 : 0;
}

int rg_file_judge_mark(struct rg_file_judge *j, const char *path, unsigned int kind, unsigned int rule_index,
		       char *err, size_t errlen)
{
	struct stat st;
	int ret;

	if (stat(path, &st))
		return judge_fail(err, errlen, errno, "protecting %s", path);
	if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "protecting %s: not a regular file or a directory (fanotify cannot judge it)",
			 path);
		return -EINVAL;
	}
	if (!S_ISDIR(st.st_mode))
		return mark_one(j, path, &st, kind, rule_index, err, errlen);
	char real[PATH_MAX];
	if (!realpath(path, real))
		return judge_fail(err, errlen, errno, "protecting %s", path);
	/* A tree: every directory and file in it, on its filesystem (as the
	 * BPF judges, which walk up to the mount's root). */
	pthread_mutex_lock(&walk_lock);
	walk.judge = j;
	walk.kind = kind;
	walk.rule_index = rule_index;
	walk.err = err;
	walk.errlen = errlen;
	walk.ret = 0;
	ret = nftw(real, mark_entry, 64, FTW_PHYS | FTW_MOUNT);
	if (ret < 0 && !walk.ret)
		walk.ret = judge_fail(err, errlen, errno, "protecting %s: walking it", path);
	ret = walk.ret;
	pthread_mutex_unlock(&walk_lock);
	return ret;
}

/* The protection over an opened inode not marked itself: an entry created
 * in a marked directory after the guard started. Its path (as the guard sees
 * it) leads to the directory; where it does not resolve here (another mount
 * namespace), the first protected directory on the same device answers. */
static int protection_by_path(struct rg_file_judge *j, int fd, const struct stat *st, struct protected_inode *out)
{
	char link[64], path[PATH_MAX];
	struct stat at;
	ssize_t n;
	int found = 0;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n > 0 && path[0] == '/') {
		path[n] = 0;
		if (!stat(path, &at) && at.st_dev == st->st_dev && at.st_ino == st->st_ino) {
			char *slash;
			while (!found && (slash = strrchr(path, '/')) && slash != path) {
				*slash = 0;
				if (stat(path, &at))
					break;
				pthread_mutex_lock(&j->lock);
				const struct protected_inode *p = table_find(j, rg_kernel_dev(at.st_dev), at.st_ino);
				if (p && p->is_dir) {
					*out = *p;
					found = 1;
				}
				pthread_mutex_unlock(&j->lock);
			}
		}
	}
	if (found)
		return 1;
	pthread_mutex_lock(&j->lock);
	for (size_t i = 0; i < j->table_cap && !found; i++) {
		if (j->table[i].dev == rg_kernel_dev(st->st_dev) && j->table[i].is_dir) {
			*out = j->table[i];
			found = 1;
		}
	}
	pthread_mutex_unlock(&j->lock);
	return found;
}

/* ---- the opener ---- */

static ssize_t read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n >= 0)
		buf[n] = 0;
	return n;
}

/* Whether pid is guarded (its cgroup beneath the scope), and its cgroup id.
 * 1 yes, 0 no, -1 unknown (gone). */
static int opener_in_scope(struct rg_file_judge *j, unsigned int pid, const struct rg_guard_config *cfg,
			   unsigned long long *cgroup_id)
{
	char file[64], buf[4096], path[PATH_MAX * 2];
	struct stat st;

	snprintf(file, sizeof(file), "/proc/%u/cgroup", pid);
	if (read_small(file, buf, sizeof(buf)) < 0)
		return -1;
	char *line = strstr(buf, "0::");
	if (line != buf && (!line || line[-1] != '\n'))
		return -1;
	char *cgroup = line + 3, *end = strchr(cgroup, '\n');
	if (end)
		*end = 0;
	snprintf(path, sizeof(path), "%s%s", j->cgroup_root, cgroup);
	*cgroup_id = stat(path, &st) ? 0 : st.st_ino;
	if (!cfg->scope_cgroup_id)
		return 1;
	/* Its ancestor at the scope's level, as bpf_get_current_ancestor_cgroup_id(). */
	char *p = cgroup;
	for (unsigned int level = 0; level < cfg->scope_cgroup_level; level++) {
		if (*p != '/' || !p[1])
			return 0;
		p = strchrnul(p + 1, '/');
	}
	*p = 0;
	snprintf(path, sizeof(path), "%s%s", j->cgroup_root, cgroup);
	return !stat(path, &st) && st.st_ino == cfg->scope_cgroup_id;
}

/* The opener's name and credentials, as /proc shows them (its thread group
 * leader's: fanotify names the process, not the thread). */
static void opener_identity(unsigned int pid, struct rg_header *hdr)
{
	char file[64], buf[2048];
	ssize_t n;

	snprintf(file, sizeof(file), "/proc/%u/comm", pid);
	n = read_small(file, buf, RG_COMM_LEN + 2);
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = 0;
	memset(hdr->comm, 0, RG_COMM_LEN);
	if (n > 0)
		memcpy(hdr->comm, buf, n < RG_COMM_LEN ? n : RG_COMM_LEN - 1);
	hdr->uid = hdr->euid = hdr->gid = RG_ID_UNKNOWN;
	snprintf(file, sizeof(file), "/proc/%u/status", pid);
	if (read_small(file, buf, sizeof(buf)) <= 0)
		return;
	const char *uid = strstr(buf, "\nUid:"), *gid = strstr(buf, "\nGid:");
	if (uid)
		sscanf(uid + 5, "%u %u", &hdr->uid, &hdr->euid);
	if (gid)
		sscanf(gid + 5, "%u", &hdr->gid);
}

static void opened_name(int fd, char *name)
{
	char link[64], path[PATH_MAX];
	ssize_t n;

	memset(name, 0, RG_PATH_LEN);
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0)
		return;
	path[n] = 0;
	const char *base = strrchr(path, '/');
	base = base && base[1] ? base + 1 : path;
	size_t len = strlen(base);
	memcpy(name, base, len < RG_PATH_LEN ? len : RG_PATH_LEN - 1);
}

/* Whether pid has a descriptor of the inode st describes. stat() of
 * /proc/<pid>/fd/N follows the link without opening the file. */
static int holds_descriptor(unsigned int pid, const struct stat *st)
{
	struct dirent *entry;
	char dir[64], path[64 + sizeof(entry->d_name)];
	struct stat at;
	int found = 0;

	snprintf(dir, sizeof(dir), "/proc/%u/fd", pid);
	DIR *fds = opendir(dir);
	if (!fds)
		return 0;
	while (!found && (entry = readdir(fds))) {
		if (entry->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, entry->d_name);
		found = !stat(path, &at) && at.st_dev == st->st_dev && at.st_ino == st->st_ino;
	}
	closedir(fds);
	return found;
}

/* ---- deciding ---- */

/* Decides one event: fills resp, and rec when the decision is reported.
 * Returns 1 when rec is to be reported. */
static int decide(struct rg_file_judge *j, const struct fanotify_event_metadata *m, struct fanotify_response *resp,
		  struct rg_block_record *rec)
{
	struct rg_guard_config cfg;
	struct protected_inode prot;
	unsigned long long cgroup_id = 0;
	unsigned int zero = 0, pid = m->pid;
	struct stat st;

	/* Not configured yet (the configuration is written last), or the guard itself. */
	if (bpf_map_lookup_elem(j->cfg_fd, &zero, &cfg) || !cfg.guard_tgid || pid == cfg.guard_tgid)
		return 0;
	if (fstat(m->fd, &st))
		return 0;
	if (opener_in_scope(j, pid, &cfg, &cgroup_id) != 1)
		return 0;
	pthread_mutex_lock(&j->lock);
	const struct protected_inode *p = table_find(j, rg_kernel_dev(st.st_dev), st.st_ino);
	int found = p != NULL;
	if (found)
		prot = *p;
	pthread_mutex_unlock(&j->lock);
	if (!found && !protection_by_path(j, m->fd, &st, &prot))
		return 0; /* no rule left: the guard is closing */
	if (!found && S_ISDIR(st.st_mode)) {
		/* A directory made beneath a protected one after the start: its
		 * entries are marked from now on. */
		struct protected_inode sub = prot;
		sub.dev = rg_kernel_dev(st.st_dev);
		sub.ino = st.st_ino;
		pthread_mutex_lock(&j->lock);
		int ret = table_put(j, &sub);
		pthread_mutex_unlock(&j->lock);
		if (!ret && !fanotify_mark(j->fan_fd, FAN_MARK_ADD, MARK_DIR_MASK, m->fd, NULL))
			mark_pre_content(j, m->fd, NULL, 1);
	}

	int mirage = prot.kind == RG_PROTECT_MIRAGE;
	unsigned int act = mirage ? cfg.mirage_kill : cfg.file_kill;
	unsigned int action = cfg.mode != RG_MODE_ENFORCE ? RG_ACTION_WOULD_BLOCK
			      : act ? RG_ACTION_BLOCKED : RG_ACTION_REPORTED;
	/* A pre-content event from a process that holds no descriptor of the
	 * file: truncate(2) by path, a change. Refused, it is reported here;
	 * let through, the change watch reports it once it has happened. */
	int change = (m->mask & FAN_PRE_ACCESS) && !holds_descriptor(pid, &st);
	if (change) {
		if (action == RG_ACTION_BLOCKED)
			resp->response = FAN_DENY;
		else
			return 0;
	}

	/* Tainted before the answer: nothing it does after the open escapes. */
	if (!change && (cfg.taint_from & (1U << prot.kind)) && action != RG_ACTION_BLOCKED) {
		unsigned char one = 1;
		bpf_map_update_elem(j->tainted_fd, &pid, &one, BPF_ANY);
	}
	if (action == RG_ACTION_BLOCKED)
		resp->response = FAN_DENY;

	unsigned long long dev = rg_kernel_dev(st.st_dev);
	struct seen_access access = { .dev = dev, .ino = st.st_ino, .pid = pid, .action = action };
	if (!change && (m->mask & (FAN_ACCESS_PERM | FAN_PRE_ACCESS))) {
		for (unsigned int i = 0; i < SEEN_ACCESSES; i++)
			if (!memcmp(&j->seen[i], &access, sizeof(access)))
				return 0;
	}
	j->seen[j->seen_next++ % SEEN_ACCESSES] = access;

	struct timespec now;
	clock_gettime(CLOCK_BOOTTIME, &now);
	memset(rec, 0, sizeof(*rec));
	rec->hdr.timestamp_ns = now.tv_sec * 1000000000ULL + now.tv_nsec;
	rec->hdr.seq = 0; /* made in user space: not numbered by a CPU */
	rec->hdr.cgroup_id = cgroup_id;
	rec->hdr.kind = change ? RG_KIND_PROTECTED_FILE_CHANGED : mirage ? RG_KIND_MIRAGE_TRAP : RG_KIND_OPEN_INODE;
	rec->flags = change ? RG_CHANGE_MODIFY : 0;
	int cpu = sched_getcpu();
	rec->hdr.cpu = cpu < 0 ? 0 : cpu;
	rec->hdr.pid = rec->hdr.tid = pid;
	rec->action = action;
	rec->rule_index = prot.rule_index;
	rec->dev = dev;
	rec->ino = st.st_ino;
	opened_name(m->fd, rec->path);
	return 1;
}

static void enqueue(struct rg_file_judge *j, const struct rg_block_record *rec)
{
	unsigned long long one = 1;

	pthread_mutex_lock(&j->lock);
	if (j->count == QUEUE_CAP) {
		j->lost[rec->hdr.kind]++;
	} else {
		j->queue[(j->head + j->count) % QUEUE_CAP] = *rec;
		j->count++;
	}
	pthread_mutex_unlock(&j->lock);
	if (write(j->wake_fd, &one, sizeof(one)) < 0) {
		/* The counter is full: the consumer is awake already. */
	}
}

static void answer(struct rg_file_judge *j, const struct fanotify_event_metadata *m)
{
	struct fanotify_response resp = { .fd = m->fd, .response = FAN_ALLOW };
	struct rg_block_record rec;
	int report = decide(j, m, &resp, &rec);

	__atomic_add_fetch(&j->asked, 1, __ATOMIC_RELAXED);
	if (resp.response == FAN_DENY)
		__atomic_add_fetch(&j->denied, 1, __ATOMIC_RELAXED);
	/* ENOENT: the opener was killed while it waited; nobody to answer. */
	while (write(j->fan_fd, &resp, sizeof(resp)) < 0 && errno == EINTR)
		;
	close(m->fd);
	if (report) {
		/* After the answer: the opener does not wait for its name. */
		opener_identity(m->pid, &rec.hdr);
		enqueue(j, &rec);
	}
}

/* Reads fd's events, handing each to handle, until the stop descriptor is
 * signalled; all signals blocked: they are the Python thread's. */
static void read_events(struct rg_file_judge *j, int fd, char *buf, size_t size,
			void (*handle)(struct rg_file_judge *, const struct fanotify_event_metadata *))
{
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct pollfd fds[2] = { { .fd = fd, .events = POLLIN }, { .fd = j->stop_fd, .events = POLLIN } };
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		if (fds[1].revents)
			return;
		ssize_t n = read(fd, buf, size);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return;
		}
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n))
			if (m->vers == FANOTIFY_METADATA_VERSION)
				handle(j, m);
	}
}

static void answer_event(struct rg_file_judge *j, const struct fanotify_event_metadata *m)
{
	if (m->fd >= 0) /* FAN_Q_OVERFLOW has none: there is none with an unlimited queue */
		answer(j, m);
}

static void *judge_thread(void *arg)
{
	char buf[65536] __attribute__((aligned(8)));

	read_events(arg, ((struct rg_file_judge *)arg)->fan_fd, buf, sizeof(buf), answer_event);
	return NULL;
}

/* ---- directories made beneath protected ones ---- */

/* Marks the directory an event names (its parent's handle and its name),
 * and everything already in it, under its parent's rule. */
static void mark_new_directory(struct rg_file_judge *j, const struct fanotify_event_info_fid *info)
{
	struct file_handle *handle = (struct file_handle *)info->handle;
	const char *name = (const char *)handle->f_handle + handle->handle_bytes;
	char link[64], parent_path[PATH_MAX], path[PATH_MAX + 256], err[512];
	struct stat st;
	int parent = -1;
	ssize_t n;

	pthread_mutex_lock(&j->lock);
	unsigned int n_mounts = j->n_mounts;
	pthread_mutex_unlock(&j->lock);
	/* Only ever appended to: the first n_mounts stay as they are. */
	for (unsigned int i = 0; i < n_mounts && parent < 0; i++)
		parent = open_by_handle_at(j->mounts[i].fd, handle, O_PATH | O_CLOEXEC);
	if (parent < 0 || fstat(parent, &st))
		goto out;
	pthread_mutex_lock(&j->lock);
	const struct protected_inode *p = table_find(j, rg_kernel_dev(st.st_dev), st.st_ino);
	struct protected_inode rule = p ? *p : (struct protected_inode){ 0 };
	pthread_mutex_unlock(&j->lock);
	snprintf(link, sizeof(link), "/proc/self/fd/%d", parent);
	n = readlink(link, parent_path, sizeof(parent_path) - 1);
	if (!rule.dev || n <= 0)
		goto out;
	parent_path[n] = 0;
	snprintf(path, sizeof(path), "%s/%s", parent_path, name);
	rg_file_judge_mark(j, path, rule.kind, rule.rule_index, err, sizeof(err));
out:
	if (parent >= 0)
		close(parent);
}

static void new_directory_event(struct rg_file_judge *j, const struct fanotify_event_metadata *m)
{
	struct fanotify_event_info_fid *info = (void *)((char *)m + m->metadata_len);

	if ((m->mask & FAN_ONDIR) && m->event_len >= m->metadata_len + sizeof(*info) &&
	    info->hdr.info_type == FAN_EVENT_INFO_TYPE_DFID_NAME)
		mark_new_directory(j, info);
}

static void *tracker_thread(void *arg)
{
	char buf[16384] __attribute__((aligned(8)));

	read_events(arg, ((struct rg_file_judge *)arg)->notify_fd, buf, sizeof(buf), new_directory_event);
	return NULL;
}

/* ---- lifecycle ---- */

static int init_group(void)
{
	unsigned int flags = FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS;
	/* The pre-content class is the one pre-content events need; it also
	 * takes every permission event the content class takes. */
	int fd = fanotify_init(FAN_CLASS_PRE_CONTENT | flags, O_RDONLY | O_LARGEFILE | O_CLOEXEC);

	return fd >= 0 ? fd : fanotify_init(FAN_CLASS_CONTENT | flags, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
}

int rg_file_judge_probe(char *err, size_t errlen)
{
	int fd = init_group();

	if (fd < 0)
		return judge_fail(err, errlen, errno, "%s",
				  errno == EINVAL ? "fanotify_init(FAN_CLASS_CONTENT) (CONFIG_FANOTIFY_ACCESS_PERMISSIONS off?)"
						  : "fanotify_init(FAN_CLASS_CONTENT)");
	close(fd);
	return 0;
}

int rg_file_judge_open(int cfg_fd, int tainted_fd, const char *cgroup_root, struct rg_file_judge **out,
		       char *err, size_t errlen)
{
	struct rg_file_judge *j = calloc(1, sizeof(*j));
	int ret;

	*out = NULL;
	if (!j || !(j->queue = calloc(QUEUE_CAP, sizeof(*j->queue)))) {
		free(j);
		return judge_fail(err, errlen, ENOMEM, "%s", "allocating the file judge");
	}
	j->cfg_fd = cfg_fd;
	j->tainted_fd = tainted_fd;
	j->stop_fd = j->wake_fd = j->notify_fd = -1;
	snprintf(j->cgroup_root, sizeof(j->cgroup_root), "%s", cgroup_root);
	pthread_mutex_init(&j->lock, NULL);
	if ((j->fan_fd = init_group()) < 0) {
		ret = judge_fail(err, errlen, errno, "%s", "fanotify_init(FAN_CLASS_CONTENT): the file judge");
		goto error;
	}
	j->notify_fd = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_CLOEXEC | FAN_NONBLOCK |
				     FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS, O_RDONLY | O_CLOEXEC);
	if (j->notify_fd < 0) {
		ret = judge_fail(err, errlen, errno, "%s", "fanotify_init(FAN_REPORT_DFID_NAME): the file judge");
		goto error;
	}
	if ((j->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
	    (j->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		ret = judge_fail(err, errlen, errno, "%s", "eventfd for the file judge");
		goto error;
	}
	if ((ret = pthread_create(&j->thread, NULL, judge_thread, j))) {
		ret = judge_fail(err, errlen, ret, "%s", "starting the file judge's thread");
		goto error;
	}
	j->started = 1;
	if ((ret = pthread_create(&j->tracker, NULL, tracker_thread, j))) {
		ret = judge_fail(err, errlen, ret, "%s", "starting the file judge's directory tracker");
		goto error;
	}
	j->tracker_started = 1;
	*out = j;
	return 0;
error:
	rg_file_judge_close(j);
	return ret;
}

int rg_file_judge_wake_fd(struct rg_file_judge *j)
{
	return j->wake_fd;
}

unsigned int rg_file_judge_take(struct rg_file_judge *j, struct rg_block_record *out, unsigned int max)
{
	unsigned long long drained;
	unsigned int n = 0;

	pthread_mutex_lock(&j->lock);
	if (read(j->wake_fd, &drained, sizeof(drained)) < 0) {
		/* EAGAIN: nothing was signalled since the last take. */
	}
	while (n < max && j->count) {
		out[n++] = j->queue[j->head];
		j->head = (j->head + 1) % QUEUE_CAP;
		j->count--;
	}
	if (j->count) {
		unsigned long long one = 1;
		if (write(j->wake_fd, &one, sizeof(one)) < 0) {
			/* already signalled */
		}
	}
	pthread_mutex_unlock(&j->lock);
	return n;
}

void rg_file_judge_lost(struct rg_file_judge *j, unsigned long long *lost)
{
	pthread_mutex_lock(&j->lock);
	memcpy(lost, j->lost, sizeof(j->lost));
	pthread_mutex_unlock(&j->lock);
}

void rg_file_judge_counts(struct rg_file_judge *j, unsigned long long *asked, unsigned long long *denied,
			  unsigned long long *marks, unsigned long long *pre_content_marks)
{
	*asked = __atomic_load_n(&j->asked, __ATOMIC_RELAXED);
	*denied = __atomic_load_n(&j->denied, __ATOMIC_RELAXED);
	pthread_mutex_lock(&j->lock);
	*marks = j->marks;
	*pre_content_marks = j->pre_content_marks;
	pthread_mutex_unlock(&j->lock);
}

void rg_file_judge_close(struct rg_file_judge *j)
{
	unsigned long long one = 1;

	if (!j)
		return;
	if (j->started) {
		if (write(j->stop_fd, &one, sizeof(one)) < 0) {
			/* cannot fail: the counter starts at 0 */
		}
		pthread_join(j->thread, NULL);
	}
	/* Closing the group allows whatever waits for an answer, the tracker
	 * too, which may be opening a marked directory: then it can stop. */
	int fan_fd = __atomic_exchange_n(&j->fan_fd, -1, __ATOMIC_SEQ_CST);
	if (fan_fd >= 0)
		close(fan_fd);
	if (j->tracker_started)
		pthread_join(j->tracker, NULL);
	if (j->stop_fd >= 0)
		close(j->stop_fd);
	if (j->wake_fd >= 0)
		close(j->wake_fd);
	if (j->notify_fd >= 0)
		close(j->notify_fd);
	for (unsigned int i = 0; i < j->n_mounts; i++)
		close(j->mounts[i].fd);
	pthread_mutex_destroy(&j->lock);
	free(j->table);
	free(j->queue);
	free(j);
}
