/* Opens a file through io_uring (IORING_OP_OPENAT), bypassing the open
 * syscalls, then reads it. Raw syscalls: no liburing needed.
 * A second argument "fd0" closes descriptor 0 first, so the open returns 0;
 * "overflow" fills the completion queue with NOPs first, so the open's
 * completion overflows it; "fixed" opens into a registered (fixed) file table
 * slot, no descriptor at all, and reads through the slot. Exit: 0 read ok, 2 io_uring unavailable, 3 the
 * open (or the read) failed, with the error on stderr. */
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	if (argc > 2 && strcmp(argv[2], "fd0") == 0)
		close(0);
	int ring = syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0 || argc < 2)
		return 2;
	size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(0, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	char *cq = mmap(0, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
		return 2;
	unsigned *tail = (unsigned *)(sq + p.sq_off.tail), *array = (unsigned *)(sq + p.sq_off.array);
	unsigned *head = (unsigned *)(cq + p.cq_off.head);
	struct io_uring_sqe *sqe = &sqes[0];
	int overflow = argc > 2 && strcmp(argv[2], "overflow") == 0;

	/* Completions nobody reaps: the queue is full after cq_entries of them. */
	for (unsigned done = 0; overflow && done < p.cq_entries; done++) {
		memset(sqe, 0, sizeof(*sqe));
		sqe->opcode = IORING_OP_NOP;
		array[0] = 0;
		__atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
		if (syscall(__NR_io_uring_enter, ring, 1, 0, 0, NULL, 0) < 0)
			return 2;
	}
	int fixed = argc > 2 && strcmp(argv[2], "fixed") == 0;
	int no_file = -1;
	if (fixed && syscall(__NR_io_uring_register, ring, IORING_REGISTER_FILES, &no_file, 1) < 0)
		return 2;
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_OPENAT;
	sqe->fd = AT_FDCWD;
	sqe->addr = (unsigned long)argv[1];
	sqe->open_flags = O_RDONLY;
	if (fixed)
		sqe->file_index = 1; /* slot 0 */
	array[0] = 0;
	__atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, overflow ? 0 : 1, overflow ? 0 : IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return 2;
	if (overflow) {
		/* Reap the NOPs; the next wait moves the overflowed completion in. */
		__atomic_store_n(head, *head + p.cq_entries, __ATOMIC_RELEASE);
		if (syscall(__NR_io_uring_enter, ring, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
			return 2;
	}
	struct io_uring_cqe *cqe = (struct io_uring_cqe *)(cq + p.cq_off.cqes) + (*head & (p.cq_entries - 1));
	int fd = cqe->res;
	if (fd < 0) {
		fprintf(stderr, "io_uring open: %s\n", strerror(-fd));
		return 3;
	}
	char buf[64];
	if (fixed) {
		/* Read through slot 0: the file never had a descriptor. */
		__atomic_store_n(head, *head + 1, __ATOMIC_RELEASE);
		memset(sqe, 0, sizeof(*sqe));
		sqe->opcode = IORING_OP_READ;
		sqe->flags = IOSQE_FIXED_FILE;
		sqe->fd = 0;
		sqe->addr = (unsigned long)buf;
		sqe->len = sizeof(buf);
		__atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
		if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
			return 2;
		cqe = (struct io_uring_cqe *)(cq + p.cq_off.cqes) + (*head & (p.cq_entries - 1));
		if (cqe->res < 0) {
			fprintf(stderr, "io_uring read: %s\n", strerror(-cqe->res));
			return 3;
		}
		printf("read through io_uring\n");
		return 0;
	}
	if (read(fd, buf, sizeof(buf)) < 0) {
		perror("read");
		return 3;
	}
	printf("read through io_uring\n");
	return 0;
}
