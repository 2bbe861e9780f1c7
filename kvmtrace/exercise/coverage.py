"""Which guest flush paths this host services, and which of them kvmtrace can see and judge.

One row per path of kvmtrace/analysis/flushpaths.py: ``serviced`` comes from running the
built-in guest once per path (flushvia.probe; needs /dev/kvm), ``seen`` from the row's
reveal for this backend and whether those tracepoints exist in tracefs, ``judged`` from the
row's limits on this backend (a window kvmtrace opens but can judge only as suspect).
``doctor`` prints the table; ``exercise --flush-via all`` uses only rows serviced, seen and
judged.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from kvmtrace.analysis.flushpaths import PATHS, FlushPath

_EVENT = re.compile(r"\b(kvm|kvmmmu):(\w+)")


@dataclass
class PathCoverage:
    path: str
    opener: str
    obligation: str
    serviced: bool | None        # None: not tried (exercise unavailable or not offered)
    service_note: str
    seen: bool
    seen_note: str
    judged: bool
    judge_note: str

    def to_dict(self) -> dict:
        return asdict(self)


def _tracepoints_present(reveal: str, tracefs_events) -> tuple[bool, str]:
    names = _EVENT.findall(reveal)
    if tracefs_events is None or not names:
        return bool(reveal), reveal
    missing = [f"{s}:{e}" for s, e in names if (s, e) not in tracefs_events]
    if missing:
        return False, f"{reveal} (absent here: {', '.join(missing)})"
    return True, reveal


def raw_problem() -> str:
    """Why the exact mode's raw-tracepoint revealers (the PVM flush hypercall) cannot run
    on this host, from its BTF ("" = they can)."""
    from kvmtrace.host import exactlayout
    layout = exactlayout.discover()
    if not layout.usable:
        return "exact mode off: " + "; ".join(layout.problems)
    return layout.pvm_hypercall_problem()


def coverage(backend: str, support, tracefs_events=None,
             raw: str | None = None) -> list[PathCoverage]:
    """``support``: a flushvia.Support (or None when the guest could not run);
    ``tracefs_events``: the set of (system, event) this host has (None: unknown);
    ``raw``: raw_problem() ("" = the raw-tracepoint revealers run, None = not checked)."""
    from kvmtrace.exercise.flushvia import backend_key
    backend = backend_key(backend)
    rows = []
    for p in PATHS:
        rows.append(_row(p, backend, support, tracefs_events, raw))
    return rows


def _row(p: FlushPath, backend: str, support, tracefs_events, raw: str | None = None) -> PathCoverage:
    if not p.exercise:
        serviced, note = None, "not a guest action of its own (any flush pending at a VM exit)"
    elif support is None:
        serviced, note = None, "not tried: the built-in guest cannot run here"
    elif p.name in support.serviced:
        serviced, note = True, support.serviced[p.name]
    elif p.name in support.refused:
        serviced, note = False, support.refused[p.name]
    elif p.name in support.untried:
        serviced, note = None, "not tried: " + support.untried[p.name]
    else:
        serviced, note = None, "not tried"
    reveal = p.revealed_on(backend)
    if reveal.startswith("raw_tracepoint"):
        # Read from KVM's structures by the exact mode: only where BTF has the fields.
        seen = raw == ""
        seen_note = reveal if seen else (
            f"{reveal}: not checked" if raw is None else f"{reveal}: off here: {raw}")
    elif reveal:
        seen, seen_note = _tracepoints_present(reveal, tracefs_events)
    else:
        seen, seen_note = False, p.limits.get(backend, f"no event reveals it on {backend}")
    limit = p.limits.get(backend, "") if seen else ""
    judged = seen and not limit
    return PathCoverage(p.name, p.opener.name.lower(), p.obligation, serviced, note, seen,
                        seen_note, judged, limit if seen else "")


def render(rows: list[PathCoverage]) -> list[str]:
    mark = {True: "yes", False: "no", None: "-"}
    out = ["flush paths (host services / kvmtrace sees / kvmtrace judges):"]
    for r in rows:
        out.append(f"  {r.path:<15} services {mark[r.serviced]:<4} sees {mark[r.seen]:<4} "
                   f"judges {mark[r.judged]:<4} obligation {r.obligation}")
        if r.service_note:
            out.append(f"  {'':<15}   host: {r.service_note}")
        if r.seen_note:
            out.append(f"  {'':<15}   seen by: {r.seen_note}")
        if r.judge_note:
            out.append(f"  {'':<15}   limit: {r.judge_note}")
    return out
