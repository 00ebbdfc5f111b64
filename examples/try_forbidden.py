"""Tries each thing examples/agent-policy.yaml forbids, each in its own child
process (a killed child cannot try the next), and prints what happened.

    runtimeguard run --policy examples/agent-policy.yaml -- python3 examples/try_forbidden.py
    runtimeguard run --policy examples/agent-policy.yaml --mode audit -- python3 examples/try_forbidden.py

Only loopback addresses are used."""

import ctypes
import os
import signal
import socket
import sys
import time


def connect_sinkhole():
    socket.create_connection(("127.0.0.2", 9), timeout=2).close()


def udp_to_sinkhole():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"secret", ("127.0.0.2", 9))


def read_shadow():
    open("/etc/shadow").read()


def read_decoy_then_send():
    open(os.path.expanduser("~/.env")).read()
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"secret", ("127.0.0.1", 9))


def _sleeper():
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    return pid


def ptrace_attach():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    target = _sleeper()
    try:
        if libc.ptrace(16, target, None, None) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.kill(target, signal.SIGKILL)


def read_process_memory():
    target = _sleeper()
    try:
        open(f"/proc/{target}/mem", "rb").close()
    finally:
        os.kill(target, signal.SIGKILL)


def make_namespace():
    # A user and a mount namespace: where an overlay or a bind mount would
    # give a private view of the filesystem.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


ATTEMPTS = [connect_sinkhole, udp_to_sinkhole, read_shadow, read_decoy_then_send, ptrace_attach,
            read_process_memory, make_namespace]


def main() -> int:
    for attempt in ATTEMPTS:
        pid = os.fork()
        if pid == 0:
            try:
                attempt()
            except PermissionError:
                os._exit(13)
            except OSError:
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            outcome = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            outcome = {0: "done", 13: "refused (EPERM)", 1: "failed (not by the guard)"}[os.WEXITSTATUS(status)]
        print(f"{attempt.__name__:<22} {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
