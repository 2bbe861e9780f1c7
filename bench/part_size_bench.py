"""Size of a recording's crash-safe .part against the finished Parquet file.

The recorder hands the writer one frame per drain (0.1 s); it gathers them into chunks
(kvmtrace.sources.native PART_*) before they go into the zstd-compressed Arrow IPC .part.
This replays real captures as drains of N rows at a given event rate and reports
.part size / final size, with and without the gathering (one chunk per drain).

    PYTHONPATH=$PWD python3 bench/part_size_bench.py
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from kvmtrace.sources.native import (ARROW_SCHEMA, _to_batch, PART_BATCH_AGE_S, PART_BATCH_ROWS, PART_MAX_AGE_S,
                                     PART_MIN_ROWS, write_trace)
from kvmtrace.sources.stream import load

ROOT = Path(__file__).resolve().parent.parent
TRACES = ["exercise_4vcpu_3000flushes", "exercise_4vcpu_stress", "exercise_2vcpu"]
RATES = [100, 1_000, 10_000, 100_000]      # events per second; drains every 0.1 s


def chunks(ev: pd.DataFrame, rate: int, gather: bool):
    """The chunks the recorder writes for drains of rate/10 rows each."""
    per_drain = max(1, rate // 10)
    pending, rows, age = [], 0, 0.0
    for start in range(0, len(ev), per_drain):
        pending.append(ev.iloc[start:start + per_drain])
        rows += len(pending[-1])
        age += 0.1
        if not gather or rows >= PART_BATCH_ROWS or age >= PART_MAX_AGE_S or (
                age >= PART_BATCH_AGE_S and rows >= PART_MIN_ROWS):
            yield pd.concat(pending, ignore_index=True)
            pending, rows, age = [], 0, 0.0
    if pending:
        yield pd.concat(pending, ignore_index=True)


def part_size(ev: pd.DataFrame, rate: int, gather: bool) -> int:
    buf = io.BytesIO()
    w = ipc.new_stream(buf, ARROW_SCHEMA, options=ipc.IpcWriteOptions(compression="zstd"))
    for c in chunks(ev, rate, gather):
        w.write_batch(_to_batch(c))
    w.close()
    return len(buf.getvalue())


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        for name in TRACES:
            trace = load(ROOT / "fixtures" / "real" / f"{name}.parquet")
            out = Path(d) / "final.parquet"
            write_trace(out, trace.events, trace.meta)
            final = out.stat().st_size
            cells = []
            for rate in RATES:
                g = part_size(trace.events, rate, True) / final
                n = part_size(trace.events, rate, False) / final
                cells.append(f"{rate}/s {g:.2f}x (per drain {n:.2f}x)")
            print(f"{name} ({len(trace.events)} events, {final / len(trace.events):.1f} B/event): "
                  + "; ".join(cells))


if __name__ == "__main__":
    main()
