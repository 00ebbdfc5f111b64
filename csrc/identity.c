/* Process identity and the clocks events are stamped with. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
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

/* ---- machine identity: the patterns processes are recognised by ----
 *
 * One registry per process, shared by every tracer and by the encoder: a
 * pattern's bit (env) or slot (argv) means the same thing wherever a record
 * is decoded. Each live tracer holds a reference to the patterns it asked
 * for; a slot is reused only once no tracer holds it, when no tracer's
 * kernel map can set its bit any more. */

static pthread_mutex_t identity_lock = PTHREAD_MUTEX_INITIALIZER;

struct identity_slot {
	char name[RG_IDENTITY_NAME_MAX + 8]; /* "env:<pattern>" or "argv:<pattern>"; empty: free */
	unsigned int kind, length;           /* env: the pattern's kind and its name part's length */
	unsigned int holders;
};

static struct identity_slot env_slots[RG_IDENTITY_MAX], argv_slots[RG_IDENTITY_MAX];
/* Slots held, of both kinds: with none, an exec shows no identity and the
 * encoder skips the lock. */
static unsigned int held_slots;

/* "NAME" exact, "PREFIX*" or "*SUFFIX"; the name part without '=', NUL or '*'. */
static int parse_env_pattern(const char *pattern, unsigned int *kind, const char **text, size_t *len)
{
	size_t n = strlen(pattern);

	*kind = RG_IDENTITY_EXACT;
	*text = pattern;
	if (n && pattern[n - 1] == '*') {
		*kind = RG_IDENTITY_PREFIX;
		n--;
	} else if (n && pattern[0] == '*') {
		*kind = RG_IDENTITY_SUFFIX;
		(*text)++;
		n--;
	}
	*len = n;
	if (!n || memchr(*text, '=', n) || memchr(*text, '*', n))
		return -EINVAL;
	if (n > (*kind == RG_IDENTITY_EXACT ? RG_IDENTITY_NAME_MAX : RG_IDENTITY_AFFIX_MAX))
		return -ENAMETOOLONG;
	return 0;
}

static int hold(struct identity_slot *slots, const char *name, unsigned int kind, unsigned int length)
{
	int free_slot = -1;

	pthread_mutex_lock(&identity_lock);
	for (int i = 0; i < RG_IDENTITY_MAX; i++) {
		if (slots[i].holders && !strcmp(slots[i].name, name)) {
			slots[i].holders++;
			pthread_mutex_unlock(&identity_lock);
			return i;
		}
		if (!slots[i].holders && free_slot < 0)
			free_slot = i;
	}
	if (free_slot >= 0) {
		snprintf(slots[free_slot].name, sizeof(slots[free_slot].name), "%s", name);
		slots[free_slot].kind = kind;
		slots[free_slot].length = length;
		slots[free_slot].holders = 1;
		__atomic_add_fetch(&held_slots, 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&identity_lock);
	return free_slot >= 0 ? free_slot : -ENOSPC;
}

int rg_identity_hold_env(const char *pattern)
{
	unsigned int kind;
	const char *text;
	size_t len;
	char name[RG_IDENTITY_NAME_MAX + 8];
	int ret = parse_env_pattern(pattern, &kind, &text, &len);

	if (ret)
		return ret;
	snprintf(name, sizeof(name), "env:%s", pattern);
	return hold(env_slots, name, kind, len);
}

int rg_identity_hold_argv(const char *pattern)
{
	char name[RG_IDENTITY_NAME_MAX + 8];
	size_t n = strlen(pattern);

	if (!n)
		return -EINVAL;
	if (n > RG_IDENTITY_NAME_MAX)
		return -ENAMETOOLONG;
	snprintf(name, sizeof(name), "argv:%s", pattern);
	return hold(argv_slots, name, 0, n);
}

void rg_identity_release(unsigned long long env_bits, unsigned long long argv_bits)
{
	pthread_mutex_lock(&identity_lock);
	for (int i = 0; i < RG_IDENTITY_MAX; i++) {
		if ((env_bits >> i & 1) && env_slots[i].holders && !--env_slots[i].holders) {
			env_slots[i].name[0] = 0;
			__atomic_sub_fetch(&held_slots, 1, __ATOMIC_RELEASE);
		}
		if ((argv_bits >> i & 1) && argv_slots[i].holders && !--argv_slots[i].holders) {
			argv_slots[i].name[0] = 0;
			__atomic_sub_fetch(&held_slots, 1, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&identity_lock);
}

int rg_identity_env_key(unsigned int bit, unsigned long long *key, unsigned int *kind, unsigned int *len)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&identity_lock);
	if (bit < RG_IDENTITY_MAX && env_slots[bit].holders) {
		const struct identity_slot *slot = &env_slots[bit];
		const char *text = slot->name + 4 + (slot->kind == RG_IDENTITY_SUFFIX);
		unsigned long long h = RG_FNV_OFFSET;
		for (unsigned int i = 0; i < slot->length; i++)
			h = (h ^ (unsigned char)text[i]) * RG_FNV_PRIME;
		*key = RG_IDENTITY_KEY(h, slot->kind);
		*kind = slot->kind;
		*len = slot->length;
		ret = 0;
	}
	pthread_mutex_unlock(&identity_lock);
	return ret;
}

unsigned int rg_identity_names(unsigned long long env_mask, const char *args, size_t args_len,
			       char names[][RG_IDENTITY_NAME_MAX + 8], unsigned int max)
{
	unsigned int n = 0;

	if (!__atomic_load_n(&held_slots, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&identity_lock);
	for (int i = 0; i < RG_IDENTITY_MAX && n < max; i++)
		if ((env_mask >> i & 1) && env_slots[i].holders)
			memcpy(names[n++], env_slots[i].name, sizeof(env_slots[i].name));
	for (int i = 0; i < RG_IDENTITY_MAX && n < max; i++)
		if (argv_slots[i].holders && memmem(args, args_len, argv_slots[i].name + 5, argv_slots[i].length))
			memcpy(names[n++], argv_slots[i].name, sizeof(argv_slots[i].name));
	pthread_mutex_unlock(&identity_lock);
	return n;
}
