/* libbpf's messages, kept for error reports: every error a step of the tracer
 * returns names the step and the program or map, and carries what libbpf
 * (and the verifier) said since the step began (rg_log_reset). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/libbpf.h>

#include "loader.h"

#define RG_LOG_KEEP 6144
static __thread char libbpf_log[RG_LOG_KEEP];
static __thread size_t libbpf_log_len;

static int capture_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	static __thread char line[65536];
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, args);
	if (n <= 0)
		return 0;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (getenv("RUNTIMEGUARD_LIBBPF_LOG"))
		fputs(line, stderr);
	/* Keep the tail: the verifier's verdict comes last. */
	if (n >= RG_LOG_KEEP) {
		memmove(line, line + n - (RG_LOG_KEEP - 1), RG_LOG_KEEP - 1);
		n = RG_LOG_KEEP - 1;
		line[n] = 0;
	}
	if (libbpf_log_len + n >= RG_LOG_KEEP) {
		size_t drop = libbpf_log_len + n - RG_LOG_KEEP + 1;
		if (drop > libbpf_log_len)
			drop = libbpf_log_len;
		memmove(libbpf_log, libbpf_log + drop, libbpf_log_len - drop);
		libbpf_log_len -= drop;
	}
	memcpy(libbpf_log + libbpf_log_len, line, n);
	libbpf_log_len += n;
	libbpf_log[libbpf_log_len] = 0;
	return 0;
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_globals(void)
{
	libbpf_set_print(capture_libbpf);
}

void rg_log_reset(void)
{
	pthread_once(&init_once, init_globals);
	libbpf_log_len = 0;
	libbpf_log[0] = 0;
}

int rg_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list args;
	size_t n;

	if (code > 0)
		code = -code;
	if (!code)
		code = -EINVAL;
	va_start(args, fmt);
	n = vsnprintf(err, errlen, fmt, args);
	va_end(args);
	if (n < errlen)
		n += snprintf(err + n, errlen - n, ": %s", strerror(-code));
	if (libbpf_log_len && n < errlen)
		snprintf(err + n, errlen - n, "\n%s", libbpf_log);
	return code;
}
