"""Where `kvmtrace check --exercise` spends its wall time, phase by phase.

    sudo python -m bench.check_bench [--runs 5] [--inprocess] [--json] [-- CHECK-ARGS...]

Each run is a fresh `python -m kvmtrace check --exercise --json` (or, with --inprocess, a
call of the CLI in this process: no interpreter start, imports only on the first run).  The
command marks its phases with kvmtrace.phases (KVMTRACE_PHASES=FILE in the child):

  imports  interpreter start, the CLI and the modules the pipeline imports (pandas, BCC ...)
  setup    the host self-setup and the /dev/kvm check
  plan     host facts: tracefs formats, kallsyms, BTF offsets; the probe plan
  compile  generating the BPF C; BCC's compile or the cached object; maps, program loads
           (the verifier) and the exact mode's raw tracepoints
  attach   attaching the probes, opening the ring buffer
  guest    the built-in guest's run (the recorder drains meanwhile)
  drain    after the guest: the last records, the stop decision
  detach   detaching every probe and freeing the maps
  report   the model's finish, the verdict, the rendering
  exit     interpreter shutdown (its CPU: the child's rusage past the last mark)
  children CPU of the command's helper processes (the /proc/kallsyms copy that runs
           while it imports, host/kallsyms.py prefetch): no wall time of its own

Each of the runs is two processes with their own program cache (KVMTRACE_CACHE_DIR, see
kvmtrace/sources/live/progcache.py): first empty, so BCC compiles (a check's first run on
a kernel), then the same cache again, so the compiled program is loaded (every later run).

Prints, for both cases, per phase, the median and min-max over the runs of wall and CPU seconds (CPU: the
process's, all threads; the less load-sensitive figure); the total wall time; the
verdict and windows of every run (they must not change with speed); `python -c pass` and
`kvmtrace --help` timed in the same runs as the floor; and the load average before and
after (the host's 2 cores are shared).  Needs root and /dev/kvm (exit 4 otherwise); exits
1 when a run's verdict is not pass.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmtrace import phases  # noqa: E402

CACHE_ENV = "KVMTRACE_CACHE_DIR"
PHASES = ("imports", "setup", "plan", "compile", "attach", "guest", "drain", "detach",
          "report", "exit", "children")
BASELINES = {"python -c pass": [sys.executable, "-c", "pass"],
             "kvmtrace --help": [sys.executable, "-m", "kvmtrace", "--help"]}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(check_args: list[str], cache: str) -> tuple[dict[str, float], dict[str, float], float, dict]:
    """(phase wall seconds, phase CPU seconds, wall seconds, check JSON) of one fresh process
    whose program cache (sources/live/progcache.py) is the directory ``cache``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as marks_file:
        env = _env()
        env[CACHE_ENV] = cache
        env[phases.ENV] = marks_file.name
        start = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", "check", *check_args, "--json"],
                                    stdout=out, stderr=err, env=env, cwd=ROOT)
            _pid, status, usage = os.wait4(proc.pid, 0)     # the child's own CPU, to the end
            end = time.monotonic()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        dump = json.loads(Path(marks_file.name).read_text() or "{}")
        marks, kids = dump.get("marks", []), dump.get("children_cpu", 0.0)
    report = _parse_report(stdout, stderr, proc.returncode)
    seconds = phases.durations(marks, start=("imports", start, 0.0))
    cpu = phases.durations(marks, start=("imports", start, 0.0), cpu=True)
    if marks:
        # After the last mark (written by an atexit handler) the interpreter still shuts
        # down: its wall and CPU count as "exit" (the CPU from the child's rusage).
        seconds["exit"] = seconds.get("exit", 0.0) + max(0.0, end - marks[-1][1])
        # The rusage also holds the CPU of the child's own children (waited for): shown
        # apart, as "children", not as part of the exit.
        cpu["exit"] = cpu.get("exit", 0.0) + max(0.0, usage.ru_utime + usage.ru_stime - marks[-1][2] - kids)
        cpu["children"] = kids
    return seconds, cpu, end - start, report


def run_inprocess(check_args: list[str], cache: str) -> tuple[dict[str, float], dict[str, float], float, dict]:
    from kvmtrace.cli import main
    os.environ[CACHE_ENV] = cache
    out = io.StringIO()
    marks = phases.enable()
    start = ("imports", time.monotonic(), time.process_time())
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            main(["check", *check_args, "--json"], standalone_mode=False)
        except SystemExit as exc:
            code = int(exc.code or 0)
    phases.mark("end")
    end = time.monotonic()
    phases.disable()
    return (phases.durations(marks, start=start), phases.durations(marks, start=start, cpu=True),
            end - start[1], _parse_report(out.getvalue(), "", code))


def _parse_report(stdout: str, stderr: str, code: int) -> dict:
    try:
        d = json.loads(stdout)
    except ValueError:
        line = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"verdict": f"error (exit {code}): {line}", "exit_code": code}
    w = d.get("windows", {})
    return {"verdict": d.get("verdict"), "exit_code": code, "windows": w.get("total"),
            "meaningful_ok": w.get("meaningful_ok"), "violation": w.get("violation"),
            "events": d.get("events"), "attached": len(d.get("probes", {}).get("attached", [])),
            "notes": [n for n in d.get("notes", []) if "mode" in n],
            "program": next((n for n in d.get("probes", {}).get("notes", [])
                             if n.startswith("program:")), "")}


def time_cmd(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=ROOT)
    return time.monotonic() - start


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def _range(s: dict[str, float]) -> str:
    return f"({s['min_s'] * 1e3:.0f}-{s['max_s'] * 1e3:.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--inprocess", action="store_true",
                    help="call the CLI in this process (no interpreter start per run)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("check_args", nargs="*", default=["--exercise"],
                    help="arguments of kvmtrace check (default --exercise)")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("check_bench: needs root and /dev/kvm (the check traces live)", file=sys.stderr)
        return 4
    load_before = loadavg()
    runs: dict[str, list[dict]] = {"cached": [], "compiled": []}
    base: dict[str, list[float]] = {k: [] for k in BASELINES}
    run = run_inprocess if args.inprocess else run_child
    for _ in range(max(1, args.runs)):       # interleaved: load affects every case alike
        for name, argv in BASELINES.items():
            base[name].append(time_cmd(argv))
        with tempfile.TemporaryDirectory(prefix="check-bench-cache-") as cache:
            # An empty program cache: BCC compiles (the first check on a kernel); then the
            # same cache again: the compiled program is loaded (every later check).
            for case in ("compiled", "cached"):
                seconds, cpu, wall, report = run(args.check_args, cache)
                runs[case].append({"phases": seconds, "cpu": cpu, "wall_s": wall, "report": report})
    out = {"runs": args.runs, "mode": "in-process" if args.inprocess else "child process",
           "check_args": args.check_args, "load_before": load_before, "load_after": loadavg(),
           "cpus": os.cpu_count(), "baselines": {k: summary(v) for k, v in base.items()},
           "cases": {case: _case(rs) for case, rs in runs.items()}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"kvmtrace check {' '.join(args.check_args)}: {out['runs']} runs ({out['mode']}), "
          f"{out['cpus']} CPUs, load average {load_before} before, {out['load_after']} after")
    for case, c in out["cases"].items():
        what = ("program from the cache (every check after the first on a kernel)" if case == "cached"
                else "empty program cache: BCC compiles (the first check on a kernel)")
        print(f"\n {case}: {what}")
        _print_case(c)
    print()
    w = out["cases"]["cached"]["wall"]
    for name, s in out["baselines"].items():
        print(f"  baseline {name}: median {s['median_s'] * 1e3:.0f} ms, range "
              f"{s['min_s'] * 1e3:.0f}-{s['max_s'] * 1e3:.0f} ms; cached check = "
              f"{w['median_s'] / s['median_s']:.1f}x")
    bad = [r for c in out["cases"].values() for r in c["reports"] if r.get("verdict") != "pass"]
    return 1 if bad else 0


def _case(runs: list[dict]) -> dict:
    return {"phases": {p: summary([r["phases"].get(p, 0.0) for r in runs]) for p in PHASES},
            "cpu": {p: summary([r["cpu"].get(p, 0.0) for r in runs]) for p in PHASES},
            "wall": summary([r["wall_s"] for r in runs]),
            "cpu_total": summary([sum(r["cpu"].values()) for r in runs]),
            "reports": [r["report"] for r in runs]}


def _print_case(c: dict) -> None:
    print(f"  {'phase':<8} {'wall median':>11} {'(min-max)':>13}   {'CPU median':>10} {'(min-max)':>13}")
    for p in [*PHASES, "total"]:
        s = c["phases"][p] if p != "total" else c["wall"]
        u = c["cpu"][p] if p != "total" else c["cpu_total"]
        print(f"  {p:<8} {s['median_s'] * 1e3:8.0f} ms {_range(s):>13}   {u['median_s'] * 1e3:7.0f} ms "
              f"{_range(u):>13}")
    for i, r in enumerate(c["reports"], 1):
        print(f"  run {i}: {r.get('verdict')}, windows {r.get('windows')} "
              f"({r.get('meaningful_ok')} meaningful ok, {r.get('violation')} violation), "
              f"{r.get('events')} events, {r.get('attached')} probes; {r.get('program') or 'no program note'}")


if __name__ == "__main__":
    sys.exit(main())
