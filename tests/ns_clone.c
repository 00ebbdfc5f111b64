/* Makes a child in a new user namespace with clone or clone3 (argv[1]);
 * the child creates the file argv[2] and exits. Exit: 0 the child ran, 2
 * the call is not available here, 3 it was refused (EPERM), with the error
 * on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int child(void *marker)
{
	int fd = open(marker, O_WRONLY | O_CREAT, 0600);

	if (fd >= 0)
		close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	static char stack[65536];
	int status;
	pid_t pid;

	if (argc < 3)
		return 2;
	if (!strcmp(argv[1], "clone3")) {
		struct clone_args args = { .flags = CLONE_NEWUSER, .exit_signal = SIGCHLD };
		pid = syscall(SYS_clone3, &args, sizeof(args));
		if (pid == 0)
			_exit(child(argv[2]));
	} else {
		pid = clone(child, stack + sizeof(stack), CLONE_NEWUSER | SIGCHLD, argv[2]);
	}
	if (pid < 0) {
		if (errno == ENOSYS)
			return 2;
		fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
		return errno == EPERM ? 3 : 1;
	}
	waitpid(pid, &status, 0);
	return 0;
}
