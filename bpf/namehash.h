/* The host-name hash: one definition for the DNS programs (dns.bpf.h), which
 * hash a name one byte per bpf_loop step, and for the guard's loader
 * (csrc/guardmaps.c), which keys host patterns and names by it.
 *
 * FNV-1a over the name's bytes from the last back, so that the hash at each
 * '.' is the hash of the suffix from there, and '*' hashed on top of it is
 * the key of the glob naming that suffix ("*.example.com"). Python's
 * reference is runtimeguard.hostnames.name_hash; the tests compare the two.
 *
 * Plain C, no kernel or system headers: both sides include it. */
#ifndef RG_NAMEHASH_H
#define RG_NAMEHASH_H

#include "events.h" /* RG_FNV_OFFSET, RG_FNV_PRIME */

/* The hash of the empty name: where every name's hash starts. */
#define RG_NAME_HASH_START RG_FNV_OFFSET

/* The hash of a suffix once one more byte, the one before it, is added. */
static inline __attribute__((always_inline)) unsigned long long rg_name_hash_step(unsigned long long suffix_hash,
										      unsigned char byte)
{
	return (suffix_hash ^ byte) * RG_FNV_PRIME;
}

/* The key of the glob "*" + suffix, from the hash of a suffix that starts
 * with its '.'. */
static inline __attribute__((always_inline)) unsigned long long rg_glob_key(unsigned long long suffix_hash)
{
	return rg_name_hash_step(suffix_hash, '*');
}

#ifndef __bpf__
/* A whole name's hash (user space; the BPF programs step through a name
 * with bounded loops of their own). */
static inline unsigned long long rg_name_hash(const char *text, unsigned long len)
{
	unsigned long long hash = RG_NAME_HASH_START;

	while (len)
		hash = rg_name_hash_step(hash, (unsigned char)text[--len]);
	return hash;
}
#endif

#endif
