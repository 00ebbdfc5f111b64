"""bcc's Python ring-buffer consumer, the peer runtimeguard's consumer is
compared with: the same openat exit tracepoint, filtered to one pid, a fixed
64-byte record submitted without a wake-up, drained every --drain-ms, each
record decoded to a Python object in a per-event callback (as bcc tools do).

Runs under the system Python, where Debian's python3-bpfcc lives:
    /usr/bin/python3 bench/bcc/peer.py --pid PID [--drain-ms 5]
Prints "ready" once attached; on SIGTERM/SIGINT prints one JSON line: events,
lost (always 0: bcc does not count failed reservations) and cpu_ns.
"""
import argparse
import json
import resource
import signal
import sys
import time

from bcc import BPF

PROGRAM = r"""
struct rec { u32 pid; u32 tid; u64 ts; u64 pad[6]; };  /* 64 bytes */
BPF_RINGBUF_OUTPUT(events, RING_PAGES);
TRACEPOINT_PROBE(syscalls, sys_exit_openat) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID)
        return 0;
    struct rec *r = events.ringbuf_reserve(sizeof(struct rec));
    if (!r)
        return 0;
    r->pid = id >> 32;
    r->tid = (u32)id;
    r->ts = bpf_ktime_get_ns();
    events.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    return 0;
}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--drain-ms", type=int, default=5)
    parser.add_argument("--ring-bytes", type=int, default=8 << 20)
    args = parser.parse_args()

    text = PROGRAM.replace("TARGET_PID", str(args.pid)).replace("RING_PAGES", str(args.ring_bytes // 4096))
    bpf = BPF(text=text)
    table = bpf["events"]
    count = 0

    def on_event(ctx, data, size):
        nonlocal count
        table.event(data)  # the record as a Python (ctypes) object
        count += 1

    table.open_ring_buffer(on_event)
    stop = False

    def finish(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", flush=True)
    while not stop:
        # No wake-ups, so polling would only time out: drain on a timer, as
        # the C reference does.
        time.sleep(args.drain_ms / 1000)
        bpf.ring_buffer_consume()
    bpf.ring_buffer_consume()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ns = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) * 1e9
    print(json.dumps({"events": count, "lost": 0, "cpu_ns": cpu_ns}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
