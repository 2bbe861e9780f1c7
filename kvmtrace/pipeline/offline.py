"""Analyse trace files chunk by chunk, so memory does not grow with the trace.

Parquet (kvmtrace's archive format) is streamed by record batch: metadata and columns are
validated by ``kvmtrace.sources.native.iter_parquet``, then only the numeric columns the model
needs are decoded straight to numpy (the ``comm`` strings dictionary-encoded), which is
what makes replay run at tens of millions of events per second.  Every other format goes
through ``kvmtrace.sources.text.load`` and is fed in slices.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from kvmtrace.sources.text import load
from kvmtrace.schema import SchemaError
from kvmtrace.sources.native import ARROW_SCHEMA, TraceFileError, is_parquet, iter_parquet
from kvmtrace.analysis.replay import ReplayListener, Replayer
from kvmtrace.analysis.report import AnalysisResult, merge
from kvmtrace.analysis.selection import NEEDED, CommColumn

CHUNK_ROWS = 1 << 20
Progress = Callable[[str, int], None]


def _parquet_arrays(path: str, chunk_rows: int) -> tuple:
    """(meta, iterator of (columns dict, comm array)) for a kvmtrace Parquet file."""
    meta, _ = iter_parquet(path, chunk_rows)        # validates metadata and columns
    pf = pq.ParquetFile(path, read_dictionary=["comm"])
    types = {f.name: f.type for f in ARROW_SCHEMA}
    needed = [n for n in NEEDED if n in pf.schema_arrow.names]   # older files lack some
    for name in needed:
        if pf.schema_arrow.field(name).type != types[name]:
            raise TraceFileError(path, f"column {name!r} is {pf.schema_arrow.field(name).type}, "
                                       f"not {types[name]}")

    def comm_of(table) -> tuple:
        comm = table.column("comm")
        if isinstance(comm, pa.ChunkedArray):
            comm = comm.combine_chunks() if comm.num_chunks != 1 else comm.chunk(0)
        if isinstance(comm, pa.DictionaryArray):
            return comm.dictionary.to_pylist(), comm.indices.fill_null(-1).to_numpy()
        return comm.to_numpy(zero_copy_only=False), None

    def comm_loader(i: int) -> Callable[[], tuple]:
        def load() -> tuple:
            try:
                return comm_of(pf.read_row_group(i, columns=["comm"], use_threads=False))
            except pa.ArrowException as exc:
                raise TraceFileError(path, f"corrupt Parquet data ({exc})") from None
        return load

    def batches() -> Iterator[tuple]:
        """(columns table, CommColumn) per chunk."""
        for i in range(pf.num_row_groups):
            # kvmtrace writes row groups of at most 2**20 rows: read each whole (fastest),
            # its comm strings only if the replay asks; a foreign file's huge row groups
            # are streamed in slices instead.
            if pf.metadata.row_group(i).num_rows <= 4 * chunk_rows:
                yield (pf.read_row_group(i, columns=needed, use_threads=False),
                       CommColumn(loader=comm_loader(i)))
            else:
                for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[i],
                                             columns=needed + ["comm"], use_threads=False):
                    yield batch, CommColumn(*comm_of(batch))

    def chunks() -> Iterator[tuple[dict, CommColumn]]:
        try:
            for batch, comm in batches():
                cols = {}
                for name in needed:
                    arr = batch.column(name)
                    if arr.null_count:
                        raise TraceFileError(path, f"column {name!r} has empty values")
                    cols[name] = arr.to_numpy()
                yield cols, comm
        except pa.ArrowException as exc:
            raise TraceFileError(path, f"corrupt Parquet data ({exc})") from None
    return meta, chunks()


def analyze_path(path: str | os.PathLike, *, vm: Optional[int] = None,
                 vcpu: Optional[int] = None, chunk_rows: int = CHUNK_ROWS,
                 progress: Optional[Progress] = None, tgid_map: Optional[dict] = None,
                 max_findings: int = 100,
                 listener: Optional[ReplayListener] = None) -> AnalysisResult:
    """Replay one trace file of any supported format; return its result.  ``listener``
    (the timeline and report) is told of every window and of the events it asks for."""
    path = str(path)
    if is_parquet(path):
        meta, chunks = _parquet_arrays(path, chunk_rows)
        rep = Replayer(meta, vm=vm, vcpu=vcpu, source=path, max_findings=max_findings,
                       listener=listener)
        rows = _run(rep, path, ((c, m) for c, m in chunks), progress)
    else:
        trace = load(path, tgid_map=tgid_map)
        meta = trace.meta
        for w in trace.warnings:
            if w not in meta.notes:
                meta.notes.append(w)
        rep = Replayer(meta, vm=vm, vcpu=vcpu, source=path, max_findings=max_findings,
                       listener=listener)
        ev = trace.events
        cols = {name: ev[name].to_numpy() for name in NEEDED if name in ev.columns}
        comm = ev["comm"].to_numpy(dtype=object) if "comm" in ev.columns else None

        def slices() -> Iterable[tuple[dict, Optional[CommColumn]]]:
            for start in range(0, max(len(ev), 1), chunk_rows):
                end = start + chunk_rows
                yield ({k: v[start:end] for k, v in cols.items()},
                       CommColumn(comm[start:end]) if comm is not None else None)
        rows = _run(rep, path, slices(), progress)
    if rows == 0:
        # Nothing recognisable at all (a header, or only events outside the model): the
        # trace cannot say whether a flush happened, so it gets no verdict.
        ignored = [n for n in meta.notes if n.startswith("ignored ")]
        raise TraceFileError(path, "no events to analyse" + (f" ({ignored[0]})" if ignored else ""))
    result = rep.finish()
    result.notes = list(dict.fromkeys(meta.notes + result.notes))
    return result


def _run(rep: Replayer, path: str, chunks: Iterable, progress: Optional[Progress]) -> int:
    """Feed every chunk; return how many rows the file held (before --vm filtering)."""
    rows = 0
    try:
        for cols, comm in chunks:
            rows += len(cols["ts"])
            rep.feed_arrays(cols, comm)
            if progress is not None:
                progress(path, rep.events)
    except SchemaError as exc:
        raise TraceFileError(path, str(exc)) from None
    return rows


def analyze_paths(paths: Iterable[str | os.PathLike], **kw) -> AnalysisResult:
    """Analyse several traces separately and report them together."""
    return merge([analyze_path(p, **kw) for p in paths])
