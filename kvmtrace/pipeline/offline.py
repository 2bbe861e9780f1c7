"""``analyze``: replay trace files chunk by chunk, so memory does not grow with the trace.

Each file is opened with ``kvmtrace.sources.stream.open_events``, asking for the columns
the model reads (``analysis.selection.NEEDED``), and its chunks are fed to one
``analysis.Replayer``.  Several files are analysed separately and reported together.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

from kvmtrace.analysis.replay import ReplayListener, Replayer
from kvmtrace.analysis.report import AnalysisResult, merge
from kvmtrace.analysis.selection import NEEDED
from kvmtrace.schema import SchemaError
from kvmtrace.sources.native import TraceFileError
from kvmtrace.sources.stream import CHUNK_ROWS, EventStream, open_events

Progress = Callable[[str, int], None]


def analyze_path(path: str | os.PathLike, *, vm: Optional[int] = None,
                 vcpu: Optional[int] = None, chunk_rows: int = CHUNK_ROWS,
                 progress: Optional[Progress] = None, tgid_map: Optional[dict] = None,
                 max_findings: int = 100,
                 listener: Optional[ReplayListener] = None) -> AnalysisResult:
    """Replay one trace file of any supported format; return its result.  ``listener``
    (the timeline and report) is told of every window and of the events it asks for."""
    path = str(path)
    stream = open_events(path, columns=NEEDED, chunk_rows=chunk_rows, tgid_map=tgid_map)
    meta = stream.meta
    rep = Replayer(meta, vm=vm, vcpu=vcpu, source=path, max_findings=max_findings,
                   listener=listener)
    rows = _run(rep, path, stream, progress)
    if rows == 0:
        # Nothing recognisable at all (a header, or only events outside the model): the
        # trace cannot say whether a flush happened, so it gets no verdict.
        ignored = [n for n in meta.notes if n.startswith("ignored ")]
        raise TraceFileError(path, "no events to analyse" + (f" ({ignored[0]})" if ignored else ""))
    result = rep.finish()
    result.notes = list(dict.fromkeys(meta.notes + result.notes))
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


def analyze_paths(paths: Iterable[str | os.PathLike], **kw) -> AnalysisResult:
    """Analyse several traces separately and report them together."""
    return merge([analyze_path(p, **kw) for p in paths])
