"""The workload `runtimeguard demo` traces: a few harmless, loopback-only actions.

Usage: python _demo_workload.py SECONDS (the steps are spread over that time).
"""

import encodings.idna  # noqa: F401  imported now so its file opens count as start-up
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Run by path (python .../_demo_workload.py), so this directory, not the
# package's parent, is on sys.path: the extension loads on its own, without
# the package's imports, which would only add start-up noise to what is traced.
from _native import ffi, lib


def run_echo():
    # LC_ALL=C spares a screen of locale file opens.
    subprocess.run(["/bin/echo", "runtimeguard-demo"], check=True, env={**os.environ, "LC_ALL": "C"})


def open_temp_file():
    with tempfile.NamedTemporaryFile(prefix="runtimeguard-demo-") as f:
        f.write(b"demo\n")
        f.flush()
        with open(f.name, "rb") as again:
            again.read()


def tcp_loopback(family, host):
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2]):
            listener.accept()[0].close()


def tcp_ipv6():
    try:
        tcp_loopback(socket.AF_INET6, "::1")
    except OSError:
        # No ::1 here: the attempt (refused or unreachable) is still an event.
        try:
            socket.create_connection(("::1", 9), timeout=1).close()
        except OSError:
            pass


def udp_sendto():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        sender.sendto(b"runtimeguard-demo", receiver.getsockname())


def ptrace_and_read_memory():
    # The child waits on a pipe: if this process dies, EOF ends the child too.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        if lib.ptrace(lib.PTRACE_ATTACH, pid, ffi.NULL, ffi.NULL) == 0:
            os.waitpid(pid, 0)
            with open(f"/proc/{pid}/mem", "rb"):
                pass
            lib.ptrace(lib.PTRACE_DETACH, pid, ffi.NULL, ffi.NULL)
        else:
            print(f"ptrace: {os.strerror(ffi.errno)}", file=sys.stderr)
    finally:
        os.close(w)
        os.waitpid(pid, 0)


STEPS = (run_echo, open_temp_file, lambda: tcp_loopback(socket.AF_INET, "127.0.0.1"), tcp_ipv6, udp_sendto,
         ptrace_and_read_memory)


def main():
    # Ctrl-C reaches the whole foreground group: the demo reports it, this
    # workload just ends (no traceback of its own).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    tempfile.gettempdir()  # its writability probe is start-up, not the demo
    pause = float(sys.argv[1]) / len(STEPS) if len(sys.argv) > 1 else 0.0
    for step in STEPS:
        step()
        time.sleep(pause)


if __name__ == "__main__":
    main()
