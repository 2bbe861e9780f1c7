"""Run the exercise while the live recorder (kvmtrace.sources.live.Recorder) records its VM.

The guest runs in this process, so the recorder is filtered to this process's TGID.  The
recorder attaches before the VM exists and stops after it is torn down, so the file holds
the whole VM lifetime; its consumer runs in a background thread while the vCPU threads
spend their time in KVM_RUN (ctypes drops the GIL there).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from kvmtrace.exercise import run_exercise
from kvmtrace.exercise.result import ExerciseConfig, ExerciseResult


@dataclass
class Recording:
    path: str
    events: int
    lost: int
    seconds: float
    probes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_recorded(config: ExerciseConfig, output: str, probes: str = "auto",
                 via_info: dict | None = None,
                 raw_tracepoints: bool = True) -> tuple[ExerciseResult, Recording]:
    """Raises kvmtrace.sources.live.LiveUnavailable when the recorder cannot attach here.
    ``via_info``: the flush paths already resolved (exercise.resolve_flush_via), so that
    the probe guests that try each path stay out of the recording.  ``raw_tracepoints``:
    False attaches every tracepoint as a perf event (the recorder's raw_tracepoints)."""
    from kvmtrace.sources.live import Recorder
    recorder = Recorder(output, tgids=(os.getpid(),), probes=probes, raw_tracepoints=raw_tracepoints)
    report = recorder.attach()
    stop = threading.Event()
    outcome: dict = {}

    def record() -> None:
        try:
            outcome["stats"] = recorder.run(stop=stop)
        except BaseException as exc:          # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=record, name="kvmtrace-recorder", daemon=True)
    thread.start()
    try:
        result = run_exercise(config, via_info)
    finally:
        stop.set()
        thread.join()
        meta = recorder.close()
    if "error" in outcome:
        raise outcome["error"]
    stats = outcome["stats"]
    lost = meta.lost_events if meta is not None else stats.lost
    return result, Recording(output, stats.events, lost, stats.elapsed, list(report.attached),
                             [f"{name}: {why}" for name, why in report.skipped])
