"""One event-stream API for every trace file: ``open_events(path)`` -> chunks of events.

The format is chosen by content, not by name: kvmtrace Parquet, the Arrow stream an
unfinished recording leaves in ``NAME.part``, kvmtrace JSON Lines (gzipped or not), and the
text of ftrace, ``trace-cmd report`` and ``perf script``.  Each format has one reader
(``READERS``), called with the columns the consumer (the model) asks for and a chunk size,
returning an ``EventStream``: the trace's metadata, warnings, and an iterator of
``schema.Chunk``, the type the live recorder's chunks arrive in too
(``kvmtrace.sources.chunks``).  Parquet is read chunk by chunk (``sources.parquet``); the
other readers still read the whole file and hand it over in slices.

``load(path)`` is the whole-table view of the same readers, for ``show``, ``convert`` and
tests.

May import: the contract and the other source modules.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from kvmtrace.schema import COLUMNS, NUMERIC_COLUMNS, Chunk, TraceMeta
from kvmtrace.sources.frame import concat, conform
from kvmtrace.sources.native import (GZIP_MAGIC, PART_SUFFIX, STDIN_NAMES, Recovery, Trace,
                                     TraceFileError, read_ipc, read_jsonl, reading, sniff_native,
                                     special_file, spool_stdin)
from kvmtrace.sources.parquet import read_parquet
from kvmtrace.sources.validate import Validator

CHUNK_ROWS = 1 << 20
SNIFF_BYTES = 4096


@dataclass
class EventStream:
    """An open trace: what it says about itself, and its events in chunks (read once)."""

    path: str
    format: str                          # "parquet", "ipc", "jsonl" or "text"
    meta: TraceMeta
    chunks: Iterator[Chunk]
    warnings: list[str] = field(default_factory=list)
    recovery: Optional[Recovery] = None
    # The whole event table, when the reader had it in memory anyway (load() uses it).
    table: Optional[pd.DataFrame] = None
    # What a streaming reader learned on the way, valid once ``chunks`` is exhausted (text):
    # why no window can be trusted, and the lines it could not decode.
    doubts: Callable[[], list] = field(default=lambda: [])
    skipped: Callable[[], dict] = field(default=lambda: {})


Reader = Callable[..., EventStream]


def open_events(path: str | os.PathLike, columns: Optional[Sequence[str]] = None,
                chunk_rows: int = CHUNK_ROWS,
                tgid_map: Optional[dict[int, int]] = None,
                salvage: bool = False, strict: bool = False) -> EventStream:
    """Open a trace of any supported format for reading in chunks.

    ``columns``: the numeric columns the consumer needs (default: all); each chunk also
    carries the task names, decoded lazily.  The reader's warnings are also added to the
    metadata's notes, so every consumer reports them.  Every chunk goes through the one
    validation layer (``sources.validate``): impossible events become INVALID markers.
    Raises TraceFileError naming the file (and where in it), for any reader error;
    ``salvage`` keeps what precedes corruption (the verdict is then at best inconclusive).
    ``-`` (or /dev/stdin) reads standard input.  ``strict``: a text line that cannot be
    decoded is an error instead of a counted skip."""
    stream = _open(path, columns, chunk_rows, tgid_map, salvage, strict)
    for w in stream.warnings:
        if w not in stream.meta.notes:
            stream.meta.notes.append(w)
    stream.chunks = _validated(stream.path, stream.chunks, stream.meta)
    return stream


def load(path: str | os.PathLike, tgid_map: Optional[dict[int, int]] = None,
         salvage: bool = False, validate: bool = True, strict: bool = False) -> Trace:
    """Read a whole trace of any supported format into one event table, validated
    (``validate=False``: the values as stored, for tools that check the file format).

    A recording whose writer was killed leaves ``NAME.part`` instead of ``NAME``; asking
    for ``NAME`` then recovers what ``NAME.part`` holds."""
    stream = _open(path, None, CHUNK_ROWS, tgid_map, salvage, strict)
    label = stream.path
    with reading(label):
        if stream.table is not None:
            events = stream.table
        else:
            events = concat([chunk_frame(c) for c in stream.chunks])
    if validate:
        validator = Validator(label)
        events = validator.check_frame(events)
        validator.annotate(stream.meta)
    warnings = stream.warnings
    if stream.format == "text":
        warnings = list(stream.meta.notes)       # a streaming reader's, known at its end
    trace = Trace(events, stream.meta, stream.recovery, warnings)
    trace.skipped_lines = stream.skipped()      # type: ignore[attr-defined]
    return trace


def _validated(path: str, chunks: Iterator[Chunk], meta: TraceMeta) -> Iterator[Chunk]:
    """Every chunk checked; reader errors met while iterating are one line too."""
    validator = Validator(path)
    it = iter(chunks)
    while True:
        with reading(path):
            chunk = next(it, None)
        if chunk is None:
            break
        cols = validator.check_cols(chunk.cols)
        yield chunk if cols is chunk.cols else Chunk(cols, chunk.comm)
    validator.annotate(meta)


def _open(path, columns, chunk_rows, tgid_map, salvage=False, strict=False) -> EventStream:
    if str(path) in STDIN_NAMES:
        path = spool_stdin()
    real, fmt = locate(path)
    with reading(path):
        stream = READERS[fmt](real, columns=tuple(columns or NUMERIC_COLUMNS),
                              chunk_rows=max(1, int(chunk_rows)), tgid_map=tgid_map,
                              salvage=salvage, **({"strict": strict} if fmt == "text" else {}))
    return stream


# ----------------------------------------------------------------------------- formats

def locate(path: str | os.PathLike) -> tuple[Path, str]:
    """The file to read for ``path`` (``NAME.part`` of an unfinished recording when only
    that exists) and its format, from its first bytes."""
    p = Path(path)
    if not p.exists() and Path(str(p) + PART_SUFFIX).exists():
        p = Path(str(p) + PART_SUFFIX)
    special = special_file(p)       # by type, before opening: a FIFO would block
    if special:
        raise TraceFileError(path, f"is a {special}: kvmtrace reads a stream only from "
                                   f"standard input (pass - and redirect it: - < {path})")
    try:
        if p.is_dir():
            raise TraceFileError(path, "is a directory, not a trace file")
        head = _head(p)             # tracefs files say size 0 and still hold text
        if not head:
            raise TraceFileError(path, "empty file")
    except FileNotFoundError:
        raise TraceFileError(path, "no such file") from None
    except PermissionError:
        raise TraceFileError(path, "permission denied") from None
    except OSError as exc:
        raise TraceFileError(path, f"cannot read: {exc.strerror or exc}") from None
    return p, sniff_native(head) or "text"


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(GZIP_MAGIC):
        # A decompressor object, unlike gzip.open, tolerates a stream cut off by a crash.
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
        except zlib.error:
            return b""
    return head


def parquet_stream(path: Path, *, columns: Sequence[str], chunk_rows: int,
                   tgid_map=None, salvage: bool = False) -> EventStream:
    """kvmtrace Parquet, row group by row group (memory does not grow with the trace)."""
    meta, chunks = read_parquet(path, columns, chunk_rows, salvage)
    return EventStream(str(path), "parquet", meta, chunks)


def ipc_stream(path: Path, *, columns: Sequence[str], chunk_rows: int,
               tgid_map=None, salvage: bool = False) -> EventStream:
    """An unfinished recording: its lost counts and recovery note need the whole file."""
    return whole_file_stream(path, "ipc", read_ipc(path), columns, chunk_rows)


def jsonl_stream(path: Path, *, columns: Sequence[str], chunk_rows: int,
                 tgid_map=None, salvage: bool = False) -> EventStream:
    """kvmtrace JSON Lines (small fixtures): the final metadata is in the last line."""
    return whole_file_stream(path, "jsonl", read_jsonl(path, salvage), columns, chunk_rows)


def text_stream(path: Path, *, columns: Sequence[str], chunk_rows: int,
                tgid_map: Optional[dict[int, int]] = None, salvage: bool = False,
                strict: bool = False) -> EventStream:
    """The text of ftrace, trace-cmd report and perf script (plain or gzip/xz/bz2/zstd),
    decoded block by block (``sources.text.text.TextReader``): one block and one chunk in
    memory, whatever the size of the trace.  The reader's notes, skipped lines and doubts
    are complete once the chunks are exhausted."""
    from kvmtrace.sources.text.text import TextReader
    reader = TextReader(path, tgid_map=tgid_map, strict=strict)
    meta = reader.open()

    def chunks() -> Iterator[Chunk]:
        for cols, comm in reader.chunks():
            yield Chunk({c: cols[c] for c in columns if c in cols}, comm)
    return EventStream(str(path), "text", meta, chunks(), doubts=reader.doubts,
                       skipped=lambda: reader.skipped_lines)


READERS: dict[str, Reader] = {"parquet": parquet_stream, "ipc": ipc_stream,
                              "jsonl": jsonl_stream, "text": text_stream}


def whole_file_stream(path: Path, fmt: str, trace: Trace, columns: Sequence[str],
                      chunk_rows: int) -> EventStream:
    """An EventStream over a trace read whole: its table in slices of chunk_rows."""
    return EventStream(str(path), fmt, trace.meta, frame_chunks(trace.events, columns, chunk_rows),
                       list(trace.warnings), trace.recovery, trace.events)


def frame_chunks(events: pd.DataFrame, columns: Sequence[str],
                 chunk_rows: int) -> Iterator[Chunk]:
    """Chunks of an event table (at least one, possibly empty)."""
    whole = Chunk.from_frame(events, tuple(columns))
    n = len(events)
    if n <= chunk_rows:
        yield whole
        return
    comm = whole.comm
    for start in range(0, n, chunk_rows):
        part = slice(start, start + chunk_rows)
        yield Chunk({k: v[part] for k, v in whole.cols.items()},
                    comm.take(part) if comm is not None else None)


def chunk_frame(chunk: Chunk) -> pd.DataFrame:
    """A chunk as an event table with every schema column (missing ones filled), checked."""
    n = len(chunk)
    out = {}
    for col in COLUMNS:
        if col.name == "comm":
            out["comm"] = chunk.comm.to_array() if chunk.comm is not None else np.full(n, "", dtype=object)
        elif col.name in chunk.cols:
            out[col.name] = chunk.cols[col.name]
    return conform(pd.DataFrame(out), fill_missing=True)
