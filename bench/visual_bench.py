"""What drawing costs: `kvmtrace report` and `kvmtrace timeline` against `kvmtrace analyze`
of the same trace, each in a fresh process, in the same run (ratios, not absolute times).

Also prints the output sizes and the peak RSS of each command (fresh process, from
os.wait4 of each child: its own peak).  Default trace: the real 3000-window recording.

    python3 bench/visual_bench.py [--runs 3] [TRACE]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "fixtures" / "real" / "exercise_4vcpu_3000flushes.parquet"


def run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `python3 -m kvmtrace ARGS` in a fresh process.

    The RSS is that child's own (os.wait4), not getrusage(RUSAGE_CHILDREN), which is the
    largest of every child waited for so far and so carried one command's peak into the
    next one's figure."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1, 3):
        sys.exit(f"visual_bench: kvmtrace {' '.join(args)} failed: {err.strip()}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", default=str(DEFAULT))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        html, js = Path(tmp) / "r.html", Path(tmp) / "t.json"
        ratios: dict[str, list[float]] = {"report": [], "timeline": []}
        rss: dict[str, list[int]] = {"analyze": [], "report": [], "timeline": []}
        for _ in range(a.runs):
            base, rss_a = run(["analyze", "--json", a.trace])
            rep, rss_r = run(["report", a.trace, "-o", str(html)])
            tl, rss_t = run(["timeline", a.trace, "-o", str(js)])
            for name, kb in (("analyze", rss_a), ("report", rss_r), ("timeline", rss_t)):
                rss[name].append(kb)
            ratios["report"].append(rep / base)
            ratios["timeline"].append(tl / base)
            print(f"analyze {base:.2f} s, report {rep:.2f} s, timeline {tl:.2f} s")
        for name, r in ratios.items():
            print(f"{name} / analyze: {min(r):.2f}-{max(r):.2f}x over {a.runs} runs")
        print(f"report {html.stat().st_size / 1024:.0f} KiB, timeline "
              f"{js.stat().st_size / 1024:.0f} KiB")
        print("peak RSS of each command (its own process): " + ", ".join(
            f"{name} {min(kb) / 1024:.0f}-{max(kb) / 1024:.0f} MiB" for name, kb in rss.items()))


if __name__ == "__main__":
    main()
