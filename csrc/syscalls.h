/* The system calls Python's os module lacks, which runtimeguard makes from
 * Python through cffi: fanotify (changes to protected files), file handles
 * (what fanotify reports a file by), mount (tracefs, bpffs), prctl (a
 * command's privileges dropped) and ptrace (the demo workload).
 *
 * Only the cffi preamble includes this header, after api.h: cffi compiles a
 * wrapper for each declaration of csrc/syscalls.cdef against these system
 * headers, so the constants are the headers' values and the calls set the
 * errno cffi reads (ffi.errno). name_to_handle_at needs _GNU_SOURCE, which
 * Python.h (included first by cffi) defines. */
#ifndef RG_SYSCALLS_H
#define RG_SYSCALLS_H

#include <fcntl.h>
#include <sys/fanotify.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>

#endif
