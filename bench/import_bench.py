"""Text-import throughput: ftrace text lines per second through kvmtrace.sources.text.load().

Builds a ~1M-line ftrace file by repeating the lab capture (fixtures/lab_two_vcpu_flush.ftrace.txt)
with timestamps shifted past the previous copy, then times:
- baseline: reading the same file and splitting every line (the least a Python line parser
  can do per line),
- import: the full importer (parse, decode, columns, sort, conform).
Reports both rates and their ratio.  Goal: >= 300k lines/s for the import.

    python3 bench/import_bench.py [--lines 1000000] [--keep PATH]
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "lab_two_vcpu_flush.ftrace.txt"
TS = re.compile(r"(\s)(\d+)\.(\d{6}):")


def build(out: Path, target_lines: int) -> int:
    text = FIXTURE.read_text().splitlines()
    header = [l for l in text if l.startswith("#")]
    events = [l for l in text if l and not l.startswith("#")]
    stamps = [int(m.group(2)) * 10**6 + int(m.group(3)) for m in map(TS.search, events)]
    span = max(stamps) - min(stamps) + 1000
    written = 0
    with open(out, "w") as f:
        f.write("\n".join(l for l in header if "entries-in-buffer" not in l) + "\n")
        copy = 0
        while written < target_lines:
            shift = copy * span
            for line, us in zip(events, stamps):
                t = us + shift
                f.write(TS.sub(lambda m: f"{m.group(1)}{t // 10**6}.{t % 10**6:06d}:", line, count=1))
                f.write("\n")
                written += 1
            copy += 1
    return written


# CPU time of this process (time.process_time): on a shared machine wall time also counts
# other processes' turns on the core.
def baseline(path: Path) -> float:
    start = time.process_time()
    n = 0
    with open(path) as f:
        for line in f:
            line.split()
            n += 1
    return time.process_time() - start


def run_import(path: Path) -> tuple[float, int]:
    from kvmtrace.sources.stream import load
    start = time.process_time()
    trace = load(path)
    return time.process_time() - start, len(trace.events)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--keep", type=Path, help="write the generated file here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.ftrace.txt"
        n = build(path, args.lines)
        base = min(baseline(path) for _ in range(args.repeat))
        took, rows = min(run_import(path) for _ in range(args.repeat))
        print(f"lines            {n}")
        print(f"rows imported    {rows}")
        print(f"baseline split   {n / base:12,.0f} lines/s  ({base:.2f} s CPU)")
        print(f"import           {n / took:12,.0f} lines/s  ({took:.2f} s CPU)")
        print(f"import/baseline  {base / took:.3f} (fraction of the bare line-split rate)")


if __name__ == "__main__":
    main()
