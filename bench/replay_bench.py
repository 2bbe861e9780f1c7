#!/usr/bin/env python3
"""Replay speed: `kvmtrace analyze` of a realistic 10 M-event Parquet trace.

Generates a trace of many VMs and vCPUs (mostly high-rate guest-run evidence: kvm_entry /
kvm_exit / kvm_mmu_set_spte / page faults / emulation, plus kvm_pv_tlb_flush on vCPU loads,
shadow-page events, guest walker events and flush windows), writes it as Parquet, then
measures in this same run:

- analyze: kvmtrace.pipeline.offline.analyze_path on the Parquet file (events per CPU second of
  the one analysing process, and by wall time);
- baseline: a plain per-event Python loop over the same events read the same way
  (iterate rows, dispatch on kind to a small handler) -> the speed ratio;
- peak memory of each analysis, in a fresh child process (its own VmHWM), for a 2 M- and a 10 M-event
  trace: bounded memory means the two are close.

Usage: python3 bench/replay_bench.py [--events 10000000] [--keep DIR]
Targets (docs/design.md §6): >= 10 M events/s on one core, >= 10x the loop, memory not growing.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from kvmtrace.sources.frame import from_rows
from kvmtrace.schema import Kind, TraceMeta, empty_columns
from kvmtrace.sources.native import TraceWriter

N_VMS = 64
VCPUS_PER_VM = 8
PATHS_PER_VM = 16                      # guest page-table paths (L3, L2, L1 tables) per VM
CHUNK = 1 << 20
ROLE = 0x3700

# Event blocks, as one host CPU emits them for one vCPU, and their weights per 10 000
# blocks.  Each position: (kind, level, which gfn, need_flush, value) where "which gfn"
# picks the root / L3 / L2 / L1 / data frame of the block's guest page-table path.
K = Kind
R, L3, L2, L1, DATA, NONE = range(6)
TEMPLATES = {
    "run": (6000, [(K.GUEST_ENTRY, -1, NONE, -1, 0), (K.GUEST_EXIT, -1, NONE, -1, 30)]),
    "fault": (1500, [(K.PAGE_FAULT, -1, NONE, -1, 0), (K.WALK_START, -1, NONE, -1, 0),
                     (K.WALK_ELEMENT, 4, L3, -1, 0), (K.WALK_ELEMENT, 3, L2, -1, 0),
                     (K.WALK_ELEMENT, 2, L1, -1, 0), (K.WALK_ELEMENT, 1, DATA, -1, 0),
                     (K.SPTE_INSTALL, 1, DATA, -1, 0), (K.GUEST_ENTRY, -1, NONE, -1, 0),
                     (K.GUEST_EXIT, -1, NONE, -1, 48)]),
    "io": (1000, [(K.EMULATE, -1, NONE, -1, 0), (K.PIO, -1, NONE, -1, 0x70),
                  (K.USERSPACE_EXIT, -1, NONE, -1, 2)]),
    "load": (1000, [(K.FLUSH_REQUEST_PV, -1, NONE, 0, 0), (K.GUEST_ENTRY, -1, NONE, -1, 0),
                    (K.GUEST_EXIT, -1, NONE, -1, 1)]),
    "build": (20, [(K.PAGE_FAULT, -1, NONE, -1, 0), (K.WALK_START, -1, NONE, -1, 0),
                   (K.WALK_ELEMENT, 4, L3, -1, 0), (K.WALK_ELEMENT, 3, L2, -1, 0),
                   (K.WALK_ELEMENT, 2, L1, -1, 0), (K.WALK_ELEMENT, 1, DATA, -1, 0),
                   (K.SP_GET, 3, L3, -1, 0), (K.SP_GET, 2, L2, -1, 0), (K.SP_GET, 1, L1, -1, 0),
                   (K.SPTE_INSTALL, 1, DATA, -1, 0), (K.GUEST_ENTRY, -1, NONE, -1, 0)]),
    # vCPU A writes its own last-level table (the SP goes unsync), then a flush of that
    # vCPU is serviced with the sync (5.16+ behaviour) before it runs again.
    "unsync_flush": (25, [(K.PAGE_FAULT, -1, NONE, -1, 0), (K.WALK_START, -1, NONE, -1, 0),
                          (K.WALK_ELEMENT, 4, L3, -1, 0), (K.WALK_ELEMENT, 3, L2, -1, 0),
                          (K.WALK_ELEMENT, 2, L1, -1, 0), (K.WALK_ELEMENT, 1, L1, -1, 0),
                          (K.SP_UNSYNC, 1, L1, -1, 0), (K.SPTE_INSTALL, 1, L1, -1, 0),
                          (K.GUEST_ENTRY, -1, NONE, -1, 0), (K.GUEST_EXIT, -1, NONE, -1, 30),
                          (K.FLUSH_REQUEST_PV, -1, NONE, 1, 0), (K.SP_SYNC, 1, L1, -1, 0),
                          (K.GUEST_ENTRY, -1, NONE, -1, 0)]),
    "flush_clean": (20, [(K.FLUSH_REQUEST_PV, -1, NONE, 1, 0), (K.GUEST_ENTRY, -1, NONE, -1, 0)]),
    # The bug: the flush is serviced without a sync (then the SP is zapped).
    "unsync_flush_nosync": (1, [(K.SP_UNSYNC, 1, L1, -1, 0), (K.GUEST_ENTRY, -1, NONE, -1, 0),
                                (K.GUEST_EXIT, -1, NONE, -1, 30),
                                (K.FLUSH_REQUEST_PV, -1, NONE, 1, 0),
                                (K.GUEST_ENTRY, -1, NONE, -1, 0), (K.SP_ZAP, 1, L1, -1, 0)]),
    "zap": (2, [(K.SP_ZAP, 1, L1, -1, 0)]),
}


def _template_table():
    kinds, levels, which, nf, val, offs, lens, weights = [], [], [], [], [], [], [], []
    for weight, rows in TEMPLATES.values():
        offs.append(len(kinds))
        lens.append(len(rows))
        weights.append(weight)
        for kind, level, w, need_flush, value in rows:
            kinds.append(int(kind)); levels.append(level); which.append(w)
            nf.append(need_flush); val.append(value)
    p = np.array(weights, dtype=float)
    return (np.array(kinds, np.uint8), np.array(levels, np.int8), np.array(which),
            np.array(nf, np.int8), np.array(val, np.int64), np.array(offs), np.array(lens),
            p / p.sum())


def _prologue(n_threads: int) -> pd.DataFrame:
    """Every vCPU loads its MMU (root get_page) and the VM's paths are built once."""
    rows = []
    for t in range(n_threads):
        vm, vc = divmod(t, VCPUS_PER_VM)
        base = {"tgid": 100_000 + vm, "tid": 200_000 + t, "cpu": t % 64,
                "comm": f"CPU {vc}/KVM"}
        rows.append({**base, "kind": int(K.FLUSH_REQUEST_PV), "vcpu": vc, "need_flush": 0})
        rows.append({**base, "kind": int(K.SP_GET), "gfn": _gfn(vm, 0, R), "role": ROLE | 4,
                     "level": 4, "created": int(vc == 0)})
        if vc == 0:
            for path in range(PATHS_PER_VM):
                for level, w in ((3, L3), (2, L2), (1, L1)):
                    rows.append({**base, "kind": int(K.SP_GET), "gfn": _gfn(vm, path, w),
                                 "role": ROLE | level, "level": level, "created": 1})
    for i, r in enumerate(rows):
        r["ts"] = i
    return from_rows(rows)


def _gfn(vm, path, which):
    """Guest frame of a path's table (per VM: one shared root, distinct tables per path)."""
    return np.where(which == R, 0x1000, 0x10_0000 * (1 + which) + path * 16)


def generate(path: str, n: int, seed: int = 1) -> dict:
    """Write an n-event Parquet trace of event blocks; returns what it put in."""
    rng = np.random.default_rng(seed)
    kinds, levels, which, nfs, vals, offs, lens, p = _template_table()
    n_threads = N_VMS * VCPUS_PER_VM
    names = np.array([f"CPU {t % VCPUS_PER_VM}/KVM" for t in range(n_threads)], dtype=object)
    meta = TraceMeta(source="generated", source_format="kvmtrace-bench", tdp=False,
                     kvm_backend="kvm_intel", clock="boot")
    flushes = 0
    written = 0
    with TraceWriter(path, meta) as w:
        pro = _prologue(n_threads)
        w.write(pro)
        written += len(pro)
        while written < n:
            m_blocks = int(CHUNK / 3.3)
            t = rng.choice(len(lens), m_blocks, p=p)
            blen = lens[t]
            total = int(blen.sum())
            starts = np.cumsum(blen) - blen
            pos = np.arange(total) - np.repeat(starts, blen)
            idx = np.repeat(offs[t], blen) + pos
            block_thread = np.repeat(rng.integers(0, n_threads, m_blocks), blen)
            block_path = np.repeat(rng.integers(0, PATHS_PER_VM, m_blocks), blen)
            vm = block_thread // VCPUS_PER_VM
            keep = min(total, n - written, CHUNK)     # row groups of exactly CHUNK rows
            sl = slice(0, keep)
            c = empty_columns(keep)
            kind = kinds[idx][sl]
            wh = which[idx][sl]
            gfn = _gfn(vm[sl], block_path[sl], wh)
            c["ts"][:] = 1_000 + (written + np.arange(keep)) * 50
            c["tgid"][:] = 100_000 + vm[sl]
            c["tid"][:] = 200_000 + block_thread[sl]
            c["cpu"][:] = block_thread[sl] % 64
            carries = np.isin(kind, [K.GUEST_ENTRY, K.GUEST_EXIT, K.FLUSH_REQUEST_PV])
            c["vcpu"][:] = np.where(carries, block_thread[sl] % VCPUS_PER_VM, -1)
            c["kind"][:] = kind
            c["level"][:] = levels[idx][sl]
            c["need_flush"][:] = nfs[idx][sl]
            sp = np.isin(kind, [K.SP_GET, K.SP_UNSYNC, K.SP_SYNC, K.SP_ZAP])
            c["gfn"][:] = np.where(sp | (kind == K.SPTE_INSTALL), gfn, -1)
            c["role"][:] = np.where(sp, ROLE | levels[idx][sl].astype(np.int64), -1)
            c["created"][:] = np.where(kind == K.SP_GET, 0, -1)
            c["value"][:] = np.where(kind == K.WALK_ELEMENT, (gfn << 12) | 0x67, vals[idx][sl])
            c["comm"] = names[block_thread[sl]]
            flushes += int(np.count_nonzero((kind == K.FLUSH_REQUEST_PV) & (c["need_flush"] == 1)))
            w.write(pd.DataFrame(c))
            written += keep
    return {"events": written, "threads": n_threads, "vms": N_VMS, "flush_requests": flushes}


def baseline_loop(path: str) -> tuple[float, int]:
    """A plain per-event Python loop: read the same columns the same way, iterate every row
    and dispatch on its kind to a small handler (open a window on a PV flush request, close
    it at the thread's next evidence).  No model at all: a lower bound for per-event Python."""
    from kvmtrace.analysis.selection import NEEDED
    from kvmtrace.sources.stream import open_events
    t0 = time.process_time()
    chunks = open_events(path, columns=NEEDED, chunk_rows=CHUNK).chunks
    open_windows: dict[int, int] = {}
    closed = 0

    def opener(row):
        if row[9] > 0:                   # need_flush
            open_windows[row[2]] = row[0]

    def evidence(row):
        nonlocal closed
        if open_windows.pop(row[2], None) is not None:
            closed += 1

    def other(row):
        pass
    handlers = {int(k): other for k in Kind}
    handlers[int(Kind.FLUSH_REQUEST_PV)] = opener
    for k in (Kind.GUEST_ENTRY, Kind.GUEST_EXIT, Kind.SPTE_INSTALL, Kind.PAGE_FAULT,
              Kind.WALK_START, Kind.EMULATE, Kind.PIO, Kind.MMIO, Kind.HYPERCALL,
              Kind.USERSPACE_EXIT):
        handlers[int(k)] = evidence
    for chunk in chunks:
        for row in zip(*(chunk.cols[name].tolist() for name in NEEDED)):
            handlers[row[4]](row)
    return time.process_time() - t0, closed


def per_event_model(path: str) -> tuple[float, str]:
    """The same model with every event through its handler (Replayer(per_event=True))."""
    from kvmtrace.analysis import Replayer
    from kvmtrace.analysis.selection import NEEDED
    from kvmtrace.sources.stream import open_events
    t0 = time.process_time()
    stream = open_events(path, columns=NEEDED, chunk_rows=CHUNK)
    rep = Replayer(stream.meta, per_event=True)
    for chunk in stream.chunks:
        rep.feed(chunk)
    res = rep.finish()
    return time.process_time() - t0, res.verdict


def _peak_rss_kb() -> int:
    """This process's own peak RSS: VmHWM of /proc/self/status.

    Not getrusage(RUSAGE_SELF).ru_maxrss: Linux keeps that across execve, so a child the
    bench forks (multiprocessing's spawn forks, then execs a fresh Python) reports the bench
    parent's peak, inherited at the fork.  VmHWM belongs to the address space, which exec
    replaces."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _analyze_child(path: str, queue) -> None:
    from kvmtrace.pipeline.offline import analyze_path
    from kvmtrace.sources.native import use_system_memory_pool
    use_system_memory_pool()            # as `kvmtrace analyze` runs (kvmtrace.cli.main)
    t0, c0 = time.perf_counter(), time.process_time()
    r = analyze_path(path)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    peak_kb = _peak_rss_kb()
    queue.put({"seconds": dt, "cpu_seconds": dc, "events": r.events, "handled": r.handled,
               "verdict": r.verdict, "windows": r.windows, "peak_rss_mb": peak_kb / 1024})


def analyze_in_child(path: str) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_analyze_child, args=(path, q))
    proc.start()
    out = q.get()
    proc.join()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--small", type=int, default=2_000_000, help="events in the memory comparison trace")
    ap.add_argument("--keep", metavar="DIR", help="write the traces here and keep them")
    args = ap.parse_args()
    from kvmtrace.sources.native import use_system_memory_pool
    use_system_memory_pool()            # the baselines allocate as analyze does
    tmp = args.keep or tempfile.mkdtemp(prefix="kvmtrace-bench-")
    os.makedirs(tmp, exist_ok=True)
    big = os.path.join(tmp, "bench_big.parquet")
    small = os.path.join(tmp, "bench_small.parquet")
    try:
        t0 = time.perf_counter()
        info = generate(big, args.events)
        generate(small, args.small, seed=2)
        print(f"generated {info['events']:,} events ({info['vms']} VMs, {info['threads']} vCPU "
              f"threads, {info['flush_requests']:,} flush requests) in "
              f"{time.perf_counter() - t0:.1f} s; {os.path.getsize(big) / info['events']:.2f} "
              "bytes/event on disk", flush=True)
        res = analyze_in_child(big)
        res_small = analyze_in_child(small)
        base_s, base_closed = baseline_loop(big)
        model_s, model_verdict = per_event_model(big)
        n = res["events"]
        rate = n / res["cpu_seconds"]          # CPU time: the host is shared, wall time is noisy
        base_rate = n / base_s
        model_rate = n / model_s
        print(f"analyze   {n:,} events in {res['cpu_seconds']:.2f} s CPU ({res['seconds']:.2f} s "
              f"wall) = {rate / 1e6:.1f} M events/s on one core ({n / res['seconds'] / 1e6:.1f} "
              f"M/s by wall time); {res['handled']:,} events "
              f"({100 * res['handled'] / n:.2f} %) went through the per-event handlers")
        print(f"          verdict {res['verdict']}, windows {json.dumps(res['windows'])}")
        print(f"baseline  plain per-event Python loop (rows dispatched on kind, no model): "
              f"{base_s:.2f} s CPU = {base_rate / 1e6:.2f} M events/s ({base_closed:,} windows)")
        print(f"baseline  the same model, every event through its handler: {model_s:.2f} s CPU = "
              f"{model_rate / 1e6:.2f} M events/s (verdict {model_verdict})")
        print(f"ratio     analyze / plain loop = {rate / base_rate:.1f}x; "
              f"analyze / per-event model = {rate / model_rate:.1f}x")
        print(f"memory    peak RSS of the analysing process: {args.small:,} events "
              f"{res_small['peak_rss_mb']:.0f} MB; {n:,} events {res['peak_rss_mb']:.0f} MB")
        print(f"targets   >= 10 M events/s: {'met' if rate >= 10e6 else 'NOT met'}; >= 10x the "
              f"plain loop: {'met' if rate >= 10 * base_rate else 'NOT met'}; >= 10x the "
              f"per-event model: {'met' if rate >= 10 * model_rate else 'NOT met'}; memory "
              f"bounded: {'yes' if res['peak_rss_mb'] < 1.5 * res_small['peak_rss_mb'] else 'NO'}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
