"""`kvmtrace show`: a short description of a trace (events by kind, VMs, vCPUs, span, losses).

``SummaryBuilder`` takes the trace one chunk at a time and keeps, per host thread (LOST
markers apart), only counts, a time range, the vCPU ids seen and the thread's last name:
what ``-p``/``--vcpu`` need is decided once the stream is consumed, by the same rule as
for a whole table (``sources.frame.select_events``), so memory does not grow with the trace.

May import: the contract and the sources' table helpers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from kvmtrace.schema import KIND_NAMES, Kind
from kvmtrace.sources.frame import select_events

SUMMARY_COLUMNS = ("ts", "kind", "value", "tgid", "tid", "vcpu")
_I32 = 1 << 31      # tgid/tid/vcpu are int32 (schema): shifted to unsigned for packed keys

GroupKey = tuple[bool, int, int]        # (LOST markers?, tgid, tid)


@dataclass
class _Group:
    """What the summary needs of one thread's rows (or of its LOST markers)."""

    events: int = 0
    kinds: dict[int, int] = field(default_factory=dict)
    first: Optional[int] = None
    last: Optional[int] = None
    lost_markers: int = 0
    vcpus: set[int] = field(default_factory=set)    # every id seen, -1 included
    last_row: int = -1                              # its last row, counted over the trace
    comm: str = ""                                  # the name that row carries


class SummaryBuilder:
    """Accumulates a summary chunk by chunk (columns dict + comm names), so that ``show`` of
    a trace of any size holds one chunk at a time."""

    def __init__(self) -> None:
        self.rows = 0
        self.groups: dict[GroupKey, _Group] = {}
        self.largest_chunk = 0

    def add(self, cols: dict, comm) -> None:
        """One chunk: ``cols`` of schema columns, ``comm[i]`` the name of row i (or None)."""
        n = len(cols["ts"])
        self.largest_chunk = max(self.largest_chunk, n)
        if n:
            lost = np.asarray(cols["kind"]) == int(Kind.LOST)
            for is_lost in (False, True):
                rows = np.flatnonzero(lost == is_lost)
                if len(rows):
                    self._add_rows(cols, comm, rows, is_lost)
        self.rows += n

    def _add_rows(self, cols: dict, comm, rows: np.ndarray, is_lost: bool) -> None:
        tgid, tid, vcpu = (np.asarray(cols[k])[rows].astype(np.int64) for k in ("tgid", "tid", "vcpu"))
        kind = np.asarray(cols["kind"])[rows].astype(np.int64)
        ts = np.asarray(cols["ts"])[rows].astype(np.int64)
        key = ((tgid + _I32).astype(np.uint64) << np.uint64(32)) | (tid + _I32).astype(np.uint64)
        uniq, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1)
        order = np.argsort(inv, kind="stable")       # rows grouped by thread, in trace order
        counts = np.bincount(inv, minlength=len(uniq))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        first = np.minimum.reduceat(ts[order], starts)
        last = np.maximum.reduceat(ts[order], starts)
        last_rows = rows[order[starts + counts - 1]]
        markers = np.zeros(len(uniq), dtype=np.int64)
        if is_lost:     # a LOST marker's value is how many records were dropped (at least 1)
            value = np.asarray(cols["value"])[rows].astype(np.int64)
            markers = np.add.reduceat(np.clip(value, 1, None)[order], starts)
        groups = []
        for i, k in enumerate(uniq.tolist()):
            g = self.groups.setdefault((is_lost, (k >> 32) - _I32, (k & 0xFFFFFFFF) - _I32), _Group())
            g.events += int(counts[i])
            g.first = int(first[i]) if g.first is None else min(g.first, int(first[i]))
            g.last = int(last[i]) if g.last is None else max(g.last, int(last[i]))
            g.lost_markers += int(markers[i])
            # The last row of each thread names it (a later chunk's rows come later).
            g.last_row = self.rows + int(last_rows[i])
            g.comm = _name(comm, int(last_rows[i]))
            groups.append(g)
        pairs, pair_counts = np.unique(inv * 256 + kind, return_counts=True)
        for p, c in zip(pairs.tolist(), pair_counts.tolist()):
            kinds = groups[p // 256].kinds
            kinds[p % 256] = kinds.get(p % 256, 0) + c
        for p in np.unique((inv << 32) | (vcpu + _I32)).tolist():
            groups[p >> 32].vcpus.add((p & 0xFFFFFFFF) - _I32)

    def selected(self, vm: Optional[int] = None, vcpu: Optional[int] = None,
                 source: str = "the trace") -> list[GroupKey]:
        """The groups -p ``vm`` / --vcpu ``vcpu`` keep, by ``select_events`` applied to one
        row per (group, vCPU id seen): its outcome depends on nothing else, so it is the
        whole-table selection.  Raises SelectionError (naming what exists) as it does."""
        keys = list(self.groups)
        if vm is None and vcpu is None:
            return keys
        rows = [(int(Kind.LOST) if k[0] else int(Kind.LOST) + 1, k[1], k[2], v, i)
                for i, k in enumerate(keys) for v in sorted(self.groups[k].vcpus)]
        population = pd.DataFrame(rows, columns=["kind", "tgid", "tid", "vcpu", "group"],
                                  dtype=np.int64)
        kept = select_events(population, vm=vm, vcpu=vcpu, source=source)
        return [keys[i] for i in sorted(set(kept["group"].tolist()))]

    def result(self, meta, recovery: str | None, warnings: list,
               keys: Optional[list[GroupKey]] = None) -> dict[str, Any]:
        """The summary of the groups ``keys`` (default: every row)."""
        keys = list(self.groups) if keys is None else keys
        kinds = np.zeros(256, dtype=np.int64)
        events, lost_markers = 0, 0
        first: Optional[int] = None
        last: Optional[int] = None
        vm_events: dict[int, int] = {}
        vm_vcpus: dict[int, set] = {}
        namers: dict[tuple[int, int], _Group] = {}
        for key in keys:
            g = self.groups[key]
            _, tgid, tid = key
            events += g.events
            lost_markers += g.lost_markers
            for k, c in g.kinds.items():
                kinds[k] += c
            first = g.first if first is None else min(first, g.first)
            last = g.last if last is None else max(last, g.last)
            vm_events[tgid] = vm_events.get(tgid, 0) + g.events
            vm_vcpus.setdefault(tgid, set()).update(v for v in g.vcpus if v >= 0)
            named = namers.get((tgid, tid))
            if named is None or g.last_row > named.last_row:
                namers[(tgid, tid)] = g
        vm_threads: dict[int, dict] = {}
        for (tgid, tid), g in namers.items():
            vm_threads.setdefault(tgid, {})[tid] = g.comm
        by_kind = {KIND_NAMES[k]: int(n) for k, n in enumerate(kinds.tolist()) if n}
        vms = [{"tgid": int(g), "events": vm_events[g], "vcpus": sorted(vm_vcpus[g]),
                "threads": {str(int(t)): c for t, c in sorted(vm_threads[g].items())}}
               for g in sorted(vm_events)]
        span_ns = (last - first) if events else 0
        return {
            "events": events,
            "by_kind": by_kind,
            "vms": vms,
            "first_ts": first,
            "last_ts": last,
            "span_s": span_ns / 1e9,
            "lost_events": max(meta.lost_events, lost_markers),
            "meta": meta.to_dict(),
            "recovery": recovery,
            "warnings": list(warnings),
        }


def _name(comm, i: int) -> str:
    if comm is None:
        return ""
    name = comm[i]
    return name if isinstance(name, str) else ""


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
