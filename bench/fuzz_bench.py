"""Fuzz analyze in process with damaged and hostile inputs (bench/fuzz_inputs.py).

    PYTHONPATH=$PWD python3 bench/fuzz_bench.py [-n 10000] [--seed 1] [--limit 5]

Reports, per category, how many cases ended in a one-line error, which verdicts came out,
and the failures: hangs (over --limit seconds), tracebacks and verdicts from damaged input.
All three must be 0.  Exit 1 otherwise.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_inputs import CATEGORIES, judge, make_case, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=float, default=5.0, help="seconds per case before it is a hang")
    ap.add_argument("--only", choices=CATEGORIES, action="append",
                    help="only these categories (repeatable)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    failures: Counter = Counter()
    examples: dict[str, str] = {}
    slowest = 0.0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.n):
            cats = args.only or CATEGORIES
            case = make_case(rng, cats[i % len(cats)])
            outcome, elapsed = run_case(case, Path(d), args.limit)
            slowest = max(slowest, elapsed)
            outcomes[case.category][outcome.split(":")[0] if outcome.startswith("traceback") else outcome] += 1
            bad = judge(case, outcome)
            if bad:
                kind = bad.split(":")[0]
                failures[kind] += 1
                examples.setdefault(f"{case.category}: {kind}", bad)
    print(f"{args.n} cases in {time.monotonic() - t0:.0f} s (seed {args.seed}, slowest {slowest:.2f} s)")
    for cat in args.only or CATEGORIES:
        print(f"  {cat:13s} " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes[cat].items())))
    print(f"hangs {failures['hang']}, tracebacks {failures['traceback']}, verdicts from damage "
          f"{failures['verdict from damaged input']} (all must be 0)")
    for key, text in sorted(examples.items()):
        print(f"  e.g. {key}: {text[:160]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
