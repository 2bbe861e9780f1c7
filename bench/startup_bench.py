"""Start-up cost of the CLI: `kvmtrace --help`, a usage error and one command's --help,
against `python -c pass` measured in the same run (the interpreter's own floor).

    python -m bench.startup_bench [--runs 10] [--json]

Prints wall-clock medians and min-max ranges per case, and each median as a ratio to the
floor.  Each case is a fresh process (nothing inherited from a warm parent).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "kvmtrace --help": [sys.executable, "-m", "kvmtrace", "--help"],
    "kvmtrace (usage error)": [sys.executable, "-m", "kvmtrace", "--no-such-option"],
    "kvmtrace analyze --help": [sys.executable, "-m", "kvmtrace", "analyze", "--help"],
}


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    samples = {name: [] for name in CASES}
    for _ in range(args.runs):                 # interleaved: load affects every case alike
        for name, argv in CASES.items():
            samples[name].append(time_once(argv))
    floor = statistics.median(samples["python -c pass"])
    rows = {name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                   "ratio_to_python": statistics.median(s) / floor} for name, s in samples.items()}
    if args.json:
        print(json.dumps({"runs": args.runs, "cases": rows}, indent=2))
        return
    for name, r in rows.items():
        print(f"{name:<26} median {r['median_s'] * 1e3:6.1f} ms  range {r['min_s'] * 1e3:6.1f}-"
              f"{r['max_s'] * 1e3:6.1f} ms  {r['ratio_to_python']:4.1f}x python -c pass")


if __name__ == "__main__":
    main()
