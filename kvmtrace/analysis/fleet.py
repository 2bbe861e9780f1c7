"""The per-VM function of fleet analysis, its declared row schema, and host verdicts.

Replay state is per VM: shadow pages (``struct kvm_mmu_page``) belong to one ``struct
kvm``, flush windows to one vCPU, so a VM's events replay alone exactly as inside its host's
whole trace when the replay keeps what ``Replayer(vm=tgid)`` keeps (the VM's events and
every LOST/INVALID marker: a loss of an unknown VM may have held this VM's events).
``analyze_vm`` is that replay over one VM's event table and metadata; ``analyze --vm TGID``
runs the same ``Replayer(vm=...)`` and ``conclude``, and ``vm_row`` turns either result
(its ``to_dict()``, which is ``analyze --json``) into one row of ``ROW_SCHEMA``.  Every
fleet engine (local, DuckDB, Spark) calls ``analyze_vm_parts``; only where the rows come
from differs.

Host and fleet verdicts: a host is as bad as its worst VM and the fleet as bad as its
worst host (``SEVERITY``): one VM or host that could not be judged is not hidden by others
being ok, however VMs are grouped into hosts.  A VM's own verdict is ``analyze --vm``'s.

May import: the contract and the model (numpy/pandas); no I/O.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from kvmtrace.schema import TraceMeta
from kvmtrace.analysis.replay import Replayer
from kvmtrace.analysis.report import (COUNT_KEYS, NO_FLUSHES, AnalysisResult, merge)
from kvmtrace.analysis.window import EVIDENCE, INCONCLUSIVE, OK, SUSPECT, VIOLATION

# The declared output schema: (column, type), type "string" or "int64".  The Spark engine
# builds its StructType from it; every engine returns rows with exactly these keys.
ROW_SCHEMA: tuple[tuple[str, str], ...] = (
    ("host", "string"),
    ("vm", "int64"),                     # the VM's TGID (its VMM process)
    ("kernel", "string"),                # kernel release(s) of the recordings
    ("vcpus", "string"),                 # JSON list of the vCPU ids that had flush windows
    ("events", "int64"),                 # rows replayed
    *((f"windows_{k}", "int64") for k in COUNT_KEYS),
    *((f"evidence_{k}", "int64") for k in EVIDENCE),
    ("pattern", "string"),               # the kernel flush pattern (window.PATTERNS)
    ("lost_events", "int64"),
    ("findings_total", "int64"),
    ("findings", "string"),              # JSON list of finding objects (as analyze --json)
    ("notes", "string"),                 # JSON list of notes (why a verdict is inconclusive)
    ("verdict", "string"),
)
ROW_COLUMNS: tuple[str, ...] = tuple(name for name, _ in ROW_SCHEMA)
INT_COLUMNS: frozenset = frozenset(name for name, kind in ROW_SCHEMA if kind == "int64")
# Worst first: the order hosts are listed in and the fleet verdict is taken by.
SEVERITY = (VIOLATION, SUSPECT, INCONCLUSIVE, NO_FLUSHES, OK)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def conclude(rep: Replayer, meta: TraceMeta, doubts: Sequence[str] = (),
             skipped: Optional[dict] = None) -> AnalysisResult:
    """The result of a replay whose input has ended: the source's doubts distrust every
    window, the metadata's notes come first (``analyze`` and ``analyze_vm`` share this)."""
    for reason in doubts:
        rep.distrust(reason)
    result = rep.finish()
    result.notes = list(dict.fromkeys(meta.notes + result.notes))
    result.skipped_lines = skipped or {}
    result.population = {tgid: sorted({th.vcpu for th in vm.threads.values() if th.vcpu >= 0})
                         for tgid, vm in rep.vms.items() if vm.threads}
    for tgid in rep.tgids_seen:
        result.population.setdefault(int(tgid), [])
    return result


def replay_vm(events: pd.DataFrame, meta: TraceMeta, vm: int, source: str = "",
              max_findings: int = 100) -> AnalysisResult:
    """One VM of one trace: its events (other VMs' rows are left out as --vm does)."""
    rep = Replayer(meta, vm=vm, source=source, max_findings=max_findings)
    rep.feed(events)
    return conclude(rep, meta)


def analyze_vm(events: pd.DataFrame, meta: TraceMeta, *, host: str = "",
               vm: Optional[int] = None, source: str = "") -> list[dict]:
    """The fleet row of one VM's events of one recording (``vm``: its TGID, by default the
    one TGID of the non-marker rows).  A list, so a caller can concatenate rows."""
    if vm is None:
        vm = _only_vm(events)
    return analyze_vm_parts([(source, events, meta)], host=host, vm=vm)


def analyze_vm_parts(parts: Iterable[tuple[str, pd.DataFrame, TraceMeta]], *, host: str,
                     vm: int) -> list[dict]:
    """The fleet row of one VM recorded in several parts ``(name, events, meta)``: each
    replayed alone, reported together (``analyze`` of several files), in name order."""
    parts = sorted(parts, key=lambda p: p[0])
    results = [replay_vm(events, meta, vm, source=name) for name, events, meta in parts]
    kernel = ",".join(sorted({m.kernel_release for _, _, m in parts if m.kernel_release}))
    return [vm_row(merge(results).to_dict(), host=host, vm=vm, kernel=kernel)]


def _only_vm(events: pd.DataFrame) -> int:
    from kvmtrace.schema import Kind
    kind = events["kind"].to_numpy()
    tgids = set(events["tgid"].to_numpy()[(kind != int(Kind.LOST)) & (kind != int(Kind.INVALID))].tolist())
    if len(tgids) != 1:
        raise ValueError(f"analyze_vm needs one VM's events (found TGIDs {sorted(tgids)}): pass vm=")
    return int(tgids.pop())


def vm_row(result: dict, *, host: str, vm: int, kernel: str) -> dict:
    """One ROW_SCHEMA row from a per-VM result (``AnalysisResult.to_dict()``, i.e. the
    output of ``analyze --json --vm TGID``)."""
    # A VM recorded in several parts has one entry per recording: the vCPUs of them all.
    vcpus = sorted({r["vcpu"] for v in result["vms"] if v["tgid"] == vm
                    for r in v["vcpus"] if r["vcpu"] is not None})
    row: dict[str, Any] = {"host": host, "vm": int(vm), "kernel": kernel, "vcpus": _json(vcpus),
                           "events": int(result["events"])}
    for k in COUNT_KEYS:
        row[f"windows_{k}"] = int(result["windows"][k])
    for k in EVIDENCE:
        row[f"evidence_{k}"] = int(result["evidence"].get(k, 0))
    row.update(pattern=result["pattern"], lost_events=int(result["lost_events"]),
               findings_total=int(result["findings_total"]), findings=_json(result["findings"]),
               notes=_json(result["notes"]), verdict=result["verdict"])
    return {name: row[name] for name in ROW_COLUMNS}


def normalise_row(row: dict) -> dict:
    """A row as an engine returned it (numpy or Spark types, partition values as strings)
    in plain Python types, in schema order."""
    return {name: int(row[name]) if name in INT_COLUMNS else str(row[name]) for name in ROW_COLUMNS}


def sort_rows(rows: Iterable[dict]) -> list[dict]:
    return sorted((normalise_row(r) for r in rows), key=lambda r: (r["host"], r["vm"]))


# ----------------------------------------------------------------------------- hosts

def host_verdict(verdicts: Iterable[str]) -> str:
    """A host is as bad as its worst VM (SEVERITY), as the fleet is as bad as its worst
    host: a VM that could not be judged keeps its host from reading ok, whichever other
    VMs share the host.  (``analyze`` of one trace ranks ok above inconclusive across the
    trace's windows; across VMs that would make a verdict depend on how VMs are grouped.)"""
    return min(verdicts, key=SEVERITY.index, default=NO_FLUSHES)


def summarize(rows: Sequence[dict]) -> dict:
    """The fleet: a verdict per host (worst hosts first), kernel patterns by release, the
    fleet's verdict (its worst host's) and totals.  ``rows`` as ``sort_rows`` gives them."""
    by_host: dict[str, list[dict]] = {}
    for r in rows:
        by_host.setdefault(r["host"], []).append(r)
    hosts = []
    for host, vms in by_host.items():
        windows = {k: sum(r[f"windows_{k}"] for r in vms) for k in COUNT_KEYS}
        hosts.append({
            "host": host, "verdict": host_verdict(r["verdict"] for r in vms),
            "vms": len(vms), "vm_verdicts": dict(Counter(r["verdict"] for r in vms)),
            "windows": windows, "events": sum(r["events"] for r in vms),
            "lost_events": sum(r["lost_events"] for r in vms),
            "findings_total": sum(r["findings_total"] for r in vms),
            "kernels": sorted({k for r in vms for k in r["kernel"].split(",") if k}),
            "worst_vm": min(vms, key=lambda r: (SEVERITY.index(r["verdict"]), r["vm"]))["vm"]})
    hosts.sort(key=lambda h: (SEVERITY.index(h["verdict"]), -h["windows"]["violation"], h["host"]))
    kernels: dict[str, dict] = {}
    for r in rows:
        for release in (r["kernel"].split(",") if r["kernel"] else ["unknown"]):
            k = kernels.setdefault(release, {"hosts": set(), "vms": 0, "patterns": Counter(),
                                             "verdicts": Counter()})
            k["hosts"].add(r["host"])
            k["vms"] += 1
            k["patterns"][r["pattern"]] += 1
            k["verdicts"][r["verdict"]] += 1
    kernel_list = [{"kernel": release, "hosts": len(k["hosts"]), "vms": k["vms"],
                    "patterns": dict(k["patterns"].most_common()),
                    "vm_verdicts": dict(k["verdicts"])}
                   for release, k in sorted(kernels.items())]
    verdict = hosts[0]["verdict"] if hosts else NO_FLUSHES
    return {"verdict": verdict, "hosts": hosts, "kernels": kernel_list,
            "host_verdicts": dict(Counter(h["verdict"] for h in hosts)),
            "vms": len(rows), "events": sum(r["events"] for r in rows)}
