"""Online analysis: the offline shadow-MMU model fed chunk by chunk while a trace is taken.

There is one model: ``kvmtrace.analysis.Replayer`` (per VM ``struct kvm`` shadow pages, per
vCPU roots and flush windows).  ``OnlineAnalysis`` only feeds it the chunks the live
recorder hands over (``Recorder(on_chunk=online.feed)``) -- or chunks read from a trace file,
for tests and ``--replay`` -- so a flush window's verdict is known the moment the chunk that
closes it arrives.  It adds what a live view needs and the offline report does not:

- a lock, because the recorder calls ``feed`` from its own thread while the command's main
  thread reads ``snapshot()``;
- listeners, called (in the feeding thread, outside the lock) with each batch of windows
  that just closed;
- snapshots of the model's own per-vCPU tallies (``Replayer.rows``, ``open_rows()``), and
  which VMs showed shadow paging: an indirect shadow page (``role.direct`` clear) exists only when
  KVM shadows guest page tables, i.e. the VM runs on the shadow MMU (mmu.c
  ``kvm_mmu_get_child_sp``/``mmu_alloc_root`` with ``!tdp_enabled`` or a nested guest).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

if TYPE_CHECKING:                                  # pandas only in hints: never imported here
    import pandas as pd

from kvmtrace.analysis import AnalysisResult, FlushWindow, Replayer
from kvmtrace.analysis.replay import ReplayListener
from kvmtrace.analysis.report import COUNT_KEYS, VcpuRow, empty_counts, empty_evidence, row_order
from kvmtrace.analysis.selection import NEEDED
from kvmtrace.schema import ROLE_DIRECT, Chunk, Kind, TraceMeta, as_chunk

Listener = Callable[[list[FlushWindow]], None]

_SP_CODES = np.array([int(Kind.SP_GET), int(Kind.SP_UNSYNC), int(Kind.SP_SYNC),
                      int(Kind.SP_ZAP)], dtype=np.int64)


@dataclass
class RowSnapshot:
    """One vCPU (or, before its id is known, one thread) of one VM."""

    tgid: int
    vcpu: Optional[int]
    tids: list[int]
    windows: dict[str, int]
    open_now: int
    latency_mean_ns: Optional[int]
    latency_max_ns: Optional[int]
    lost_windows: int = 0             # windows of this vCPU made inconclusive by lost events

    @property
    def label(self) -> str:
        return str(self.vcpu) if self.vcpu is not None else f"tid {self.tids[0] if self.tids else '?'}"


@dataclass
class Snapshot:
    """What the online analysis knows at one moment (a copy: safe to keep and print)."""

    events: int
    lost_events: int
    windows: dict[str, int]           # closed windows by verdict, plus total and meaningful
    meaningful_ok: int                # meaningful windows that closed ok: the check's evidence
    lost_windows: int                 # windows made inconclusive by lost events
    open_now: int                     # windows open right now
    rows: list[RowSnapshot] = field(default_factory=list)
    vms: list[int] = field(default_factory=list)
    shadow_vms: list[int] = field(default_factory=list)
    evidence: dict[str, int] = field(default_factory=empty_evidence)   # closed, by evidence

    def to_dict(self) -> dict:
        return {"events": self.events, "lost_events": self.lost_events,
                "windows": dict(self.windows), "evidence": dict(self.evidence),
                "meaningful_ok": self.meaningful_ok,
                "lost_windows": self.lost_windows, "open_now": self.open_now,
                "vms": [{"tgid": t, "shadow_paging": t in self.shadow_vms,
                         "vcpus": [{"vcpu": r.vcpu, "tids": r.tids, "windows": r.windows,
                                    "open_now": r.open_now, "lost_windows": r.lost_windows,
                                    "latency_ns": {"mean": r.latency_mean_ns,
                                                   "max": r.latency_max_ns}}
                                   for r in self.rows if r.tgid == t]}
                        for t in self.vms]}


def _row_snapshot(key: tuple[int, int, int], row: Optional[VcpuRow], open_now: int) -> RowSnapshot:
    """One per-vCPU row of the model's tally (None: only open windows so far)."""
    return RowSnapshot(
        tgid=key[0], vcpu=key[1] if key[1] >= 0 else None,
        tids=sorted(row.tids) if row else ([key[2]] if key[2] >= 0 else []),
        windows=dict(row.counts) if row else empty_counts(), open_now=open_now,
        latency_mean_ns=row.lat_sum // row.lat_n if row and row.lat_n else None,
        latency_max_ns=row.lat_max if row and row.lat_n else None,
        lost_windows=row.lost if row else 0)


class OnlineAnalysis:
    """Thread-safe incremental front of ``analysis.Replayer``.

    ``start(meta)`` once the source knows its metadata (the recorder after ``attach()``),
    then ``feed(chunk)`` per chunk from any thread, ``snapshot()`` at any time, ``finish()``
    at the end.
    """

    COLUMNS = NEEDED          # what feed() reads of a chunk: the model's columns

    def __init__(self, *, vm: Optional[int] = None, max_findings: int = 100,
                 replay_listener: Optional[ReplayListener] = None) -> None:
        self.vm = vm
        self.replay_listener = replay_listener     # e.g. a report's collector (--report)
        self.max_findings = max_findings
        self.meta: Optional[TraceMeta] = None
        self._replayer: Optional[Replayer] = None
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._vms: set[int] = set()
        self._shadow_vms: set[int] = set()
        self._result: Optional[AnalysisResult] = None
        self.started_at = 0.0

    # ------------------------------------------------------------------ set-up
    def start(self, meta: TraceMeta, source: str = "") -> None:
        """Create the model for a trace with this metadata.

        The replayer gets its own copy: the recorder keeps updating its meta (lost counts,
        notes) from another thread, while lost records reach the model as LOST rows.
        """
        with self._lock:
            if self._replayer is not None:
                raise RuntimeError("OnlineAnalysis.start() called twice")
            self.meta = TraceMeta.from_dict(meta.to_dict())
            self._replayer = Replayer(self.meta, vm=self.vm, max_findings=self.max_findings,
                                      source=source, listener=self.replay_listener)
            self.started_at = time.monotonic()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(windows)`` with every non-empty batch of newly closed windows."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ feeding
    def feed(self, chunk: Chunk | pd.DataFrame) -> list[FlushWindow]:
        """Replay one chunk (a source's on_chunk); returns and announces closed windows."""
        chunk = as_chunk(chunk, NEEDED)
        with self._lock:
            if self._replayer is None:
                raise RuntimeError("OnlineAnalysis.feed() before start()")
            if self._result is not None:
                raise RuntimeError("OnlineAnalysis.feed() after finish()")
            closed = self._replayer.feed(chunk)          # validates the columns
            self._observe_vms(chunk)
        if closed:
            for listener in self._listeners:
                listener(closed)
        return closed

    def _observe_vms(self, chunk: Chunk) -> None:
        if not len(chunk):
            return
        tgid = chunk.cols["tgid"]
        kind = chunk.cols["kind"].astype(np.int64)
        role = chunk.cols["role"]
        if self.vm is not None:
            keep = tgid == self.vm
            tgid, kind, role = tgid[keep], kind[keep], role[keep]
        real = kind != int(Kind.LOST)
        self._vms.update(int(t) for t in np.unique(tgid[real]))
        shadow = (kind == int(Kind.SP_UNSYNC)) | (
            np.isin(kind, _SP_CODES) & (role >= 0) & ((role & ROLE_DIRECT) == 0))
        if shadow.any():
            self._shadow_vms.update(int(t) for t in np.unique(tgid[shadow]))

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> Snapshot:
        """The model's own per-vCPU tallies and open windows, copied (after ``finish()``:
        as the final result counts them)."""
        with self._lock:
            rep = self._replayer
            if rep is None:
                return Snapshot(events=0, lost_events=0, windows=empty_counts(),
                                meaningful_ok=0, lost_windows=0, open_now=0,
                                vms=sorted(self._vms), shadow_vms=sorted(self._shadow_vms))
            tallies, open_by_key = rep.rows, rep.open_rows()
            rows = [_row_snapshot(key, tallies.get(key), open_by_key.get(key, 0))
                    for key in sorted(set(tallies) | set(open_by_key), key=row_order)]
            totals = empty_counts()
            for row in tallies.values():
                for k in COUNT_KEYS:
                    totals[k] += row.counts[k]
            return Snapshot(events=rep.events, lost_events=rep.counters.lost_markers,
                            windows=totals,
                            meaningful_ok=sum(r.meaningful_ok for r in tallies.values()),
                            lost_windows=sum(r.lost for r in tallies.values()),
                            open_now=sum(open_by_key.values()), rows=rows,
                            vms=sorted(self._vms), shadow_vms=sorted(self._shadow_vms),
                            evidence={k: sum(r.evidence[k] for r in tallies.values())
                                      for k in empty_evidence()})

    @property
    def shadow_vms(self) -> list[int]:
        with self._lock:
            return sorted(self._shadow_vms)

    def finish(self) -> AnalysisResult:
        """End of trace: the analyser's final result (open windows stay ``open``)."""
        with self._lock:
            if self._replayer is None:
                raise RuntimeError("OnlineAnalysis.finish() before start()")
            if self._result is None:
                self._result = self._replayer.finish()
            return self._result


__all__ = ["OnlineAnalysis", "Snapshot", "RowSnapshot"]
