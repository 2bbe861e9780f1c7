"""`kvmtrace show`: a short description of a trace (events by kind, VMs, vCPUs, span, losses)."""
from __future__ import annotations

from typing import Any

from kvmtrace.schema import KIND_NAMES, Kind
from kvmtrace.sources.native import Trace


def summarize(trace: Trace) -> dict[str, Any]:
    ev = trace.events
    by_kind = {KIND_NAMES[int(k)]: int(n) for k, n in ev["kind"].value_counts().sort_index().items()}
    vms = []
    for tgid, group in ev.groupby("tgid", sort=True):
        vcpus = sorted(int(v) for v in group["vcpu"].unique() if v >= 0)
        threads = group.groupby("tid")["comm"].last()
        vms.append({"tgid": int(tgid), "events": int(len(group)), "vcpus": vcpus,
                    "threads": {str(int(t)): c for t, c in threads.items()}})
    span_ns = int(ev["ts"].max() - ev["ts"].min()) if len(ev) else 0
    # A LOST marker of unknown size (value -1) stands for at least one event.
    lost_markers = int(ev.loc[ev["kind"] == Kind.LOST, "value"].clip(lower=1).sum()) if len(ev) else 0
    return {
        "events": int(len(ev)),
        "by_kind": by_kind,
        "vms": vms,
        "first_ts": int(ev["ts"].min()) if len(ev) else None,
        "last_ts": int(ev["ts"].max()) if len(ev) else None,
        "span_s": span_ns / 1e9,
        "lost_events": max(trace.meta.lost_events, lost_markers),
        "meta": trace.meta.to_dict(),
        "recovery": trace.recovery.describe() if trace.recovery else None,
        "warnings": list(trace.warnings),
    }


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
    for note in meta["notes"]:
        lines.append(f"note        {note}")
    return "\n".join(lines)


def _tdp(tdp) -> str:
    return "unknown" if tdp is None else ("on" if tdp else "off (shadow paging)")


def _assignment(how: str) -> str:
    return {"tgid": "threads grouped by TGID",
            "single-vm-assumed": "no TGID in the source: one VM assumed",
            "tgid-map": "threads grouped by --tgid-map"}.get(how, how)
