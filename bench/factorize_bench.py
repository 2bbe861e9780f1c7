#!/usr/bin/env python3
"""kvmtrace.factorize's numpy paths against pandas.factorize, in the same run.

    python3 bench/factorize_bench.py [--repeat 7]

Key shapes as the code meets them: a recorder chunk's thread ids (one thread; two threads
on two CPUs alternating; 16 threads spread over the whole pid range), a model chunk's
thread keys (tgid << 32 | tid: no small span), random 64-bit keys; at 4 Ki, 64 Ki and
512 Ki keys.  Prints the best of --repeat for numpy (factorize_numpy, which kvmtrace uses
below PANDAS_ROWS keys or where pandas must not be imported) and pandas, and their ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvmtrace.factorize import PANDAS_ROWS, factorize_numpy  # noqa: E402


def shapes(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tids = rng.integers(1, 1 << 22, 16).astype(np.uint32)
    threads = (rng.integers(1000, 1 << 22, 64).astype(np.int64) << 32) | rng.integers(1, 1 << 22, 64)
    return {
        "tid, 1 thread": np.full(n, 4242, dtype=np.uint32),
        "tid, 2 alternating": np.where(rng.random(n) < .5, 4242, 1_900_000).astype(np.uint32),
        "tid, 16 random": rng.choice(tids, n),
        "thread key, 64 random": rng.choice(threads, n),
        "random int64": rng.integers(-(1 << 62), 1 << 62, n),
    }


def best(fn, keys, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(keys)
        out = min(out, time.perf_counter() - t)
    return out * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    import pandas as pd
    rng = np.random.default_rng(0)
    print(f"numpy path below {PANDAS_ROWS:,} keys; best of {args.repeat}")
    print(f"{'keys':>8}  {'shape':24} {'numpy ms':>9} {'pandas ms':>10} {'ratio':>6}")
    for n in (1 << 12, 1 << 16, 1 << 19):
        for name, keys in shapes(n, rng).items():
            a, b = best(factorize_numpy, keys, args.repeat), best(pd.factorize, keys, args.repeat)
            print(f"{n:>8,}  {name:24} {a:9.2f} {b:10.2f} {a / b:5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
