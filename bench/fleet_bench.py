"""Fleet bench (issue 13): a simulated fleet from the real fixtures, each engine against a
sequential loop over the same files in the same run, and peak memory in fresh processes.

The dataset: ``--hosts`` hosts (default 200) x 8 VMs, each VM a real recording of
``fixtures/real`` (the 2-vCPU, no-flush, 3-address-space and stress exercises and four
flush-path recordings), hard-linked into
``DIR/host=<h>/vm=<tgid>/part-*.parquet`` (11 215 events a host: real recordings are dense
in model events, which replay at some 10^5 events/s per core, unlike the synthetic
10 M-event trace of bench/replay_bench.py).  Every 25th host runs the 3-address-space
recording with one sync removed (``exercise_3space_nosync``: a violation), every 10th a
2-vCPU recording with 3 events lost mid-trace (a LOST marker of its VM).

Per run: the baseline is ``analyze_path`` of every part, one after another, in this
process (the same replay with no engine around it); then ``kvmtrace fleet DIR --engine E
--json`` for each engine in a fresh process whose process tree is sampled every 0.1 s for
its summed RSS (a pool's workers and Spark's JVM included).  Rows of every engine must be
identical (the bench stops otherwise).  Prints events/s, the ratio to the same run's
sequential loop, and the peak RSS; with ``--runs N`` the ranges over N runs, and the load
average while it ran (other work shares the machine).

    python3 bench/fleet_bench.py [--hosts 200] [--runs 3] [--engines local,duckdb,spark]
                                 [-j N] [--dir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmtrace.schema import Kind  # noqa: E402
from kvmtrace.sources.dataset import write_dataset  # noqa: E402
from kvmtrace.sources.stream import load  # noqa: E402

REAL = ROOT / "fixtures" / "real"
VMS = ["exercise_2vcpu", "exercise_2vcpu_noflush", "exercise_3space", "exercise_4vcpu_stress",
       "flushvia_all", "flushvia_cr3", "flushvia_cr4-pge", "flushvia_pvm-hypercall"]
VIOLATION_EVERY = 25
LOST_EVERY = 10


def templates(work: Path) -> dict[str, Path]:
    """One dataset part per fixture (and the violation and lost variants), to link from."""
    out = {}
    for name in VMS + ["exercise_3space_nosync"]:
        trace = load(REAL / f"{name}.parquet")
        [part] = write_dataset(work / "templates" / name, trace.events, trace.meta, host="t")
        out[name] = part.path
    trace = load(REAL / "exercise_2vcpu.parquet")
    ev = trace.events
    mid = len(ev) // 2
    lost = ev.iloc[[mid]].copy()
    lost["kind"] = int(Kind.LOST)
    lost["value"] = 3
    import pandas as pd
    ev = pd.concat([ev.iloc[:mid], lost, ev.iloc[mid:]], ignore_index=True)
    [part] = write_dataset(work / "templates" / "lost", ev, trace.meta, host="t")
    out["exercise_2vcpu_lost"] = part.path
    return out


def build(work: Path, hosts: int) -> tuple[Path, list[Path], int]:
    """The fleet dataset of hard links; (root, parts, events)."""
    tmpl = templates(work)
    sizes = {name: load(p).events.shape[0] for name, p in tmpl.items()}
    root = work / "fleet"
    parts, events = [], 0
    for h in range(hosts):
        for name in VMS:
            if name == "exercise_3space" and h % VIOLATION_EVERY == 7:
                name = "exercise_3space_nosync"
            if name == "exercise_2vcpu" and h % LOST_EVERY == 3:
                name = "exercise_2vcpu_lost"
            src = tmpl[name]
            vm_dir = root / f"host=host-{h:04d}" / src.parent.name
            vm_dir.mkdir(parents=True, exist_ok=True)
            dst = vm_dir / src.name
            os.link(src, dst)
            parts.append(dst)
            events += sizes[name]
    return root, parts, events


def sequential(parts: list[Path]) -> float:
    """The baseline: every part analysed in turn, in this process; seconds."""
    from kvmtrace.pipeline.offline import analyze_path
    start = time.monotonic()
    for p in parts:
        analyze_path(p, vm=int(p.parent.name.split("=", 1)[1]))
    return time.monotonic() - start


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of pid and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def engine_run(root: Path, engine: str, jobs: int | None) -> tuple[float, int, list]:
    """`kvmtrace fleet --json` in a fresh process: (seconds, peak tree RSS bytes, rows)."""
    cmd = [sys.executable, "-m", "kvmtrace", "fleet", str(root), "--engine", engine, "--json"]
    if jobs:
        cmd += ["-j", str(jobs)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        out.seek(0)
        text = out.read()
    if proc.returncode not in (0, 1, 3):
        raise SystemExit(f"fleet --engine {engine} exited {proc.returncode}")
    return elapsed, peak, json.loads(text)["rows"]


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}-{format(hi, fmt)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engines", default="local,duckdb,spark")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="kvmtrace-fleet-bench-"))
    if work.exists() and args.dir:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        root, parts, events = build(work, args.hosts)
        engines = [e for e in args.engines.split(",") if e]
        print(f"fleet     {args.hosts} hosts x {len(VMS)} VMs = {len(parts)} parts, {events:,} events "
              f"({args.hosts // VIOLATION_EVERY + (args.hosts % VIOLATION_EVERY > 7)} hosts with "
              f"a violation, {args.hosts // LOST_EVERY + (args.hosts % LOST_EVERY > 3)} with lost events)")
        print(f"machine   {os.cpu_count()} CPUs; -j {args.jobs or os.cpu_count()}")
        results: dict[str, dict[str, list[float]]] = {e: {"rate": [], "ratio": [], "rss": []}
                                                      for e in ["sequential"] + engines}
        loads = []
        for run in range(args.runs):
            loads.append(os.getloadavg()[0])
            base = sequential(parts)
            results["sequential"]["rate"].append(events / base)
            reference = None
            for e in engines:
                elapsed, peak, rows = engine_run(root, e, args.jobs)
                if reference is None:
                    reference = rows
                elif rows != reference:
                    raise SystemExit(f"engine {e} gave other rows than {engines[0]}")
                r = results[e]
                r["rate"].append(events / elapsed)
                r["ratio"].append(base / elapsed)
                r["rss"].append(peak / 2**20)
            loads.append(os.getloadavg()[0])
            print(f"run {run + 1}   sequential {events / base / 1e6:.2f} M events/s; "
                  + "; ".join(f"{e} {results[e]['rate'][-1] / 1e6:.2f} M/s "
                              f"({results[e]['ratio'][-1]:.2f}x, {results[e]['rss'][-1]:.0f} MB)"
                              for e in engines), flush=True)
        verdicts = {}
        for row in reference or []:
            verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
        print(f"rows      identical across engines; VM verdicts {verdicts}")
        print(f"load      1-min load average {min(loads):.1f}-{max(loads):.1f} during the runs")
        print(f"{'engine':<12}{'events/s':>22}{'vs sequential':>18}{'peak RSS (tree)':>20}")
        print(f"{'sequential':<12}{span([v / 1e6 for v in results['sequential']['rate']], '.2f') + ' M':>22}"
              f"{'1.00x':>18}{'-':>20}")
        for e in engines:
            r = results[e]
            print(f"{e:<12}{span([v / 1e6 for v in r['rate']], '.2f') + ' M':>22}"
                  f"{span(r['ratio'], '.2f') + 'x':>18}{span(r['rss'], '.0f') + ' MB':>20}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept      {work}")


if __name__ == "__main__":
    main()
