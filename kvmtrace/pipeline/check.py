"""Running a check: a tracing session, optionally the built-in guest, then the verdict.

``run_check(source, config)`` is what ``kvmtrace check`` does, with the chunk source given:
``LiveSource`` (the BPF recorder) on a host, ``FileSource`` for a recorded trace.  From the
first chunk to the verdict the path is the same: ``OnlineAnalysis`` (the analyser's
``Replayer``) -> ``AnalysisResult`` + live tallies -> ``checking.Evidence`` ->
``checking.decide``.

With ``--exercise`` the guest (kvmtrace.exercise) runs in this process, in a thread, while
the recorder traces it; the check stops as soon as the guest has finished and enough
meaningful windows have closed, or when nothing more can come (only our own VM is traced).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from kvmtrace import phases
from kvmtrace.analysis import AnalysisResult
from kvmtrace.analysis.replay import ReplayListener
from kvmtrace.analysis.window import GENERATIONS
from kvmtrace.pipeline.check_rules import INCONCLUSIVE, CheckVerdict, Evidence, ExerciseOutcome, decide
from kvmtrace.sources.live.errors import LiveUnavailable
from kvmtrace.sources.live.tracepoints import REQUIRED, attached
from kvmtrace.pipeline.online import OnlineAnalysis, Snapshot
from kvmtrace.pipeline.session import Session
from kvmtrace.sources.chunks import ChunkSource, SourceInfo

POLL_S = 0.1
Status = Callable[[str], None]


@dataclass
class CheckConfig:
    duration: float = 30.0
    min_windows: int = 1
    exercise: bool = False
    exercise_rounds: int = 300
    exercise_vcpus: int = 2
    exercise_pages: int = 4
    exercise_seed: int = 1
    other_vms: bool = True          # VMs other than our own guest are traced (-p, or all)
    status: Optional[Status] = None
    status_interval: float = 0.25
    replay_listener: Optional[ReplayListener] = None    # --report's collector


@dataclass
class CheckReport:
    check: CheckVerdict
    result: AnalysisResult
    snapshot: Snapshot
    info: SourceInfo
    duration_s: float
    min_windows: int
    exercise: Optional[dict] = None
    traced_tgids: list[int] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return self.check.verdict

    @property
    def exit_code(self) -> int:
        return self.check.exit_code

    @property
    def stale_reads(self) -> int:
        return len(self.exercise["stale_reads"]) if self.exercise else 0

    def host(self) -> dict:
        meta = self.info.meta
        exposed = None if meta.tdp is None else not meta.tdp
        return {"kernel": meta.kernel_release, "backend": meta.kvm_backend, "tdp": meta.tdp,
                "exposed": exposed}

    def windows(self) -> dict:
        return {**self.result.windows,
                "meaningful_ok": self.snapshot.meaningful_ok}

    def to_dict(self) -> dict:
        out = {"verdict": self.verdict, "exit_code": self.exit_code,
               "reasons": self.check.reasons, "next_steps": self.check.next_steps,
               "windows": self.windows(), "evidence": self.result.evidence,
               "min_windows": self.min_windows,
               "pattern": self.result.pattern, "pattern_kernels": GENERATIONS[self.result.pattern],
               "host": self.host(), "probes": self.info.probes_dict(),
               "duration_s": round(self.duration_s, 3), "events": self.result.events,
               "lost_events": self.result.lost_events,
               "source": "live" if self.info.live else self.info.label,
               "traced_tgids": self.traced_tgids,
               "shadow_paging_vms": self.snapshot.shadow_vms,
               "vms": self.result.vms, "findings": self.result.findings,
               "notes": self.result.notes}
        if self.exercise is not None:
            out["exercise"] = self.exercise
        return out


class _Interrupted(Exception):
    pass


class _Exercise:
    """The built-in guest in a background thread; its result or error kept for the verdict.

    ``stop`` (Ctrl-C / SIGTERM) ends it after the current round: the guest's threads leave
    KVM_RUN and its VM is torn down, so the check exits promptly (as inconclusive)."""

    def __init__(self, cfg: CheckConfig, stop: threading.Event) -> None:
        from kvmtrace.exercise import ExerciseConfig
        self.stop = stop
        self.rounds_done = 0
        self.config = ExerciseConfig(vcpus=cfg.exercise_vcpus,
                                     rounds=max(cfg.exercise_rounds,
                                                2 * cfg.min_windows // max(1, cfg.exercise_vcpus - 1) + 1),
                                     pages=cfg.exercise_pages, seed=cfg.exercise_seed,
                                     flush=True, progress=self._progress)
        self.result = None
        self.error = ""
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvmtrace-exercise", daemon=True)

    def _progress(self, done: int, total: int) -> None:
        self.rounds_done = done
        if self.stop.is_set() and done < total:
            raise _Interrupted(f"interrupted after {done} of {total} rounds")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from kvmtrace.exercise import run_exercise
        try:
            self.result = run_exercise(self.config)
        except Exception as exc:            # ExerciseError, ExerciseUnavailable, OSError
            self.error = str(exc) if isinstance(exc, _Interrupted) else f"{type(exc).__name__}: {exc}"
        finally:
            phases.mark("drain")           # the guest is done: what is left is draining
            self.done.set()

    def join(self) -> None:
        if self._thread.ident is not None:          # started
            self._thread.join()

    def outcome(self) -> ExerciseOutcome:
        r = self.result
        if r is None:
            return ExerciseOutcome(finished=False, error=self.error or "did not finish")
        stale = [{"vcpu": s.vcpu, "round": s.round, "address": s.address,
                  "expected": s.expected, "observed": s.observed, "after_flush": s.after_flush}
                 for s in r.stale_reads]
        return ExerciseOutcome(flushes_requested=r.flushes_requested, reads=r.reads,
                               stale_reads=stale, exposed=r.exposed, finished=True)

    def to_dict(self) -> dict:
        r = self.result
        if r is None:
            return {"finished": False, "error": self.error, "rounds": self.config.rounds,
                    "rounds_done": self.rounds_done, "stale_reads": []}
        d = r.to_dict()
        d["stale_reads"] = d["stale_reads"][:100]
        d["finished"] = True
        return d


def evidence(result: AnalysisResult, snap: Snapshot, info: SourceInfo, min_windows: int,
             exercise: Optional[ExerciseOutcome]) -> Evidence:
    """What the verdict depends on, from the analyser's result and its snapshot taken after
    finish() (so demoted windows count as the result counts them)."""
    w = result.windows
    meta = info.meta
    tdp = meta.tdp
    if tdp is None and exercise is not None and exercise.exposed is not None:
        tdp = not exercise.exposed          # the guest's VM found out which MMU it got
    return Evidence(windows=dict(w), meaningful_ok=snap.meaningful_ok,
                    lost_events=max(result.lost_events, snap.lost_events),
                    lost_windows=snap.lost_windows, tdp=tdp, backend=meta.kvm_backend,
                    shadow_vms=len(snap.shadow_vms), vms_seen=len(snap.vms),
                    findings=result.findings, pattern=result.pattern,
                    pattern_kernels=GENERATIONS.get(result.pattern, ""),
                    min_windows=min_windows, exercise=exercise)


def _missing_required(info: SourceInfo) -> str:
    """The required tracepoints a live source did not attach, as one phrase."""
    if not info.live:
        return ""
    missing = [name for name in REQUIRED if not attached(name, info.attached)]
    reasons = dict(info.skipped)
    return "; ".join(f"tracepoint {n} ({reasons.get(f'tracepoint:{n}', 'not attached')})"
                     for n in missing)


def _enough(online: OnlineAnalysis, cfg: CheckConfig) -> bool:
    return online.snapshot().meaningful_ok >= cfg.min_windows


def status_text(snap: Snapshot, elapsed: float, cfg: CheckConfig,
                exercise: Optional[_Exercise]) -> str:
    w = snap.windows
    text = (f"check: {elapsed:5.1f}/{cfg.duration:g} s  {snap.events} events  windows "
            f"{w['total']} ({snap.meaningful_ok} meaningful ok)  violations {w['violation']}  "
            f"lost {snap.lost_events}")
    if exercise is not None:
        text += f"  guest {exercise.rounds_done}/{exercise.config.rounds} rounds"
    return text


def run_check(source: ChunkSource, cfg: CheckConfig,
              stop: Optional[threading.Event] = None) -> CheckReport:
    """Trace (and exercise) until done, then judge.  LiveUnavailable propagates (exit 4)."""
    online = OnlineAnalysis(replay_listener=cfg.replay_listener)
    session = Session(source, online)
    if stop is not None:
        session.stop = stop
    ex = _Exercise(cfg, session.stop) if cfg.exercise else None
    info = session.open()
    missing = _missing_required(info)
    if missing:
        session.close()
        raise LiveUnavailable(f"cannot judge without {missing}", "run kvmtrace doctor to see why "
                              "it is missing (a kernel with KVM's kvm and kvmmmu tracepoints)")
    try:
        # With the guest, the main loop decides when to stop (after the guest is done).
        phases.mark("guest")
        session.start(duration=None if ex is not None else cfg.duration)
        if ex is not None:
            ex.start()
        _wait(session, online, cfg, ex)
        interrupted = session.stop.is_set()         # Ctrl-C / SIGTERM (close() sets it too)
    finally:
        try:
            if ex is not None:
                ex.join()
        finally:
            session.close()
    phases.mark("report")
    result = online.finish()
    snap = online.snapshot()
    verdict = decide(evidence(result, snap, info, cfg.min_windows,
                              ex.outcome() if ex is not None else None))
    if interrupted and verdict.verdict == INCONCLUSIVE:
        verdict.reasons.append(f"the check was stopped (Ctrl-C or SIGTERM) after "
                               f"{session.elapsed:.1f} s")
    tgids = list(getattr(source, "tgids", ()) or ())
    return CheckReport(check=verdict, result=result, snapshot=snap, info=info,
                       duration_s=session.elapsed, min_windows=cfg.min_windows,
                       exercise=ex.to_dict() if ex is not None else None,
                       traced_tgids=sorted(tgids))


def _wait(session: Session, online: OnlineAnalysis, cfg: CheckConfig,
          ex: Optional[_Exercise]) -> None:
    last_status = 0.0
    while True:
        if ex is not None and not ex.done.is_set():
            # Wake as soon as the guest is done, not at the next poll (0-100 ms later).
            ex.done.wait(POLL_S)
            if session.wait(0):
                break
        elif session.wait(POLL_S):
            break                                   # duration over, file replayed, or error
        if session.stop.is_set():
            break                                   # Ctrl-C / SIGTERM
        elapsed = session.elapsed
        if ex is not None and ex.done.is_set():
            # The guest's VM is torn down: its records are all in the ring buffer.
            if _enough(online, cfg) or not cfg.other_vms or elapsed >= cfg.duration:
                break
        if cfg.status is not None and time.monotonic() - last_status >= cfg.status_interval:
            cfg.status(status_text(online.snapshot(), elapsed, cfg, ex))
            last_status = time.monotonic()

