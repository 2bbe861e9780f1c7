"""An optional phase timer: where a command's wall time goes (imports, plan, compile, ...).

Code marks the start of each phase with ``mark("compile")``; a phase lasts until the next
mark.  A mark holds the wall clock and the process's CPU time (all threads): on a shared
host the CPU seconds say what a phase costs, the wall seconds what the user waits.  Nothing is recorded unless a timer is enabled, so the marks cost one global lookup
on the normal path.  ``bench/check_bench.py`` enables it in-process with ``enable()``, or in
a child by setting ``KVMTRACE_PHASES=FILE``: the marks (CLOCK_MONOTONIC seconds, the same
clock in every process) are then written to FILE as JSON when the process exits.

Part of the contract layer: imports nothing from kvmtrace, so every layer may mark.
"""
from __future__ import annotations

import atexit
import json
import os
import time

ENV = "KVMTRACE_PHASES"

Mark = tuple[str, float, float]            # (phase, monotonic s, process CPU s)
_marks: list[Mark] | None = None


def enable() -> list[Mark]:
    """Start recording (again); the returned list receives the marks."""
    global _marks
    _marks = []
    return _marks


def disable() -> list[Mark]:
    global _marks
    out, _marks = _marks or [], None
    return out


def mark(phase: str) -> None:
    """Phase ``phase`` starts now (a no-op unless a timer is enabled)."""
    if _marks is not None:
        _marks.append((phase, time.monotonic(), time.process_time()))


def durations(marks: list[Mark], start: Mark | None = None, cpu: bool = False) -> dict[str, float]:
    """Wall (or CPU) seconds per phase, a phase marked twice adding up; ``start`` is a mark
    opening the first phase (e.g. ("imports", time before the process started, 0.0))."""
    out: dict[str, float] = {}
    seq = ([start] if start is not None else []) + [tuple(m) for m in marks]
    i = 2 if cpu else 1
    for m0, m1 in zip(seq, seq[1:]):
        out[m0[0]] = out.get(m0[0], 0.0) + max(0.0, m1[i] - m0[i])
    return out


def _dump(path: str) -> None:
    import resource
    mark("end")
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with open(path, "w") as f:
            # children_cpu: CPU seconds of the child processes waited for so far (e.g. the
            # /proc/kallsyms copy, host.kallsyms.prefetch), which the parent's rusage
            # includes but the marks (this process's own CPU) do not.
            json.dump({"pid": os.getpid(), "marks": _marks or [],
                       "children_cpu": kids.ru_utime + kids.ru_stime}, f)
    except OSError:
        pass                          # a benchmark aid: never fail the command for it


if os.environ.get(ENV):
    enable()
    atexit.register(_dump, os.environ[ENV])
