"""A tainted process's TCP socket connected before the taint, tracepoint
backend: its packets are dropped at egress while the guard runs, and the
socket is destroyed (its queued data discarded) before the guard detaches, so
no byte sent after the taint reaches the peer, during the run or after it."""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time

import pytest

from runtimeguard.capabilities import capabilities
from runtimeguard.guard import Guard, guard

from test_guard import make_policy, py, scope_cgroup, secrets_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root

AFTER_EXIT_S = 3.0
"""How long the peer keeps listening once the guard has exited: TCP would
retransmit queued data within it (the first retransmission after 200 ms to 1 s)."""


def _need_destroyer():
    """Skips only on a kernel older than the kfunc (6.5); where it should
    load and does not, the test fails."""
    f = capabilities().feature("bpf_sock_destroy")
    if f and f.available:
        return
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (6, 5):
        pytest.skip(f"no bpf_sock_destroy kfunc before Linux 6.5: {f.detail if f else 'not probed'}")
    pytest.fail(f"the socket destroyer does not load on Linux {os.uname().release}: "
                f"{f.detail if f else 'not probed'}")


class Peer:
    """A listener on 127.0.0.1 that keeps every byte of its one connection,
    reading until stop() (after the guard has exited), a reset or the end."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.received = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        conn = None
        try:
            while conn is None and not self._stop.is_set():
                if select.select([self.server], [], [], 0.05)[0]:
                    conn, _ = self.server.accept()
            while conn is not None and not self._stop.is_set():
                if not select.select([conn], [], [], 0.05)[0]:
                    continue
                try:
                    chunk = conn.recv(65536)
                except OSError:  # the reset of the destroyed socket
                    break
                if not chunk:
                    break
                with self._lock:
                    self.received += chunk
        finally:
            if conn is not None:
                conn.close()

    def data(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join()
        self.server.close()
        return self.data()


# The workload: connects, sends b"before" (delivered, before the taint), reads
# the decoy (taint), then sends b"after" and ends as each test says.
WORKLOAD = """
    import os, socket, sys, time
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"before")
    time.sleep(0.3)
    open({decoy!r}).read()
    {then}
"""
SEND_AFTER_AND_SLEEP = """
    for _ in range(5):
        s.sendall(b"after")  # accepted into the socket's buffer; its packets are dropped
        time.sleep(0.1)
    time.sleep(0.5)
"""
SEND_AFTER_AND_EXIT = """
    s.sendall(b"after")
    os._exit(0)  # the socket closed with its data queued: orphaned, FIN after the data
"""
SEND_CORKED_AND_EXIT = """
    import socket as so
    s.setsockopt(so.IPPROTO_TCP, so.TCP_CORK, 1)
    s.sendall(b"after")  # held back by the cork: no packet leaves while the process lives
    os._exit(0)  # sent at close, after the process has exited: the owner is still tainted
"""
SEND_AFTER_CHILD_LINGERS = """
    s.sendall(b"after")
    if os.fork() == 0:
        time.sleep(60)  # holds the socket open until the guard kills what is left
        os._exit(0)
    os._exit(0)
"""


def workload(secrets_dir, port, then):
    import textwrap
    return py(WORKLOAD.format(port=port, decoy=str(secrets_dir / "aws-credentials"),
                              then=textwrap.indent(textwrap.dedent(then), "    ").strip()))


def exfil_decisions(events):
    return [e for e in events if e.name == "exfil_blocked"]


@pytest.mark.parametrize("then", [SEND_AFTER_AND_SLEEP, SEND_AFTER_AND_EXIT, SEND_AFTER_CHILD_LINGERS],
                         ids=["sleeps", "exits", "child-lingers"])
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_no_tainted_byte_reaches_the_peer_after_the_guard_exits(secrets_dir, mode, then):
    _need_destroyer()
    peer = Peer()
    destroyed = []
    try:
        g = Guard(make_policy(secrets_dir, mode=mode), backend="tracepoint")
        result = g.run(workload(secrets_dir, peer.port, then))
        destroyed.append(g.tainted_sockets_destroyed)
        assert g.socket_destroy_error is None
        at_exit = peer.data()
        time.sleep(AFTER_EXIT_S)
    finally:
        received = peer.stop()
    assert result.exit_status == 0, result
    assert [e.name for e in result.events] == ["mirage_trap", "exfil_blocked"], result.events
    (exfil,) = exfil_decisions(result.events)
    assert exfil.policy.rule == "taint.block_egress"
    assert exfil.target_context.formatted == f"127.0.0.1:{peer.port}"
    if mode == "enforce":
        assert exfil.action == "blocked"
        assert at_exit == b"before"
        assert received == b"before"  # not one byte after the guard exited either
        assert destroyed == [1]
    else:
        assert exfil.action == "would_block"
        assert received.startswith(b"before") and received[6:] and set(received[6:].split(b"after")) == {b""}
        assert destroyed == [0]


@pytest.mark.parametrize("then", [SEND_AFTER_AND_EXIT, SEND_CORKED_AND_EXIT], ids=["sent", "corked"])
def test_socket_of_a_process_gone_while_the_guard_runs(secrets_dir, scope_cgroup, then):
    """The process exits with its data queued, the guard stays attached past
    TCP's retransmissions (the owner stays tainted once its process is gone,
    whether or not a packet of the socket was seen while it lived), then
    closes: the orphaned socket is destroyed, nothing is delivered."""
    _need_destroyer()
    cgroup, run = scope_cgroup
    peer = Peer()
    try:
        with Guard(make_policy(secrets_dir), cgroup=cgroup, backend="tracepoint") as g:
            assert run(workload(secrets_dir, peer.port, then)) == 0
            time.sleep(2.5)  # retransmissions of b"after" and the FIN, all dropped
            during = peer.data()
            decisions = g.poll(1)
        after_close = peer.data()
        time.sleep(AFTER_EXIT_S)
    finally:
        received = peer.stop()
    assert [e.name for e in decisions] == ["mirage_trap", "exfil_blocked"], decisions
    assert decisions[1].action == "blocked"
    assert during == after_close == received == b"before"
    assert g.tainted_sockets_destroyed == 1


def test_tainted_process_still_acknowledges_and_closes_without_a_decision(secrets_dir):
    """Segments with no data leave: a tainted process on a socket connected
    before the taint can still receive (its acknowledgements pass, so the
    peer's large send completes) and close it (the FIN passes), and neither
    is an exfil decision: nothing of its own left."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    size = 8 << 20  # far beyond both sockets' buffers: the send completes only if every ACK arrives
    sent = []

    def serve():
        conn, _ = server.accept()
        conn.settimeout(20)
        try:
            conn.sendall(b"x" * size)
            sent.append(size)
            sent.append(conn.recv(1))  # b"": the workload's FIN arrived
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        result = guard(make_policy(secrets_dir), py(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {server.getsockname()[1]}))
            s.settimeout(10)  # a stalled transfer fails the test instead of hanging it
            open({str(secrets_dir / "aws-credentials")!r}).read()
            got = 0
            while got < {size}:
                got += len(s.recv(1 << 20))
            s.close()
        """), backend="tracepoint")
    finally:
        thread.join(30)
        server.close()
    assert result.exit_status == 0
    assert sent == [size, b""]
    assert [e.name for e in result.events] == ["mirage_trap"]
