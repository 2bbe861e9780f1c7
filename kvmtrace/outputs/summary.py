"""`kvmtrace show`: a short description of a trace (events by kind, VMs, vCPUs, span, losses)."""
from __future__ import annotations

from typing import Any

import numpy as np

from kvmtrace.schema import KIND_NAMES, Kind
from kvmtrace.sources.native import Trace


class SummaryBuilder:
    """Accumulates a summary chunk by chunk (columns dict + comm names), so that ``show`` of
    a trace of any size holds one chunk at a time."""

    def __init__(self) -> None:
        self.kinds = np.zeros(256, dtype=np.int64)
        self.events = 0
        self.first: int | None = None
        self.last: int | None = None
        self.lost_markers = 0
        self.vm_events: dict[int, int] = {}
        self.vm_vcpus: dict[int, set] = {}
        self.vm_threads: dict[int, dict] = {}

    def add(self, cols: dict, comm) -> None:
        """One chunk: ``cols`` of schema columns, ``comm(i)`` the name of row i."""
        n = len(cols["ts"])
        if not n:
            return
        self.events += n
        kind = np.asarray(cols["kind"]).astype(np.int64)
        self.kinds += np.bincount(kind, minlength=256)[:256]
        ts = np.asarray(cols["ts"])
        lo, hi = int(ts.min()), int(ts.max())
        self.first = lo if self.first is None else min(self.first, lo)
        self.last = hi if self.last is None else max(self.last, hi)
        lost = kind == int(Kind.LOST)
        if lost.any():
            self.lost_markers += int(np.clip(np.asarray(cols["value"])[lost], 1, None).sum())
        tgid, tid, vcpu = (np.asarray(cols[k]) for k in ("tgid", "tid", "vcpu"))
        for g in np.unique(tgid).tolist():
            sel = tgid == g
            self.vm_events[g] = self.vm_events.get(g, 0) + int(np.count_nonzero(sel))
            v = vcpu[sel]
            self.vm_vcpus.setdefault(g, set()).update(np.unique(v[v >= 0]).tolist())
            rows = np.flatnonzero(sel)
            t = tid[rows]
            # The last row of each thread in the chunk names it.
            order = np.argsort(t[::-1], kind="stable")
            uniq, first = np.unique(t[::-1][order], return_index=True)
            threads = self.vm_threads.setdefault(g, {})
            for tt, k in zip(uniq.tolist(), first.tolist()):
                threads[tt] = comm(int(rows[len(rows) - 1 - order[k]]))

    def result(self, meta, recovery: str | None, warnings: list) -> dict[str, Any]:
        by_kind = {KIND_NAMES[k]: int(n) for k, n in enumerate(self.kinds.tolist()) if n}
        vms = [{"tgid": int(g), "events": self.vm_events[g], "vcpus": sorted(self.vm_vcpus[g]),
                "threads": {str(int(t)): c for t, c in sorted(self.vm_threads[g].items())}}
               for g in sorted(self.vm_events)]
        span_ns = (self.last - self.first) if self.events else 0
        return {
            "events": self.events,
            "by_kind": by_kind,
            "vms": vms,
            "first_ts": self.first,
            "last_ts": self.last,
            "span_s": span_ns / 1e9,
            "lost_events": max(meta.lost_events, self.lost_markers),
            "meta": meta.to_dict(),
            "recovery": recovery,
            "warnings": list(warnings),
        }


def summarize(trace: Trace) -> dict[str, Any]:
    ev = trace.events
    builder = SummaryBuilder()
    comm = ev["comm"].to_numpy(dtype=object)
    builder.add({k: ev[k].to_numpy() for k in ("ts", "kind", "value", "tgid", "tid", "vcpu")},
                lambda i: comm[i])
    return builder.result(trace.meta, trace.recovery.describe() if trace.recovery else None,
                          trace.warnings)


def render(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [
        f"events      {summary['events']}  over {summary['span_s']:.6f} s",
        f"source      {meta['source']} ({meta['source_format'] or '?'})"
        + (f" from {meta['source_path']}" if meta["source_path"] else ""),
        f"host        kernel {meta['kernel_release'] or '?'}, backend {meta['kvm_backend'] or '?'}, "
        f"tdp {_tdp(meta['tdp'])}, clock {meta['clock'] or '?'}",
        f"lost        {summary['lost_events']}",
        f"VMs         {len(summary['vms'])} ({_assignment(meta['vm_assignment'])})",
    ]
    for vm in summary["vms"]:
        vcpus = ",".join(map(str, vm["vcpus"])) or "none seen"
        lines.append(f"  tgid {vm['tgid']:>7}  {vm['events']:>9} events  vCPUs {vcpus}")
    lines.append("events by kind")
    for name, count in summary["by_kind"].items():
        lines.append(f"  {name:<22}{count:>10}")
    if summary["recovery"]:
        lines.append(f"recovery    {summary['recovery']}")
    skipped = summary.get("skipped_lines")
    if skipped and skipped["total"]:
        lines.append(f"skipped     {skipped['total']} lines that could not be decoded "
                     f"({skipped['decisive']} of model events)")
        for r in skipped["by_reason"]:
            ex = r["examples"][0] if r["examples"] else None
            lines.append(f"  {r['count']:>9}  {r['reason']}"
                         + (f"  (line {ex['line']}: {ex['text'][:60]!r})" if ex else ""))
    for note in meta["notes"]:
        lines.append(f"note        {note}")
    return "\n".join(lines)


def _tdp(tdp) -> str:
    return "unknown" if tdp is None else ("on" if tdp else "off (shadow paging)")


def _assignment(how: str) -> str:
    return {"tgid": "threads grouped by TGID",
            "single-vm-assumed": "no TGID in the source: one VM assumed",
            "tgid-map": "threads grouped by --tgid-map"}.get(how, how)
