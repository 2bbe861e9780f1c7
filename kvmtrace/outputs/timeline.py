"""A Perfetto / chrome://tracing timeline of flush windows (Chrome trace-event JSON).

Layout: one process per VM (``pid`` = the VMM's TGID, i.e. ``struct kvm``), one thread per
vCPU (``struct kvm_vcpu``; host threads that ran the same vCPU share its track), one slice
per flush window from the serviced guest flush to the vCPU's next guest run, named after
its verdict first ("violation flush window": Perfetto colours slices by name and ignores
``cname``), thread-scoped instants for shadow-page sync / unsync / zap, flush requests and
flush-path functions, global instants where the collector lost events.  A window is a
complete (``X``) slice unless windows could overlap on its track (several host threads
ran the vCPU, or several traces were given): then an async ``b``/``e`` pair with an id.
Timestamps are microseconds from the earliest trace's start, which the metadata gives in
absolute nanoseconds.  The metadata events carry no timestamp (Perfetto rejects negative
ones and needs none).

May import: the contract, the model's result types, ``pipeline.visual`` (the data).
Consumes only ``VisualData``; stdlib ``json``.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from kvmtrace import __version__
from kvmtrace.pipeline.visual import (MAX_INSTANTS, MAX_LOST_MARKERS, MAX_WINDOWS, Instant,
                                      TraceVisual, VisualData, WindowMark, instant_label)

# chrome://tracing's reserved colour names (catapult color_scheme.html); Perfetto ignores them.
CNAME = {"ok": "good", "violation": "terrible", "suspect": "bad", "inconclusive": "grey",
         "open": "generic_work"}
SYNTHETIC_TID = 1 << 30          # tracks for sources without thread ids: this + vCPU
# A source without TGIDs puts every thread in "VM 0" (one VM assumed).  Perfetto treats pid
# 0 as the kernel's idle task (its maintainers: "avoid using pid = 0 if you are synthesizing
# a trace"), so that VM gets a pid above Linux's PID_MAX_LIMIT (2^22, include/linux/threads.h)
# that no real process can have; its name stays "VM 0".
UNKNOWN_VM_PID = (1 << 22) + 1
MIN_DUR_US = 0.001               # Perfetto may not draw a zero-length complete slice


def pid_of(tgid: int) -> int:
    return tgid if tgid > 0 else UNKNOWN_VM_PID


def window_name(verdict: str) -> str:
    return f"{verdict} flush window"


def _us(ns: int, start: int) -> float:
    return round((ns - start) / 1000.0, 3)


class _Tracks:
    """(trace, tgid, host tid) -> timeline tid: one track per vCPU, named once."""

    def __init__(self) -> None:
        self.by_vcpu: dict[tuple[int, int], int] = {}      # (tgid, vcpu) -> track tid
        self.names: dict[tuple[int, int], str] = {}        # (pid, tid) -> thread name
        self.sort: dict[tuple[int, int], int] = {}
        self.vms: dict[int, int] = {}                      # pid -> the VM's tgid

    def track(self, t: TraceVisual, tgid: int, tid: int, vcpu: int) -> int:
        if vcpu < 0:
            vcpu = t.vcpu_of(tgid, tid)
        if vcpu >= 0:
            key = (tgid, vcpu)
            track = self.by_vcpu.get(key)
            if track is None:
                track = tid if tid >= 0 else SYNTHETIC_TID + vcpu
                self.by_vcpu[key] = track
                self.names[(pid_of(tgid), track)] = f"vCPU {vcpu}"
                self.sort[(pid_of(tgid), track)] = vcpu
        else:
            track = tid if tid >= 0 else SYNTHETIC_TID - 1
            self.names.setdefault((pid_of(tgid), track),
                                  f"thread {tid}" if tid >= 0 else "unknown thread")
            self.sort.setdefault((pid_of(tgid), track), 100_000 + max(tid, 0))
        self.vms[pid_of(tgid)] = tgid
        return track


def _window_args(m: WindowMark, label: str, multi: bool) -> dict[str, Any]:
    args: dict[str, Any] = {
        "verdict": m.verdict, "reason": m.reason, "pattern": m.pattern,
        "evidence": m.evidence if m.evidence is not None else "not graded by this model",
        "unsync_pages_at_open": m.unsync_at_open, "unsync_pages_left": m.outstanding,
        "meaningful": m.meaningful,
        "flush_to_sync_latency_us": None if m.latency_ns is None else round(m.latency_ns / 1000, 3),
        "flush_path": m.opener, "sync_obligation": m.obligation,
        "closer": m.closer or "(open at the end of the trace)",
        "host_tid": m.tid, "opened_ns": m.ts, "closed_ns": m.closed_ts}
    if multi:
        args["trace"] = label
    return args


def _overlaps(marks: list[tuple[int, int, Any]]) -> bool:
    """Whether any two [start, end) intervals of one track overlap."""
    last_end = None
    for start, end, _ in sorted(marks, key=lambda x: (x[0], x[1])):
        if last_end is not None and start < last_end:
            return True
        last_end = end if last_end is None else max(last_end, end)
    return False


def build(data: VisualData) -> dict[str, Any]:
    """The trace-event JSON object for these traces."""
    start = data.start_ns
    multi = len(data.traces) > 1
    tracks = _Tracks()
    events: list[dict[str, Any]] = []
    per_track: dict[tuple[int, int], list] = {}
    end_ns = max((t.end_ns for t in data.traces), default=start)
    for t in data.traces:
        for m in t.windows:
            track = tracks.track(t, m.tgid, m.tid, m.vcpu)
            close = m.closed_ts if m.closed_ts is not None else max(t.end_ns, m.ts)
            per_track.setdefault((pid_of(m.tgid), track), []).append((m.ts, max(close, m.ts), (t, m)))
    next_id = 1
    for (pid, track), marks in per_track.items():
        asynchronous = _overlaps(marks)
        for opened, closed, (t, m) in marks:
            args = _window_args(m, t.label, multi)
            base = {"name": window_name(m.verdict), "cat": "flush-window", "pid": pid,
                    "tid": track, "cname": CNAME.get(m.verdict, "generic_work")}
            if asynchronous:
                events.append({**base, "ph": "b", "id": next_id, "ts": _us(opened, start),
                               "args": args})
                events.append({**base, "ph": "e", "id": next_id, "ts": _us(closed, start)})
                next_id += 1
            else:
                events.append({**base, "ph": "X", "ts": _us(opened, start),
                               "dur": max(MIN_DUR_US, round((closed - opened) / 1000.0, 3)),
                               "args": args})
    for t in data.traces:
        for i in t.instants:
            events.append(_instant(t, i, tracks, start))
        for ts, count in t.lost:
            # Global: no pid or tid (the collector lost them for every CPU's buffer).
            events.append({"name": "lost events", "cat": "lost", "ph": "i", "s": "g",
                           "ts": _us(ts, start), "args": {"count": count, "trace": t.label}})
    # Monotone timestamps; at one instant an async end comes before the next begin.
    order = {"e": 0, "X": 1, "b": 1, "i": 2}
    events.sort(key=lambda e: (e["ts"], order[e["ph"]]))
    return {"traceEvents": _metadata_events(tracks) + events, "displayTimeUnit": "ns",
            "metadata": {"kvmtrace": _metadata(data, start, end_ns)}}


def _instant(t: TraceVisual, i: Instant, tracks: _Tracks, start: int) -> dict[str, Any]:
    track = tracks.track(t, i.tgid, i.tid, i.vcpu)
    args: dict[str, Any] = {"host_tid": i.tid, "ts_ns": i.ts, "event": i.kind}
    cat, name = instant_label(i.kind)
    if cat == "shadow-mmu":
        args.update(gfn=hex(i.gfn), role=hex(i.role), level=i.level)
    elif i.value not in (0, -1):
        args["value"] = hex(i.value) if i.value > 0xffff else i.value
    return {"name": name, "cat": cat, "ph": "i", "s": "t",
            "ts": _us(i.ts, start), "pid": pid_of(i.tgid), "tid": track, "args": args}


def _metadata_events(tracks: _Tracks) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pid in sorted({pid for pid, _ in tracks.names}):
        tgid = tracks.vms.get(pid, pid)
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"name": f"VM {tgid}"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"sort_index": tgid}})
    for (pid, tid), name in sorted(tracks.names.items()):
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"name": name}})
        out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"sort_index": tracks.sort[(pid, tid)]}})
    return out


def _metadata(data: VisualData, start: int, end_ns: int) -> dict[str, Any]:
    r = data.result
    first = data.traces[0].meta if data.traces else {}
    return {
        "tool": f"kvmtrace {__version__}",
        "timestamps": "microseconds relative to start_time_ns (absolute, the trace's clock)",
        "start_time_ns": start, "end_time_ns": end_ns, "clock": first.get("clock", ""),
        "start_wall": first.get("start_wall", ""),
        "verdict": r.verdict, "pattern": r.pattern, "windows": r.windows,
        "findings_total": r.findings_total, "lost_events": r.lost_events,
        "caps": {"windows_per_trace": MAX_WINDOWS, "instants_per_trace": MAX_INSTANTS,
                 "lost_markers_per_trace": MAX_LOST_MARKERS},
        "traces": [_trace_meta(t) for t in data.traces],
        "notes": r.notes,
    }


def _trace_meta(t: TraceVisual) -> dict[str, Any]:
    out = {"trace": t.label, "start_time_ns": t.start_ns, "start_from": t.start_source,
           "end_time_ns": t.end_ns, "kernel_release": t.meta.get("kernel_release", ""),
           "kvm_backend": t.meta.get("kvm_backend", ""), "tdp": t.meta.get("tdp"),
           "windows": t.windows_total, "windows_shown": len(t.windows),
           "instants": t.instants_total, "instants_shown": len(t.instants),
           "lost_markers": len(t.lost) + t.lost_markers_dropped}
    if t.windows_dropped:
        out["windows_left_out_by_verdict"] = dict(t.windows_dropped)
        out["windows_left_out"] = (f"only the first {len(t.windows)} windows are drawn "
                                   "(memory cap); the counts above include all")
    if t.instants_dropped:
        out["instants_left_out"] = (f"only the first {len(t.instants)} of {t.instants_total} "
                                    "instants are drawn (memory cap)")
    if t.demoted:
        out["demoted"] = t.demoted
    return out


def dumps(data: VisualData, indent: Optional[int] = None) -> str:
    return json.dumps(build(data), indent=indent, separators=None if indent else (",", ":"))
