"""An optional phase timer: where a command's wall time goes (imports, plan, compile, ...).

Code marks the start of each phase with ``mark("compile")``; a phase lasts until the next
mark.  Nothing is recorded unless a timer is enabled, so the marks cost one global lookup
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

_marks: list[tuple[str, float]] | None = None


def enable() -> list[tuple[str, float]]:
    """Start recording (again); the returned list receives (phase, monotonic seconds)."""
    global _marks
    _marks = []
    return _marks


def disable() -> list[tuple[str, float]]:
    global _marks
    out, _marks = _marks or [], None
    return out


def mark(phase: str) -> None:
    """Phase ``phase`` starts now (a no-op unless a timer is enabled)."""
    if _marks is not None:
        _marks.append((phase, time.monotonic()))


def durations(marks: list[tuple[str, float]], start: float | None = None,
              first: str = "imports") -> dict[str, float]:
    """Seconds per phase (a phase marked twice adds up); ``start`` opens phase ``first``."""
    out: dict[str, float] = {}
    seq = ([(first, start)] if start is not None else []) + list(marks)
    for (name, t0), (_, t1) in zip(seq, seq[1:]):
        out[name] = out.get(name, 0.0) + max(0.0, t1 - t0)
    return out


def _dump(path: str) -> None:
    mark("end")
    try:
        with open(path, "w") as f:
            json.dump({"pid": os.getpid(), "marks": _marks or []}, f)
    except OSError:
        pass                          # a benchmark aid: never fail the command for it


if os.environ.get(ENV):
    enable()
    atexit.register(_dump, os.environ[ENV])
