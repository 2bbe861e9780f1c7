"""``analyze``: replay trace files chunk by chunk, so memory does not grow with the trace.

Each file is opened with ``kvmtrace.sources.stream.open_events``, asking for the columns
the model reads (``analysis.selection.NEEDED``), and its chunks are fed to one
``analysis.Replayer``.  Several files are analysed separately and reported together.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

from kvmtrace.analysis.fleet import conclude
from kvmtrace.analysis.replay import ReplayListener, Replayer
from kvmtrace.analysis.report import AnalysisResult, merge
from kvmtrace.analysis.selection import NEEDED
from kvmtrace.schema import SchemaError
from kvmtrace.sources.frame import SelectionError
from kvmtrace.sources.native import TraceFileError
from kvmtrace.sources.stream import CHUNK_ROWS, EventStream, open_events

Progress = Callable[[str, int], None]


def analyze_path(path: str | os.PathLike, *, vm: Optional[int] = None,
                 vcpu: Optional[int] = None, chunk_rows: int = CHUNK_ROWS,
                 progress: Optional[Progress] = None, tgid_map: Optional[dict] = None,
                 max_findings: int = 100,
                 listener: Optional[ReplayListener] = None,
                 salvage: bool = False, strict: bool = False) -> AnalysisResult:
    """Replay one trace file of any supported format; return its result.  ``listener``
    (the timeline and report) is told of every window and of the events it asks for.
    ``strict``: a text line that cannot be decoded is an error instead of a counted skip
    (a skipped line of a model event makes every window inconclusive)."""
    path = str(path)
    stream = open_events(path, columns=NEEDED, chunk_rows=chunk_rows, tgid_map=tgid_map,
                         salvage=salvage, strict=strict)
    meta = stream.meta
    rep = Replayer(meta, vm=vm, vcpu=vcpu, source=path, max_findings=max_findings,
                   listener=listener)
    rows = _run(rep, path, stream, progress)
    if rows == 0:
        # Nothing recognisable at all (a header, or only events outside the model): the
        # trace cannot say whether a flush happened, so it gets no verdict.
        ignored = [n for n in meta.notes if n.startswith("ignored ")]
        raise TraceFileError(path, "no events to analyse" + (f" ({ignored[0]})" if ignored else ""))
    # The same ending as the fleet's per-VM function (analysis/fleet.analyze_vm).
    result = conclude(rep, meta, stream.doubts(), stream.skipped())
    return result


def _run(rep: Replayer, path: str, stream: EventStream, progress: Optional[Progress]) -> int:
    """Feed every chunk; return how many rows the file held (before --vm filtering)."""
    rows = 0
    try:
        for chunk in stream.chunks:
            rows += len(chunk)
            rep.feed(chunk)
            if progress is not None:
                progress(path, rep.events)
    except SchemaError as exc:
        raise TraceFileError(path, str(exc)) from None
    return rows


def check_selection(paths: list[str], results: list[AnalysisResult], vm: Optional[int],
                     vcpu: Optional[int]) -> None:
    """A filter that matches nothing is a usage error, never a quiet no-flushes."""
    label = paths[0] if len(paths) == 1 else f"{len(paths)} traces"
    vms: dict[int, set] = {}
    for r in results:
        for tgid, vcpus in r.population.items():
            vms.setdefault(tgid, set()).update(vcpus)
    if vm is not None and vm not in vms:
        listed = ", ".join(str(t) for t in sorted(vms) if t >= 0) or "none"
        raise SelectionError(f"no VM {vm} in {label}; VMs: {listed}")
    if vcpu is not None:
        scope = {vm: vms[vm]} if vm is not None else vms
        known = sorted(set().union(*scope.values())) if scope else []
        if vcpu not in known:
            where = f"VM {vm} of {label}" if vm is not None else label
            listed = ", ".join(map(str, known)) or "none with a known id"
            raise SelectionError(f"no vCPU {vcpu} in {where}; vCPUs: {listed}")


def analyze_paths(paths: Iterable[str | os.PathLike], **kw) -> AnalysisResult:
    """Analyse several traces separately and report them together."""
    paths = [str(p) for p in paths]
    results = [analyze_path(p, **kw) for p in paths]
    check_selection(paths, results, kw.get("vm"), kw.get("vcpu"))
    return merge(results)
