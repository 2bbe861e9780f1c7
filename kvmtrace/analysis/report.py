"""Aggregate flush windows into verdicts: per vCPU, per VM, per trace; JSON and text.

Verdict order (issue 3): ``violation`` > ``suspect`` > ``ok`` (some window closed ok) >
``inconclusive`` (only inconclusive or open windows) > ``no-flushes``.  Memory stays bounded:
windows are counted as they close; only the first ``max_findings`` findings are kept.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from kvmtrace.schema import KIND_NAMES, SALVAGED_NOTE, Kind, TraceMeta
from kvmtrace.analysis.window import (EVIDENCE, GENERATIONS, INCONCLUSIVE, NONE, OK, OPEN, PATTERNS,
                     SUSPECT, UNKNOWN, VIOLATION, FlushWindow)


NO_FLUSHES = "no-flushes"
COUNT_KEYS = ("total", "meaningful", "ok", "violation", "suspect", "inconclusive", "open")
FINDING_VERDICTS = (VIOLATION, SUSPECT, INCONCLUSIVE)


def empty_counts() -> dict[str, int]:
    return {k: 0 for k in COUNT_KEYS}


def empty_evidence() -> dict[str, int]:
    """Windows by the evidence that decided them (window.EVIDENCE)."""
    return {k: 0 for k in EVIDENCE}


PRECEDENCE = (VIOLATION, SUSPECT, OK, INCONCLUSIVE, NO_FLUSHES)


def verdict_of(counts: dict[str, int]) -> str:
    for verdict in (VIOLATION, SUSPECT, OK):
        if counts[verdict]:
            return verdict
    if counts[INCONCLUSIVE] or counts[OPEN]:
        return INCONCLUSIVE
    return NO_FLUSHES


def trace_pattern(meaningful: Counter, observed: Counter) -> str:
    """The pattern most meaningful windows showed; function-probe windows when none was
    meaningful (there the pattern is observed, not inferred)."""
    for counter in (meaningful, observed):
        known = [(n, p) for p, n in counter.items() if p in PATTERNS]
        if known:
            # Most frequent; ties go to the buggy pattern first.
            return max(known, key=lambda np_: (np_[0], -PATTERNS.index(np_[1])))[1]
    return UNKNOWN


def row_key(tgid: int, vcpu: int, tid: int) -> tuple[int, int, int]:
    """The one per-vCPU row key: (tgid, vCPU id, -1), or (tgid, -1, tid) while the thread's
    vCPU id is unknown."""
    return (tgid, vcpu if vcpu >= 0 else -1, -1 if vcpu >= 0 else tid)


def row_order(key: tuple[int, int, int]) -> tuple:
    """Report order of row keys: by VM, then vCPU id, threads without one last."""
    return (key[0], key[1] < 0, key[1], key[2])


@dataclass
class ReplayCounters:
    """What the replay counted besides windows: the Replayer fills it, the report reads it."""

    events: int = 0              # rows replayed (after --vm filtering)
    handled: int = 0             # rows that went through a handler
    lost_markers: int = 0        # records the LOST markers say were dropped
    invalid_markers: int = 0     # events the validation layer refused
    reordered: int = 0           # time-order inversions re-sorted inside chunks
    late: int = 0                # rows older than an earlier chunk's last
    ambiguous: int = 0           # re-sorted rows sharing a timestamp
    incomplete: int = 0          # rows lacking a field their kind needs
    vcpu_conflicts: int = 0      # rows naming another vCPU id than their thread had
    # Unsync SPs synced on a vCPU thread with no window open: a guest flush kvmtrace cannot
    # see (a PVM hypercall, flushpaths.py) - or a fault reusing an unsync SP.
    unexplained_syncs: int = 0
    absent_vm: Optional[int] = None   # --vm named a VM without events in the trace
    doubts: list = field(default_factory=list)    # the source says no window can be trusted
    vms_seen: list = field(default_factory=list)  # every VM with events (after --vm)


@dataclass
class VcpuRow:
    tgid: int
    vcpu: int
    tids: set = field(default_factory=set)
    counts: dict = field(default_factory=empty_counts)
    evidence: dict = field(default_factory=empty_evidence)
    lat_n: int = 0
    lat_sum: int = 0
    lat_max: int = 0
    meaningful_ok: int = 0       # meaningful windows that closed ok: a check's evidence
    lost: int = 0                # windows made inconclusive by lost events

    def add(self, w: FlushWindow) -> None:
        self.tids.add(w.tid)
        self.counts["total"] += 1
        self.counts[w.verdict] += 1
        self.lost += int(w.lost)
        self.evidence[w.evidence] += 1
        if w.meaningful:
            self.counts["meaningful"] += 1
            self.meaningful_ok += int(w.verdict == OK)
        lat = w.latency_ns
        if lat is not None:
            self.lat_n += 1
            self.lat_sum += lat
            self.lat_max = max(self.lat_max, lat)

    def to_dict(self) -> dict:
        return {"vcpu": self.vcpu if self.vcpu >= 0 else None, "tids": sorted(self.tids),
                "verdict": verdict_of(self.counts), "windows": dict(self.counts),
                "evidence": dict(self.evidence),
                "latency_ns": {"count": self.lat_n,
                               "mean": self.lat_sum // self.lat_n if self.lat_n else None,
                               "max": self.lat_max if self.lat_n else None}}


def _event_dict(ev) -> dict:
    kind = int(ev.kind)
    out: dict[str, Any] = {"ts": int(ev.ts), "tid": int(ev.tid), "event": KIND_NAMES[kind]}
    if ev.vcpu >= 0:
        out["vcpu"] = int(ev.vcpu)
    if kind in (Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP):
        out.update(gfn=int(ev.gfn), role=int(ev.role), level=int(ev.level))
        if kind == Kind.SP_GET and ev.created >= 0:
            out["created"] = int(ev.created)
    elif kind == Kind.FLUSH_REQUEST_PV:
        out["need_flush"] = int(ev.need_flush)
    elif kind not in (Kind.LOST,) and ev.value:
        out["value"] = int(ev.value)
    return out


def finding_dict(w: FlushWindow) -> dict:
    """A closed window as `analyze --json` lists it under `findings` (watch prints the same)."""
    return {"ts": w.opened_ts, "closed_ts": w.closed_ts, "tgid": w.tgid,
            "vcpu": w.vcpu if w.vcpu >= 0 else None, "tid": w.tid, "verdict": w.verdict,
            "reason": w.reason, "evidence": w.evidence, "pattern": w.pattern,
            "harmless": w.harmless, "meaningful": w.meaningful, "opener": w.opener,
            "obligation": w.obligation, "root_state": [r.to_dict() for r in w.root_state],
            "outstanding": [o.to_dict() for o in w.outstanding if o.reachable is not False][:32],
            "events": [_event_dict(e) for e in w.events]}


def is_finding(w: FlushWindow) -> bool:
    """Closed windows reported as findings: violation, suspect, inconclusive."""
    return w.verdict in FINDING_VERDICTS


class Aggregate:
    """Counts windows as they close; keeps the first findings."""

    def __init__(self, max_findings: int = 100, vcpu: Optional[int] = None) -> None:
        self.max_findings = max_findings
        self.vcpu_filter = vcpu
        self.rows: dict[tuple, VcpuRow] = {}
        self.findings: list[dict] = []
        self.findings_total = 0
        self.meaningful_patterns: Counter = Counter()
        self.observed_patterns: Counter = Counter()
        self.doubts: list[str] = []
        self.by_path: dict[str, dict[str, int]] = {}   # opener (flush path) -> counts

    def add(self, w: FlushWindow) -> None:
        if self.vcpu_filter is not None and w.vcpu != self.vcpu_filter:
            return
        key = row_key(w.tgid, w.vcpu, w.tid)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = VcpuRow(w.tgid, w.vcpu)
        row.add(w)
        counts = self.by_path.get(w.opener)
        if counts is None:
            counts = self.by_path[w.opener] = empty_counts()
        counts["total"] += 1
        counts["meaningful"] += int(w.meaningful)
        counts[w.verdict] += 1
        if w.verdict in (OK, VIOLATION, SUSPECT):
            if w.meaningful:
                self.meaningful_patterns[w.pattern] += 1
            if w.function_probes:
                self.observed_patterns[w.pattern] += 1
        if is_finding(w):
            self.findings_total += 1
            if len(self.findings) < self.max_findings:
                self.findings.append(finding_dict(w))

    def demote_all(self, reason: str) -> None:
        """Losses or disorder the replay could not place: no window can be trusted."""
        self.doubts.append(reason)
        for row in self.rows.values():
            c = row.counts
            c[INCONCLUSIVE] += c[OK] + c[VIOLATION] + c[SUSPECT]
            c[OK] = c[VIOLATION] = c[SUSPECT] = 0
            row.meaningful_ok = 0
            row.evidence = {**empty_evidence(), NONE: sum(row.evidence.values())}
        for c in self.by_path.values():
            c[INCONCLUSIVE] += c[OK] + c[VIOLATION] + c[SUSPECT]
            c[OK] = c[VIOLATION] = c[SUSPECT] = 0
        for f in self.findings:
            f["evidence"] = NONE
            if f["verdict"] != INCONCLUSIVE:
                f["verdict"] = INCONCLUSIVE
                f["reason"] = f"{reason} (the replay said: {f['reason']})"

    def result(self, counters: ReplayCounters, meta: TraceMeta, source: str = "") -> "AnalysisResult":
        """The verdicts, once the trace has ended (demotes every window the replay's doubts
        leave untrusted)."""
        lost = max(meta.lost_events, counters.lost_markers)
        notes = self._doubt_notes(counters, meta) + _remarks(counters)
        for reason in counters.doubts:
            notes.append(reason + "; every window is inconclusive")
            self.demote_all(reason)
        vms, total, evidence = self._vms(counters.vms_seen)
        verdict = verdict_of(total)
        invalid = counters.invalid_markers
        if verdict == NO_FLUSHES and (lost or invalid or self.doubts):
            # A flush window may be among what was lost or misread: "none seen" is no answer.
            verdict = INCONCLUSIVE
            why = (f"{lost} events were lost" if lost else
                   f"{invalid} events were invalid" if invalid else self.doubts[0])
            notes.append(f"no flush window was seen, but {why}: a flush may have been missed")
        return AnalysisResult(
            verdict=verdict, pattern=trace_pattern(self.meaningful_patterns, self.observed_patterns),
            windows=total, vms=vms, findings=list(self.findings),
            findings_total=self.findings_total, lost_events=lost, events=counters.events,
            handled=counters.handled, patterns=dict(self.meaningful_patterns), notes=notes,
            meta=meta.to_dict(), sources=[source] if source else [],
            by_path={k: dict(v) for k, v in sorted(self.by_path.items())}, evidence=evidence)

    def _doubt_notes(self, c: ReplayCounters, meta: TraceMeta) -> list[str]:
        """Notes on what makes windows untrusted; demotes every window for each doubt."""
        doubts = []
        if meta.lost_events > c.lost_markers:
            doubts.append(f"{meta.lost_events - c.lost_markers} events were lost at unknown "
                          "times (no LOST markers in the stream)")
        if c.late:
            doubts.append(f"{c.late} events arrived out of time order across chunks")
        if c.ambiguous:
            doubts.append(f"{c.reordered} time-order inversions were re-sorted in chunks where "
                          f"{c.ambiguous} events share a timestamp, so the order of simultaneous "
                          "events is unknown")
        notes = []
        for msg in doubts:
            notes.append(msg + "; every window is inconclusive")
            self.demote_all(msg)
        if c.reordered and not c.ambiguous:
            notes.append(f"{c.reordered} time-order inversions inside chunks were re-sorted")
        if c.incomplete:
            msg = (f"{c.incomplete} shadow-page or kvm_pv_tlb_flush events lack a field the "
                   "model needs (gfn, role or need_flush_tlb; libtraceevent's kvm plugin prints "
                   "no gfn: use `trace-cmd report -R`)")
            notes.append(msg + "; every window is inconclusive")
            self.demote_all(msg)
        if c.invalid_markers:
            notes.append(f"{c.invalid_markers} invalid events were not believed; the windows "
                         "they could change are inconclusive")
        if any(n.startswith(SALVAGED_NOTE) for n in meta.notes):
            msg = "the trace was read only up to corruption (--salvage)"
            notes.append(msg + "; no window is better than inconclusive")
            self.demote_all(msg)
        return notes

    def _vms(self, seen: list) -> tuple[list[dict], dict[str, int], dict[str, int]]:
        """Per-VM verdicts with their vCPU rows, the trace's window counts, and its windows
        by deciding evidence."""
        vms = []
        total = empty_counts()
        evidence = empty_evidence()
        by_vm: dict[int, list[VcpuRow]] = {}
        for key in sorted(self.rows, key=row_order):
            by_vm.setdefault(key[0], []).append(self.rows[key])
        for tgid in seen:
            # A VM whose events opened no window is still a VM the trace shows.
            if tgid >= 0 and tgid not in by_vm:
                by_vm[tgid] = []
        for tgid, rows in sorted(by_vm.items()):
            counts = empty_counts()
            by_evidence = empty_evidence()
            for row in rows:
                for k in COUNT_KEYS:
                    counts[k] += row.counts[k]
                for k in EVIDENCE:
                    by_evidence[k] += row.evidence[k]
            for k in COUNT_KEYS:
                total[k] += counts[k]
            for k in EVIDENCE:
                evidence[k] += by_evidence[k]
            vms.append({"tgid": tgid, "verdict": verdict_of(counts), "windows": counts,
                        "evidence": by_evidence, "vcpus": [r.to_dict() for r in rows]})
        return vms, total, evidence


def _remarks(c: ReplayCounters) -> list[str]:
    """Notes that change no verdict."""
    notes = []
    if c.absent_vm is not None:
        notes.append(f"no event of VM tgid {c.absent_vm} is in this trace")
    if c.vcpu_conflicts:
        notes.append(f"{c.vcpu_conflicts} events named a different vCPU id than their "
                     "thread had (vCPU moved between threads?)")
    if c.unexplained_syncs:
        notes.append(f"{c.unexplained_syncs} unsync shadow pages were synced on a vCPU "
                     "thread outside any flush window: a guest flush kvmtrace cannot see "
                     "(a PVM hypercall: kvmtrace doctor lists the paths it sees) or a "
                     "fault that reused an unsync page")
    return notes


@dataclass
class AnalysisResult:
    verdict: str
    pattern: str
    windows: dict
    vms: list
    findings: list
    findings_total: int
    lost_events: int
    events: int
    handled: int = 0
    patterns: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)
    by_path: dict = field(default_factory=dict)   # flush path (opener) -> window counts
    skipped_lines: dict = field(default_factory=dict)   # text lines a reader could not decode
    population: dict = field(default_factory=dict)   # tgid -> vCPU ids seen (the sources fill it)
    evidence: dict = field(default_factory=empty_evidence)    # windows by deciding evidence

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "pattern": self.pattern,
                "pattern_kernels": GENERATIONS[self.pattern], "windows": self.windows,
                "evidence": self.evidence,
                "vms": self.vms, "findings": self.findings,
                "findings_total": self.findings_total, "lost_events": self.lost_events,
                "events": self.events, "patterns": self.patterns, "notes": self.notes,
                "traces": self.sources, "windows_by_path": self.by_path,
                "skipped_lines": self.skipped_lines or {"total": 0, "decisive": 0, "by_reason": []}}


def merge(results: list[AnalysisResult]) -> AnalysisResult:
    """Several traces analysed separately, reported together."""
    if len(results) == 1:
        return results[0]
    total = empty_counts()
    evidence = empty_evidence()
    vms, findings, notes, sources = [], [], [], []
    patterns: Counter = Counter()
    by_path: dict[str, dict[str, int]] = {}
    for r in results:
        for path, c in r.by_path.items():
            into = by_path.setdefault(path, empty_counts())
            for k in COUNT_KEYS:
                into[k] += c[k]
        for k in COUNT_KEYS:
            total[k] += r.windows[k]
        for k in EVIDENCE:
            evidence[k] += r.evidence.get(k, 0)
        for vm in r.vms:
            vms.append({**vm, "trace": r.sources[0] if r.sources else ""})
        findings += [{**f, "trace": r.sources[0] if r.sources else ""} for f in r.findings]
        notes += [f"{r.sources[0] if r.sources else ''}: {n}" for n in r.notes]
        sources += r.sources
        patterns.update(r.patterns)
    known = [r.pattern for r in results if r.pattern != UNKNOWN]
    pattern = trace_pattern(patterns, Counter(known))
    # A trace alone can be inconclusive without any window (see Aggregate.result).
    verdict = min([verdict_of(total)] + [r.verdict for r in results], key=PRECEDENCE.index)
    return AnalysisResult(verdict, pattern, total, vms, findings,
                          sum(r.findings_total for r in results),
                          sum(r.lost_events for r in results), sum(r.events for r in results),
                          sum(r.handled for r in results), dict(patterns), notes, {}, sources,
                          dict(sorted(by_path.items())), evidence=evidence,
                          skipped_lines=merge_skipped([r.skipped_lines for r in results]))


def merge_skipped(parts: list[dict]) -> dict:
    """The skipped-line tallies of several traces as one (per-reason counts added)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    by_reason: dict[str, dict] = {}
    for p in parts:
        for r in p["by_reason"]:
            into = by_reason.setdefault(r["reason"], {"reason": r["reason"], "count": 0,
                                                      "examples": []})
            into["count"] += r["count"]
            into["examples"] = (into["examples"] + r["examples"])[:3]
    return {"total": sum(p["total"] for p in parts), "decisive": sum(p["decisive"] for p in parts),
            "by_reason": sorted(by_reason.values(), key=lambda r: -r["count"])}
