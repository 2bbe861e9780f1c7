"""What the timeline and the HTML report show: every flush window and the shadow-MMU
instants of a replay, beside the analysis result.

The model (``analysis.Replayer``) aggregates windows and keeps only the first findings;
the views need every window (``struct kvm_vcpu`` flush windows, ok ones too) and the
``struct kvm_mmu_page`` sync / unsync / zap events around them.  ``Collector`` is the
Replayer's listener: it records windows and instants as the replay hands them over,
in bounded memory (caps below; what was left out is counted and said in the output's
metadata), and per-vCPU flush->sync latency histograms over *all* windows.

May import: the contract, the model (``kvmtrace.analysis``), ``pipeline.offline``.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Optional

from kvmtrace.analysis import AnalysisResult, FlushWindow
from kvmtrace.analysis.flushpaths import BY_OPENER
from kvmtrace.analysis.replay import Event
from kvmtrace.analysis.report import merge
from kvmtrace.analysis.window import INCONCLUSIVE, OK, SUSPECT, VIOLATION
from kvmtrace.pipeline.offline import analyze_path, check_selection
from kvmtrace.schema import KIND_NAMES, Kind

MAX_WINDOWS = 50_000          # per trace; the rest are counted (by verdict), not kept
MAX_INSTANTS = 100_000        # SP sync/unsync/zap and flush requests, per trace
MAX_LOST_MARKERS = 10_000

# The events shown as instants: what the shadow MMU did (arch/x86/kvm/mmu/mmu.c: the
# kvmmmu tracepoints in kvm_unsync_page, kvm_sync_page, kvm_mmu_prepare_zap_page), the
# guest's flush requests on every flush path (analysis.flushpaths), and the flush-path
# functions when they were probed.
FUNCTION_INSTANTS = {
    Kind.FLUSH_GUEST_ENTRY: "kvm_vcpu_flush_tlb_guest", Kind.HW_FLUSH: "vendor TLB flush",
    Kind.MMU_UNLOAD: "kvm_mmu_unload", Kind.MMU_LOAD_ENTRY: "kvm_mmu_load",
    Kind.SYNC_ROOTS: "kvm_mmu_sync_roots", Kind.SYNC_PREV_ROOTS: "kvm_mmu_sync_prev_roots"}
SP_NAMES = {Kind.SP_UNSYNC: "SP unsync", Kind.SP_SYNC: "SP sync", Kind.SP_ZAP: "SP zap"}
INSTANT_KINDS = frozenset({*SP_NAMES, *(Kind(k) for k in BY_OPENER), *FUNCTION_INSTANTS})
_LABELS: dict[str, tuple[str, str]] = {
    **{KIND_NAMES[k]: ("shadow-mmu", n) for k, n in SP_NAMES.items()},
    **{KIND_NAMES[k]: ("flush-request", f"flush request ({p.name})") for k, p in BY_OPENER.items()},
    **{KIND_NAMES[k]: ("flush-path", n) for k, n in FUNCTION_INSTANTS.items()}}


def instant_label(kind: str) -> tuple[str, str]:
    """(category, display name) of an instant's event kind."""
    return _LABELS.get(kind, ("other", kind))


SP_INSTANTS = frozenset({int(Kind.SP_UNSYNC), int(Kind.SP_SYNC), int(Kind.SP_ZAP)})

# Flush->sync latency histogram bins (upper edges, ns); windows without a sync action
# are counted apart ("no sync").
LATENCY_EDGES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
                 500_000, 1_000_000, 10_000_000)
LATENCY_LABELS = ("<1us", "1-2us", "2-5us", "5-10us", "10-20us", "20-50us", "50-100us",
                  "100-200us", "0.2-0.5ms", "0.5-1ms", "1-10ms", ">=10ms")


class WindowMark(NamedTuple):
    """One flush window as the views draw it."""

    tgid: int
    tid: int
    vcpu: int                 # -1: unknown
    ts: int
    closed_ts: Optional[int]  # None: open at the end of the trace
    verdict: str
    reason: str
    pattern: str
    meaningful: bool
    opener: str
    closer: str
    unsync_at_open: int
    latency_ns: Optional[int]
    outstanding: int          # SPs left unsync not known unreachable
    evidence: Optional[str]   # exact | inferred | none, when the model says
    obligation: str           # what the flush path must sync (analysis.flushpaths)


class Instant(NamedTuple):
    ts: int
    tgid: int
    tid: int
    vcpu: int
    kind: str
    gfn: int
    role: int
    level: int
    value: int


def latency_bin(ns: Optional[int]) -> int:
    """Index into LATENCY_LABELS, or -1 for a window without a sync action."""
    if ns is None:
        return -1
    for i, edge in enumerate(LATENCY_EDGES):
        if ns < edge:
            return i
    return len(LATENCY_EDGES)


@dataclass
class TraceVisual:
    """One trace's windows and instants, with what was left out."""

    label: str
    meta: dict
    start_ns: int = 0
    start_source: str = ""           # "trace metadata" | "first event the replay handed over"
    end_ns: int = 0                  # last timestamp the replay handed over
    windows: list = field(default_factory=list)
    windows_total: int = 0
    windows_dropped: Counter = field(default_factory=Counter)
    instants: list = field(default_factory=list)
    instants_total: int = 0
    lost: list = field(default_factory=list)         # (ts, count)
    lost_markers_dropped: int = 0
    vcpus: dict = field(default_factory=dict)        # (tgid, tid) -> vCPU id
    latency: dict = field(default_factory=dict)      # (tgid, vcpu) -> [counts..., no sync]
    demoted: str = ""                # why the result made every window inconclusive

    @property
    def instants_dropped(self) -> int:
        return self.instants_total - len(self.instants)

    def vcpu_of(self, tgid: int, tid: int) -> int:
        return self.vcpus.get((tgid, tid), -1)


@dataclass
class VisualData:
    result: AnalysisResult
    traces: list

    @property
    def start_ns(self) -> int:
        starts = [t.start_ns for t in self.traces if t.windows or t.instants or t.lost]
        return min(starts) if starts else min((t.start_ns for t in self.traces), default=0)


class Collector:
    """The Replayer's listener (``analysis.replay.ReplayListener``) for one trace."""

    kinds = INSTANT_KINDS | {Kind.LOST}

    def __init__(self, label: str = "", *, vcpu: Optional[int] = None,
                 max_windows: int = MAX_WINDOWS, max_instants: int = MAX_INSTANTS) -> None:
        self.vcpu_filter = vcpu
        self.max_windows = max_windows
        self.max_instants = max_instants
        self.trace = TraceVisual(label=label, meta={})
        self._min_ts: Optional[int] = None
        self._reasons: dict[str, str] = {}

    def _seen(self, ts: int) -> None:
        if self._min_ts is None or ts < self._min_ts:
            self._min_ts = ts
        if ts > self.trace.end_ns:
            self.trace.end_ns = ts

    # ------------------------------------------------------------------ listener
    def event(self, ev: Event) -> None:
        t = self.trace
        self._seen(ev.ts)
        if ev.kind == Kind.LOST:
            if len(t.lost) < MAX_LOST_MARKERS:
                t.lost.append((ev.ts, max(1, ev.value)))
            else:
                t.lost_markers_dropped += 1
            return
        if ev.vcpu >= 0 and ev.tid >= 0:
            t.vcpus.setdefault((ev.tgid, ev.tid), ev.vcpu)
        if ev.kind == Kind.FLUSH_REQUEST_PV and ev.need_flush <= 0:
            return                  # PVM emits it on every vCPU load: not a request
        t.instants_total += 1
        if len(t.instants) < self.max_instants:
            t.instants.append(Instant(ev.ts, ev.tgid, ev.tid, ev.vcpu, KIND_NAMES[ev.kind],
                                      ev.gfn, ev.role, ev.level, ev.value))

    def window(self, w: FlushWindow) -> None:
        if self.vcpu_filter is not None and w.vcpu != self.vcpu_filter:
            return
        t = self.trace
        self._seen(w.opened_ts)
        if w.closed_ts is not None:
            self._seen(w.closed_ts)
        if w.vcpu >= 0:
            t.vcpus[(w.tgid, w.tid)] = w.vcpu
        hist = t.latency.setdefault((w.tgid, w.vcpu), [0] * (len(LATENCY_LABELS) + 1))
        if w.closed_ts is not None:
            hist[latency_bin(w.latency_ns)] += 1
        t.windows_total += 1
        if len(t.windows) >= self.max_windows:
            t.windows_dropped[w.verdict] += 1
            return
        reason = self._reasons.setdefault(w.reason, w.reason)      # one copy per text
        t.windows.append(WindowMark(
            w.tgid, w.tid, w.vcpu, w.opened_ts, w.closed_ts, w.verdict, reason, w.pattern,
            w.meaningful, w.opener, w.closer, w.unsync_at_open, w.latency_ns,
            sum(1 for o in w.outstanding if o.reachable is not False),
            getattr(w, "evidence", None), getattr(w, "obligation", "")))

    # ------------------------------------------------------------------ end
    def finish(self, result: AnalysisResult) -> TraceVisual:
        """Close the record against the final result (which may demote every window)."""
        t = self.trace
        t.meta = dict(result.meta)
        start = int(t.meta.get("start_time_ns") or 0)
        if start and (self._min_ts is None or start <= self._min_ts):
            t.start_ns, t.start_source = start, "trace metadata (start_time_ns)"
        else:
            t.start_ns = self._min_ts or 0
            t.start_source = "first event the replay handed over"
        t.end_ns = max(t.end_ns, t.start_ns)
        decided = sum(result.windows.get(k, 0) for k in (OK, VIOLATION, SUSPECT))
        if not decided and any(m.verdict in (OK, VIOLATION, SUSPECT) for m in t.windows):
            # Aggregate.demote_all: losses or disorder the replay could not place.
            t.demoted = next((n for n in result.notes if "every window is inconclusive" in n),
                             "the analysis made every window inconclusive")
            t.windows = [m._replace(verdict=INCONCLUSIVE, reason=f"{t.demoted} (the replay "
                                    f"said: {m.verdict}: {m.reason})")
                         if m.verdict in (OK, VIOLATION, SUSPECT) else m for m in t.windows]
        t.windows.sort(key=lambda m: (m.ts, m.tgid, m.tid))
        t.instants.sort()
        return t


def collect_path(path: str | os.PathLike, *, vm: Optional[int] = None,
                 vcpu: Optional[int] = None, tgid_map: Optional[dict] = None,
                 **caps) -> tuple[AnalysisResult, TraceVisual]:
    """Analyse one trace, keeping what the timeline and report draw."""
    col = Collector(str(path), vcpu=vcpu, **caps)
    result = analyze_path(path, vm=vm, vcpu=vcpu, tgid_map=tgid_map, listener=col)
    return result, col.finish(result)


def visual_of(result: AnalysisResult, collector: Collector) -> VisualData:
    """What a live or replayed session (check, watch) saw, for the report."""
    return VisualData(result=result, traces=[collector.finish(result)])


def collect_paths(paths: Iterable[str | os.PathLike], **kw) -> VisualData:
    """Analyse several traces separately (as ``analyze`` does) and keep their windows."""
    paths = [str(p) for p in paths]
    results, traces = [], []
    for p in paths:
        r, t = collect_path(p, **kw)
        results.append(r)
        traces.append(t)
    check_selection(paths, results, kw.get("vm"), kw.get("vcpu"))   # as analyze does
    return VisualData(result=merge(results), traces=traces)


__all__ = ["Collector", "VisualData", "TraceVisual", "WindowMark", "Instant",
           "collect_path", "collect_paths", "visual_of", "instant_label", "latency_bin", "LATENCY_LABELS"]
