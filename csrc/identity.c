/* Process identity and the clocks events are stamped with. */
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "api.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static unsigned long long boot_hash;
static char boot_id[40];
static unsigned long long ns_per_tick = 10000000ULL;

/* SplitMix64's output function. */
static unsigned long long mix64(unsigned long long x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static void init_identity(void)
{
	char id[64] = "";
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	long tck = sysconf(_SC_CLK_TCK);

	if (fd >= 0) {
		if (read(fd, id, sizeof(id) - 1) < 0)
			id[0] = 0;
		close(fd);
	}
	for (int i = 0, j = 0; id[i] && j < (int)sizeof(boot_id) - 1; i++)
		if (id[i] != '\n')
			boot_id[j++] = id[i];
	boot_hash = 0x243f6a8885a308d3ULL;
	for (const char *p = id; *p; p++)
		boot_hash = mix64(boot_hash ^ (unsigned char)*p);
	if (tck > 0)
		ns_per_tick = 1000000000ULL / tck;
}

/* A 64-bit hash of the boot (each byte of boot_id as read, its newline
 * too), the pid and the start time, halved to fit a signed 64-bit integer. */
unsigned long long rg_entity_id(unsigned int pid, unsigned long long start_boottime_ns)
{
	pthread_once(&init_once, init_identity);
	/* Start time at clock-tick resolution, as /proc/<pid>/stat reports it,
	 * so processes found in /proc get the same id as those seen by BPF. */
	unsigned long long ticks = start_boottime_ns / ns_per_tick;
	return mix64(boot_hash ^ mix64(((unsigned long long)pid << 40) ^ ticks)) >> 1;
}

const char *rg_boot_id(void)
{
	pthread_once(&init_once, init_identity);
	return boot_id;
}

long long rg_realtime_offset_ns(void)
{
	struct timespec real, boot;

	clock_gettime(CLOCK_REALTIME, &real);
	clock_gettime(CLOCK_BOOTTIME, &boot);
	return (real.tv_sec - boot.tv_sec) * 1000000000LL + (real.tv_nsec - boot.tv_nsec);
}
