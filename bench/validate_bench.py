"""What validating every chunk costs (``kvmtrace/sources/validate.py``), against baselines
measured in the same run.

The real 3000-window recording (fixtures/real/exercise_4vcpu_3000flushes.parquet) is
repeated, each copy shifted later in time, into chunks of ``--rows`` rows (default 1 Mi,
the readers' ``CHUNK_ROWS``), with the columns the model reads.  Then, in CPU seconds of
this process, best of ``--repeat``:

- ``validate``: ``Validator.check_cols`` over every chunk (what ``open_events`` does to
  each chunk a reader yields); valid input, so the common path: reductions, no copy;
- baseline ``min/max``: one ``min()`` and one ``max()`` of every column of the chunk, the
  floor of any range check done by reductions;
- ``validate, every column``: the same over all numeric columns (what the recorder
  checks before writing), not only the model's;
- baseline ``analyze``: ``analyze_path`` of the first ``--analyze-rows`` of the same events
  (real recordings are dense in model events and replay at ~10^5 events/s, so not all of
  them) written as one Parquet file, with validation (the shipped path) and with it
  replaced by a pass-through, alternated: the share of analyze's CPU time that validation
  takes.

    PYTHONPATH=$PWD python3 bench/validate_bench.py [--chunks 5] [--rows 1048576] [--repeat 3]
        [--analyze-rows 262144]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace.analysis.selection import NEEDED
from kvmtrace.schema import NUMERIC_COLUMNS, Chunk
from kvmtrace.sources import stream as stream_mod
from kvmtrace.sources.native import use_system_memory_pool, write_trace
from kvmtrace.sources.stream import load
from kvmtrace.sources.validate import Validator

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "real" / "exercise_4vcpu_3000flushes.parquet"


def tiled(rows: int, chunks: int) -> tuple[pd.DataFrame, object]:
    """The fixture repeated to rows * chunks events, each copy later than the last."""
    trace = load(FIXTURE, validate=False)
    ev = trace.events
    span = int(ev["ts"].max() - ev["ts"].min()) + 1_000_000
    need = rows * chunks
    copies = -(-need // len(ev))
    parts = []
    for i in range(copies):
        part = ev.copy()
        part["ts"] = part["ts"] + i * span
        parts.append(part)
    return pd.concat(parts, ignore_index=True).iloc[:need].reset_index(drop=True), trace.meta


def col_chunks(ev: pd.DataFrame, rows: int, names=NEEDED) -> list[dict]:
    names = [c for c in names if c in ev.columns]
    return [Chunk.from_frame(ev.iloc[s:s + rows], tuple(names)).cols
            for s in range(0, len(ev), rows)]


def cpu(fn, *args) -> float:
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def validate_all(chunks: list[dict]) -> None:
    v = Validator("bench")
    for cols in chunks:
        out = v.check_cols(cols)
        assert out is cols, "valid input must pass unchanged"
    assert v.invalid == 0


def minmax_all(chunks: list[dict]) -> None:
    for cols in chunks:
        for arr in cols.values():
            arr.min()
            arr.max()


def analyze_cpu(path: Path, validated: bool) -> tuple[float, str]:
    from kvmtrace.pipeline.offline import analyze_path
    real = stream_mod._validated
    if not validated:
        stream_mod._validated = lambda _path, chunks, _meta: chunks
    try:
        t0 = time.process_time()
        verdict = analyze_path(path).verdict
        return time.process_time() - t0, verdict
    finally:
        stream_mod._validated = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1 << 20, help="rows per chunk")
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--analyze-rows", type=int, default=1 << 18, help="events analysed")
    a = ap.parse_args()
    use_system_memory_pool()            # as `kvmtrace analyze` runs
    ev, meta = tiled(a.rows, a.chunks)
    chunks = col_chunks(ev, a.rows)
    n = len(ev)
    print(f"events      {n:,} in {len(chunks)} chunks of {a.rows:,} rows "
          f"({len(chunks[0])} columns: the model's)")
    val = [cpu(validate_all, chunks) for _ in range(a.repeat)]
    base = [cpu(minmax_all, chunks) for _ in range(a.repeat)]
    print(f"validate    {min(val) / n * 1e9:6.1f} ns/event  (runs "
          + ", ".join(f"{t / n * 1e9:.1f}" for t in val) + ")")
    print(f"min/max     {min(base) / n * 1e9:6.1f} ns/event  (runs "
          + ", ".join(f"{t / n * 1e9:.1f}" for t in base) + ")")
    print(f"validate / min/max floor  {min(val) / min(base):5.2f}x")
    every = col_chunks(ev, a.rows, NUMERIC_COLUMNS)
    allv = [cpu(validate_all, every) for _ in range(a.repeat)]
    print(f"validate, all {len(every[0])} columns {min(allv) / n * 1e9:6.1f} ns/event  (runs "
          + ", ".join(f"{t / n * 1e9:.1f}" for t in allv) + ")")
    del every
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiled.parquet"
        del chunks
        ev = ev.iloc[:a.analyze_rows]
        n = len(ev)
        write_trace(path, ev, meta)
        on, off = [], []
        for _ in range(a.repeat):               # alternated: load hits both alike
            t, v_on = analyze_cpu(path, True)
            on.append(t)
            t, v_off = analyze_cpu(path, False)
            off.append(t)
        print(f"analyze     {n / min(on) / 1e6:6.2f} M events/s CPU validated, "
              f"{n / min(off) / 1e6:6.2f} M/s without validation (verdict {v_on} / {v_off})")
        print(f"validation share of analyze CPU: {(min(on) - min(off)) / min(on) * 100:5.1f} % "
              f"(best of {a.repeat}: {min(on):.2f} s vs {min(off):.2f} s)")


if __name__ == "__main__":
    main()
