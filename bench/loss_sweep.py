"""Loss sweep: each sync or unsync event of a real capture replaced by a LOST marker in turn.

A lost event can hide anything; the model must then never answer ``ok`` or ``violation``
for a window whose verdict the lost event could change.  For each position this replays
three versions of the capture - as recorded, with the event deleted (what the trace would
look like had the event never happened) and with a LOST marker in its place - and counts
windows of the LOST version whose verdict is ok or violation while the recorded and the
deleted versions disagree about that window (the lost event decides it).  Must be 0.

    PYTHONPATH=$PWD python3 bench/loss_sweep.py [TRACE ...] [--limit N]

Without TRACE: every fixtures/real/*.parquet and the lab ftrace text trace.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace.analysis.replay import Replayer
from kvmtrace.schema import Kind
from kvmtrace.sources.stream import load

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = sorted((ROOT / "fixtures" / "real").glob("*.parquet")) + [
    ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt"]
DECIDED = ("ok", "violation")


def windows(events: pd.DataFrame, meta) -> dict:
    """(tgid, tid, opened ts) -> verdict of every closed window."""
    rep = Replayer(meta)
    out = {}
    for w in rep.feed(events):
        out[(w.tgid, w.tid, w.opened_ts)] = w.verdict
    rep.finish()
    return out


def with_lost(events: pd.DataFrame, i: int) -> pd.DataFrame:
    """Row i replaced by a LOST marker of one event (same time, CPU and VM)."""
    out = events.copy()
    pos = out.index[i]
    for col, missing in (("tid", -1), ("vcpu", -1), ("gfn", -1), ("role", -1), ("level", -1),
                         ("root_count", -1), ("unsync", -1), ("created", -1),
                         ("need_flush", -1), ("comm", "")):
        out.at[pos, col] = missing
    out.at[pos, "kind"] = int(Kind.LOST)
    out.at[pos, "value"] = 1
    return out


def sweep(path: Path, limit: int | None = None) -> dict:
    trace = load(path)
    ev = trace.events.reset_index(drop=True)
    meta = trace.meta
    base = windows(ev, meta)
    positions = np.flatnonzero(ev["kind"].isin([int(Kind.SP_SYNC), int(Kind.SP_UNSYNC)]).to_numpy())
    if limit is not None and len(positions) > limit:
        positions = positions[np.linspace(0, len(positions) - 1, limit).astype(int)]
    bad: list[str] = []
    decided = 0
    for i in positions:
        deleted = windows(ev.drop(index=i), meta)
        lost = windows(with_lost(ev, int(i)), meta)
        for key, verdict in lost.items():
            if verdict not in DECIDED:
                continue
            decided += 1
            if base.get(key) != deleted.get(key) or verdict != base.get(key):
                bad.append(f"{path.name}: {Kind(int(ev.kind[i])).name} row {i} lost: window "
                           f"{key} says {verdict} (recorded: {base.get(key)}, deleted: "
                           f"{deleted.get(key)})")
    return {"trace": path.name, "positions": len(positions), "decided": decided, "bad": bad}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="*", type=Path)
    ap.add_argument("--limit", type=int, default=None, help="positions per trace (evenly spread)")
    args = ap.parse_args()
    total_bad = 0
    for path in args.traces or DEFAULT:
        t0 = time.monotonic()
        r = sweep(path, args.limit)
        total_bad += len(r["bad"])
        print(f"{r['trace']}: {r['positions']} positions, {r['decided']} ok/violation windows "
              f"after a loss, {len(r['bad'])} that the lost event could flip "
              f"({time.monotonic() - t0:.1f} s)")
        for line in r["bad"][:5]:
            print("  " + line)
    print(f"total flippable ok/violation verdicts: {total_bad} (must be 0)")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
