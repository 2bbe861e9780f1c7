#!/usr/bin/env python3
"""Capture capacity: kvmtrace's bulk ring-buffer consumer vs a plain BCC per-event callback.

Workload: a C loop (compiled here with gcc) calling getppid(2) as fast as one core can for
a fixed time; a probe on syscalls:sys_enter_getppid, filtered in the kernel to that
process, emits one 56-byte record per call into a 16 MiB BPF ring buffer.  Drained by:

  bulk      kvmtrace's Recorder: mmap'd ring read as a numpy array, column chunks (no
            file), as check and watch consume them
  bulk+pq   the same, writing the Parquet trace as `kvmtrace record` does
  callback  BCC's documented way: ring_buffer_poll() with a Python callback per event
            that decodes the event (b["events"].event(data)) and counts it

Printed per mode: events the loop fired, kept, lost (ring buffer full), kept events/s, and
the ratios bulk/callback measured in this run.  Needs root, BCC, kernel headers, gcc.

    sudo python3 bench/capture_bench.py [--seconds 3]
"""
from __future__ import annotations

import argparse
import pyarrow.parquet as pq
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmtrace.sources.live import Recorder                      # noqa: E402
from kvmtrace.sources.live.bccload import import_bcc           # noqa: E402
from kvmtrace.sources.live.selftest import GETPPID              # noqa: E402
from kvmtrace.schema import Kind                                # noqa: E402

RING_PAGES = 8192          # 32 MiB, the recorder's default

LOOP_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
/* Wait for a byte on stdin, then call getppid() for argv[1] seconds or argv[2] times
 * (whichever comes first; 0 = no limit); print the count and the time taken. */
int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    unsigned long limit = argc > 2 ? strtoul(argv[2], 0, 10) : 0;
    char c; if (read(0, &c, 1) != 1) return 1;
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long n = 0; double el = 0;
    for (;;) {
        for (int i = 0; i < 1024; i++) getppid();
        n += 1024;
        clock_gettime(CLOCK_MONOTONIC, &t);
        el = (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
        if (el >= secs || (limit && n >= limit)) break;
    }
    printf("%lu %.6f\n", n, el);
    return 0;
}
"""

BASELINE_C = r"""
struct rec { u64 ts; s64 gfn; s64 value; u32 a, b, tgid, tid; s32 vcpu; u16 cpu; u8 kind, f[9]; };
BPF_RINGBUF_OUTPUT(events, PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TGID) return 0;
    struct rec *r = events.ringbuf_reserve(sizeof(struct rec));
    if (!r) { u32 z = 0; u64 *l = lost.lookup(&z); if (l) (*l)++; return 0; }
    __builtin_memset(r, 0, sizeof(*r));
    r->ts = bpf_ktime_get_ns(); r->tgid = id >> 32; r->tid = (u32)id;
    r->value = args->__syscall_nr;
    events.ringbuf_submit(r, 0);
    return 0;
}
"""


def build_loop(workdir: Path) -> Path:
    src = workdir / "getppid_loop.c"
    src.write_text("#include <stdlib.h>\n" + LOOP_C)
    exe = workdir / "getppid_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def spawn(exe: Path, seconds: float, count: int = 0) -> subprocess.Popen:
    return subprocess.Popen([str(exe), str(seconds), str(count)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, float]:
    out, _ = proc.communicate(timeout=600)
    n, el = out.split()
    return int(n), float(el)


def run_bulk(exe: Path, seconds: float, output: Path | None) -> dict:
    """One recording of the loop; with an output, as `kvmtrace record -o` runs it (no
    per-chunk callback), else with a counting callback on the column chunks, as `check`
    and `watch` run it (sources/chunks.LiveSource: on_columns, no DataFrame)."""
    proc = spawn(exe, seconds)
    kept = [0]

    def count(cols):
        kept[0] += len(cols)
    rec = Recorder(output, tgids=(proc.pid,), tracepoints=[GETPPID],
                   on_columns=None if output is not None else count)
    rec.attach()
    cpu0 = process_cpu_s()
    stop = threading.Event()
    runner = threading.Thread(target=rec.run, kwargs={"stop": stop})
    runner.start()
    t0 = time.monotonic()
    proc.stdin.write("g")
    proc.stdin.flush()
    fired, el = finish(proc)
    stop.set()
    runner.join()
    drained_s = time.monotonic() - t0
    cpu_s = process_cpu_s() - cpu0
    meta = rec.close()
    if output is not None:      # kept: the getppid rows in the finished file
        kinds = pq.read_table(output, columns=["kind"]).column("kind").to_numpy()
        kept[0] = int((kinds != int(Kind.LOST)).sum())
    out = {"fired": fired, "loop_s": el, "kept": kept[0], "lost": meta.lost_events,
           "drain_s": drained_s, "cpu_s": cpu_s}
    if output is not None:
        out["bytes"] = output.stat().st_size
    return out


def process_cpu_s() -> float:
    """CPU seconds of this process, every thread (drain, writer) together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def baseline_program(pid: int, pages: int) -> str:
    return BASELINE_C.replace("TGID", str(int(pid))).replace("PAGES", str(int(pages)))


def run_callback(exe: Path, seconds: float) -> dict:
    bcc, _ = import_bcc()
    proc = spawn(exe, seconds)
    b = bcc.BPF(text=baseline_program(proc.pid, RING_PAGES).encode())
    kept = [0]
    table = b[b"events"]

    def cb(ctx, data, size):
        table.event(data)
        kept[0] += 1
    table.open_ring_buffer(cb)
    done = threading.Event()
    t0 = time.monotonic()
    proc.stdin.write("g")
    proc.stdin.flush()
    waiter = threading.Thread(target=lambda: (finish_into(proc, res), done.set()))
    res: dict = {}
    waiter.start()
    while not done.is_set():
        b.ring_buffer_poll(50)
    b.ring_buffer_consume()
    waiter.join()
    lost_tab = b[b"lost"]
    lost = sum(int(v) for v in lost_tab.getvalue(lost_tab.Key(0)))
    b.cleanup()
    return {"fired": res["n"], "loop_s": res["el"], "kept": kept[0], "lost": lost,
            "drain_s": time.monotonic() - t0}


def drain_capacity(exe: Path, n: int, workdir: Path) -> dict:
    """Fill a 64 MiB ring with n records while nobody reads, then time emptying it."""
    bcc, _ = import_bcc()
    pages = 16384                                   # 64 MiB: 1 Mi slots
    out = {}
    # kvmtrace's consumer: drain + column chunks, as check and watch take them.
    proc = spawn(exe, 600, n)
    kept = [0]
    rec = Recorder(None, tgids=(proc.pid,), tracepoints=[GETPPID], ringbuf_pages=pages,
                   on_columns=lambda cols: kept.__setitem__(0, kept[0] + len(cols)))
    rec.attach()
    proc.stdin.write("g"); proc.stdin.flush(); fired, _ = finish(proc)
    t0 = time.perf_counter()
    rec.collect()
    out["bulk"] = {"records": kept[0], "fired": fired, "s": time.perf_counter() - t0}
    rec.close()
    # The same, writing the Parquet trace as `kvmtrace record -o` does (collect() returns
    # when the writer thread has the last chunk on disk).
    proc = spawn(exe, 600, n)
    rec = Recorder(workdir / "capacity.parquet", tgids=(proc.pid,), tracepoints=[GETPPID],
                   ringbuf_pages=pages)
    rec.attach()
    proc.stdin.write("g"); proc.stdin.flush(); fired, _ = finish(proc)
    t0 = time.perf_counter()
    written = rec.collect()
    out["bulk+pq"] = {"records": written, "fired": fired, "s": time.perf_counter() - t0}
    rec.close()
    # BCC's per-event Python callback.
    proc = spawn(exe, 600, n)
    b = bcc.BPF(text=baseline_program(proc.pid, pages).encode())
    table = b[b"events"]
    got = [0]

    def cb(ctx, data, size):
        table.event(data)
        got[0] += 1
    table.open_ring_buffer(cb)
    proc.stdin.write("g"); proc.stdin.flush(); fired, _ = finish(proc)
    t0 = time.perf_counter()
    b.ring_buffer_consume()
    out["callback"] = {"records": got[0], "fired": fired, "s": time.perf_counter() - t0}
    b.cleanup()
    return out


def finish_into(proc, res):
    res["n"], res["el"] = finish(proc)


def baseline_rate(exe: Path, seconds: float) -> float:
    proc = spawn(exe, seconds)
    proc.stdin.write("g")
    proc.stdin.flush()
    n, el = finish(proc)
    return n / el


def show(name: str, r: dict) -> None:
    rate = r["kept"] / r["loop_s"]
    loss = 100.0 * r["lost"] / max(1, r["fired"])
    extra = f"  {r['bytes'] / max(1, r['kept']):.2f} B/event on disk" if "bytes" in r else ""
    extra += f"  consumer CPU {r['cpu_s'] * 1e9 / max(1, r['kept'] + r['lost']):.0f} ns/event" if "cpu_s" in r else ""
    print(f"{name:9} fired {r['fired']:>10}  kept {r['kept']:>10}  lost {r['lost']:>10} ({loss:5.1f} %)"
          f"  kept {rate / 1e6:6.3f} M ev/s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        exe = build_loop(work)
        untraced = baseline_rate(exe, args.seconds)
        print(f"getppid loop, untraced: {untraced / 1e6:.3f} M calls/s on one core")
        bulk = run_bulk(exe, args.seconds, None)
        show("bulk", bulk)
        bulk_pq = run_bulk(exe, args.seconds, work / "bench.parquet")
        show("bulk+pq", bulk_pq)
        cb = run_callback(exe, args.seconds)
        show("callback", cb)
        capacity = drain_capacity(exe, 900_000, work)
    bulk_cap, cb_cap = capacity["bulk"], capacity["callback"]
    for name, r in capacity.items():
        print(f"consumer capacity, {name:8}: emptied a pre-filled ring of {r['records']} records "
              f"(of {r['fired']}) in {r['s']:.3f} s = {r['records'] / r['s'] / 1e6:6.2f} M ev/s")
    print(f"ratio consumer capacity bulk+pq/bulk  = "
          f"{(capacity['bulk+pq']['records'] / capacity['bulk+pq']['s']) / (bulk_cap['records'] / bulk_cap['s']):.2f}x")
    print(f"ratio consumer capacity bulk/callback = "
          f"{(bulk_cap['records'] / bulk_cap['s']) / (cb_cap['records'] / cb_cap['s']):.1f}x")
    kept_rate = lambda r: r["kept"] / r["loop_s"]
    print(f"ratio kept events/s  bulk/callback    = {kept_rate(bulk) / kept_rate(cb):.1f}x")
    print(f"ratio kept events/s  bulk+pq/callback = {kept_rate(bulk_pq) / kept_rate(cb):.1f}x")
    print(f"producer rate with probe: {bulk['fired'] / bulk['loop_s'] / 1e6:.3f} M ev/s "
          f"(untraced loop {untraced / 1e6:.3f} M/s)")


if __name__ == "__main__":
    main()
