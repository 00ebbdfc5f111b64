/* A cgroup's path from the id events carry, in one step: the cgroup2
 * mount's kernfs file handle (needs CAP_DAC_READ_SEARCH). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "api.h"

int rg_cgroup_path(int mount_fd, unsigned long long cgroup_id, char *path, size_t size)
{
	/* A kernfs file handle is the node's 64-bit id: the cgroup id. */
	struct {
		struct file_handle handle;
		unsigned long long id;
	} h = { .handle = { .handle_bytes = sizeof(cgroup_id), .handle_type = 0xfe }, .id = cgroup_id };
	char link[64];
	int fd = open_by_handle_at(mount_fd, &h.handle, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, size - 1);
	int saved = errno;
	close(fd);
	if (n < 0)
		return -saved;
	path[n] = 0;
	return n;
}
