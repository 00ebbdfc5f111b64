"""Tracer behaviour: loss accounting, filters, lifecycle, faults."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import runtimeguard
from runtimeguard import BPFError, PrivilegeError, Tracer, TracerStateError
from conftest import ROOT, held_program_ids, kernel_objects, rg_program_ids
from helpers import drain, python_child, wait_for


def _is_echo(token):
    return lambda e: e.name == "process_exec" and e.data.argv == ["/bin/echo", token]


@pytest.mark.root
def test_overload_delivered_plus_lost_equals_produced():
    """Stop consuming, produce more records than the ring holds: every one is
    either delivered or counted lost, and the loss shows in the stream."""
    produced = 3000
    child = python_child(textwrap.dedent(f"""
        import os, sys
        sys.stdin.readline()
        for _ in range({produced}):
            os.close(os.open("/dev/null", os.O_RDONLY))
        print("done", flush=True)
        sys.stdin.readline()
    """))
    try:
        with Tracer(events=["file_open"], pids=[child.pid], ring_buffer_size=16384) as t:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "done"
            events = drain(t)
            stats = t.stats()
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    opens = [e for e in events if e.name == "file_open" and e.data.path == "/dev/null"]
    notices = [e for e in events if e.name == "lost"]
    lost = stats.lost.get("file_open", 0)
    assert lost > 0, "the ring should have overflowed"
    assert len(opens) + lost == produced
    assert sum(n.data.by_kind.get("file_open", 0) for n in notices) == lost
    # Sequence numbers show the gaps: per CPU they only ever increase.
    last = {}
    for e in opens:
        assert e.seq > last.get(e.cpu, -1)
        last[e.cpu] = e.seq


@pytest.mark.root
def test_pid_filter_runs_in_the_kernel():
    token = secrets.token_hex(6)
    child = python_child("import sys, subprocess; sys.stdin.readline(); "
                         f"subprocess.run(['/bin/echo', '{token}-in']); print('ok', flush=True)")
    try:
        with Tracer(events=["process_fork"], pids=[child.pid]) as t:
            subprocess.run(["/bin/echo", token + "-out"], capture_output=True)
            child.stdin.write("go\n")
            child.stdin.flush()
            child.stdout.readline()
            events = drain(t)
    finally:
        child.wait(timeout=10)
    assert events and all(e.pid == child.pid for e in events)
    assert t.stats().delivered.get("process_fork") == len(events)


@pytest.mark.root
def test_comm_filter():
    token = secrets.token_hex(6)
    with Tracer(events=["process_exec"], comms=["echo"]) as t:
        subprocess.run(["/bin/true"])
        subprocess.run(["/bin/echo", token], capture_output=True)
        events = drain(t)
    assert [e.data.argv for e in events] == [["/bin/echo", token]]


@pytest.mark.root
def test_cgroup_filter_covers_the_subtree(tmp_path):
    from runtimeguard.environment import cgroup2_mount

    parent = os.path.join(cgroup2_mount(), f"rg-test-{secrets.token_hex(4)}")
    leaf = os.path.join(parent, "leaf")
    os.makedirs(leaf)
    token = secrets.token_hex(6)
    try:
        with Tracer(events=["process_exec"], cgroups=[parent]) as t:
            subprocess.run(["/bin/echo", token + "-outside"], capture_output=True)
            def enter_leaf():
                with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                    f.write("0")
            subprocess.run(["/bin/echo", token], capture_output=True, preexec_fn=enter_leaf)
            events = drain(t)
    finally:
        os.rmdir(leaf)
        os.rmdir(parent)
    assert [e.data.argv for e in events] == [["/bin/echo", token]]
    assert events[0].workload.cgroup.endswith("/leaf")


@pytest.mark.root
def test_two_tracers_do_not_steal_events_and_close_independently():
    token = secrets.token_hex(6)
    with Tracer(events=["process_exec"]) as a, Tracer(events=["process_exec"]) as b:
        subprocess.run(["/bin/echo", token], capture_output=True)
        wait_for(a, _is_echo(token))
        wait_for(b, _is_echo(token))
        a.close()
        token2 = secrets.token_hex(6)
        subprocess.run(["/bin/echo", token2], capture_output=True)
        wait_for(b, _is_echo(token2))
        with pytest.raises(TracerStateError):
            a.poll(0)


@pytest.mark.root
def test_start_and_close_are_idempotent():
    t = Tracer(events=["process_exec"])
    t.start()
    t.start()
    t.close()
    t.close()
    assert not t.running
    with pytest.raises(TracerStateError):
        t.start()


@pytest.mark.root
def test_callback_exception_surfaces_and_later_events_are_kept():
    tokens = [secrets.token_hex(4) for _ in range(3)]
    seen = []

    def callback(ev):
        if ev.name == "process_exec" and ev.data.argv[1:] == [tokens[0]]:
            raise RuntimeError("callback failed")
        seen.append(ev)

    with Tracer(events=["process_exec"], comms=["echo"], callback=callback) as t:
        for token in tokens:
            subprocess.run(["/bin/echo", token], capture_output=True)
        time.sleep(0.1)
        with pytest.raises(RuntimeError, match="callback failed"):
            while True:
                t.poll(1)
        drain(t)
    assert [e.data.argv[1] for e in seen] == tokens[1:]


@pytest.mark.root
def test_async_iteration_wakes_through_the_event_loop():
    token = secrets.token_hex(6)

    async def main():
        with Tracer(events=["process_exec"], comms=["echo"]) as t:
            proc = await asyncio.create_subprocess_exec("/bin/echo", token, stdout=asyncio.subprocess.DEVNULL)
            await proc.wait()
            async def first():
                async for ev in t:
                    if ev.data.argv == ["/bin/echo", token]:
                        return ev
            return await asyncio.wait_for(first(), timeout=3)

    ev = asyncio.run(main())
    assert ev.data.argv[1] == token


@pytest.mark.root
def test_poll_releases_the_gil():
    with Tracer(events=["process_exec"], comms=["no-such-comm"]) as t:
        counter = 0
        done = threading.Event()

        def spin():
            nonlocal counter
            while not done.is_set():
                counter += 1

        worker = threading.Thread(target=spin)
        worker.start()
        try:
            t.poll(0.5)
        finally:
            done.set()
            worker.join()
    # With the GIL held for the whole wait the counter would barely move.
    assert counter > 100_000


@pytest.mark.root
def test_forked_child_cannot_consume_and_does_not_detach_the_parent():
    token = secrets.token_hex(6)
    with Tracer(events=["process_exec"], comms=["echo"]) as t:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    t.poll(0)
                except TracerStateError:
                    code = 0 if not kernel_objects() else 2
                t.close()
            finally:
                os.write(w, b"x")
                os._exit(code)
        os.read(r, 1)
        _, status = os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
        assert os.waitstatus_to_exitcode(status) == 0
        subprocess.run(["/bin/echo", token], capture_output=True)
        wait_for(t, _is_echo(token))


@pytest.mark.root
def test_no_descriptor_leaks_across_exec():
    with Tracer(events=["process_exec"]):
        out = subprocess.run(["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True, close_fds=False).stdout
    assert "bpf" not in out and "perf_event" not in out


@pytest.mark.root
def test_not_root_gets_a_clear_error_and_loads_nothing():
    # Root, but with every capability dropped from the bounding set.
    code = textwrap.dedent("""
        import sys
        import runtimeguard
        try:
            runtimeguard.Tracer().start()
        except runtimeguard.PrivilegeError as e:
            print(e)
            sys.exit(0)
        sys.exit(1)
    """)
    out = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "CAP_BPF" in out.stdout and "CAP_PERFMON" in out.stdout


@pytest.mark.root
def test_guard_run_without_privileges_says_what_is_missing_and_makes_no_cgroup(tmp_path):
    code = textwrap.dedent("""
        import os, sys
        import runtimeguard
        from runtimeguard import environment
        before = set(os.listdir(environment.cgroup2_mount()))
        try:
            runtimeguard.guard(runtimeguard.Policy.from_text("version: 1"), ["/bin/true"])
        except runtimeguard.PrivilegeError as e:
            print(e)
            sys.exit(0 if set(os.listdir(environment.cgroup2_mount())) == before else 2)
        sys.exit(1)
    """)
    out = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert "CAP_BPF" in out.stdout and "CAP_SYS_ADMIN" in out.stdout


@pytest.mark.root
def test_low_memlock_limit_still_loads():
    code = "import runtimeguard; t = runtimeguard.Tracer().start(); t.poll(0); t.close(); print('ok')"
    out = subprocess.run(["prlimit", "--memlock=65536", sys.executable, "-c", code], capture_output=True,
                         text=True, cwd=ROOT, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr


ATTACH_FAILURE_PROBE = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    import runtimeguard
    from runtimeguard import environment
    from conftest import kernel_objects
    environment.prepare()
    # Hide one tracepoint of the third sensor: its attach fails after the
    # process and file sensors' programs are already attached.
    hidden = environment.tracefs_root() + "/events/syscalls/sys_exit_connect"
    environment._mount("none", hidden, "tmpfs")
    try:
        runtimeguard.Tracer(events=runtimeguard.ALL_EVENTS).start()
    except runtimeguard.BPFError as e:
        print(str(e).splitlines()[0])
        print("left:", kernel_objects())
""")


@pytest.mark.root
def test_attach_failure_midway_rolls_back_everything():
    """A failure after other programs are attached: the error names the
    program, and everything attached before it is detached again."""
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                          ATTACH_FAILURE_PROBE], capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith("attaching BPF program rg_connect_exit (tp/syscalls/sys_exit_connect)")
    assert lines[1] == "left: []"


@pytest.mark.root
def test_descriptor_limit_too_low_is_refused_before_loading():
    code = "import runtimeguard; runtimeguard.Tracer().start()"
    out = subprocess.run(["prlimit", "--nofile=64", sys.executable, "-c", code], capture_output=True,
                         text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1 and "RLIMIT_NOFILE leaves" in out.stderr, out.stderr


@pytest.mark.root
def test_sigint_while_polling_detaches_promptly():
    code = textwrap.dedent("""
        import runtimeguard
        t = runtimeguard.Tracer().start()
        try:
            print("ready", flush=True)
            t.poll()
        except KeyboardInterrupt:
            t.close()
            print("closed", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "closed"
    proc.wait(timeout=5)
    # Detaching waits for RCU grace periods: about 0.9 s here, whatever the program count.
    assert time.monotonic() - sent < 1.5


@pytest.mark.root
def test_sigkilled_tracer_leaves_nothing_attached():
    code = "import runtimeguard, time; t = runtimeguard.Tracer().start(); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "ready"
        held = held_program_ids(proc.pid)
        assert held and held <= rg_program_ids()
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 3
    while held & rg_program_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not held & rg_program_ids()


@pytest.mark.root
def test_stats_report_ring_and_polls():
    with Tracer(events=["process_exec"], ring_buffer_size=1 << 16) as t:
        subprocess.run(["/bin/true"])
        drain(t)
        s = t.stats()
    assert s.ring_buffer_size == 1 << 16 and 0 <= s.ring_buffer_fill <= 1
    assert s.polls > 0 and s.bytes > 0 and s.malformed == 0 and s.delivered.get("process_exec", 0) >= 1


def test_bad_arguments_are_refused_before_loading():
    with pytest.raises(ValueError, match="unknown event"):
        Tracer(events=["process_exce"])
    with pytest.raises(ValueError, match="power of two"):
        Tracer(ring_buffer_size=5000)
    with pytest.raises(ValueError, match="cgroup"):
        Tracer(cgroups=["/no/such/cgroup"])


@pytest.mark.root
def test_close_from_another_thread_ends_a_blocking_iteration():
    """close() while another thread waits in poll: it returns within a slice,
    and the iterating thread ends cleanly instead of touching freed memory."""
    t = Tracer(events=["process_exec"], pids=[2**22 + 1]).start()
    ended = threading.Event()

    def iterate():
        for _ in t:
            pass
        ended.set()

    worker = threading.Thread(target=iterate)
    worker.start()
    time.sleep(0.3)
    started = time.monotonic()
    t.close()
    worker.join(timeout=5)
    assert ended.is_set() and time.monotonic() - started < 3


@pytest.mark.root
def test_only_the_asked_kinds_are_returned():
    # The process sensor always runs (it feeds the process table): its events
    # reach the consumer, and must not reach the caller who asked for opens.
    with Tracer(events=["file_open"]) as t:
        subprocess.run(["sh", "-c", "cat /etc/hostname > /dev/null; true"], check=True)
        events, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline and not any(ev.name == "file_open" and ev.data.path == "/etc/hostname"
                                                      for ev in events):
            events += t.poll(0.2)
        events += drain(t)
        stats = t.stats()
    assert any(ev.name == "file_open" and ev.data.path == "/etc/hostname" for ev in events)
    assert {ev.name for ev in events} <= {"file_open", "lost"}
    assert stats.delivered.get("process_exec", 0) >= 1 and stats.delivered.get("process_fork", 0) >= 1


@pytest.mark.root
def test_a_poll_loop_gets_batches_not_a_few_events_per_call():
    # The C poll drains on a rhythm (max_latency_ms, a quarter-full ring, a
    # backlog), not on every call: a busy loop of polls must not be handed the
    # few records that arrived since the previous call.
    opens = 20_000
    child = python_child(f"import os, sys\nsys.stdin.readline()\nfor _ in range({opens}):\n"
                         "    os.close(os.open('/dev/null', os.O_RDONLY))\n")
    with Tracer(events=["file_open"], pids=[child.pid]) as t:
        child.stdin.write("go\n")
        child.stdin.flush()
        seen, deadline = 0, time.monotonic() + 20
        while seen < opens and time.monotonic() < deadline:
            seen += sum(ev.data.path == "/dev/null" for ev in t.poll(0.05))
        polls = t.stats().polls
    assert child.wait(timeout=10) == 0
    assert seen == opens
    # Draining on every call gave about 7 events a poll here; 50 allows a
    # child slowed to 8 s by a busy machine (400 drains of 20 ms).
    assert opens / polls >= 50, f"{polls} polls for {opens} events"


@pytest.mark.root
@pytest.mark.parametrize("events, loaded", [
    (["net_connect"], {"rg_connect_exit"}),
    (["net_sendmsg"], {"rg_sendto_exit", "rg_sendmsg_exit"}),
    (["ptrace"], {"rg_ptrace_exit"}),
    (["ptrace", "net_connect", "net_sendmsg"], {"rg_ptrace_exit", "rg_connect_exit", "rg_sendto_exit",
                                                "rg_sendmsg_exit"}),
])
def test_only_the_programs_of_the_kinds_asked_for_are_loaded(events, loaded):
    """A sensor makes two kinds; the programs of the kind nobody asked for
    would run on every such syscall on the host for nothing."""
    observers = {"rg_connect_exit", "rg_sendto_exit", "rg_sendmsg_exit", "rg_ptrace_exit", "rg_vm_readv_exit",
                 "rg_vm_writev_exit"}
    with Tracer(events=events) as t:
        assert set(t.program_stats()) & observers == loaded
