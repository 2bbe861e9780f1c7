"""kvmtrace's own trace files: Parquet for archives, JSON Lines for small fixtures.

Crash safety.  The recorder writes through ``TraceWriter`` in chunks:
- Parquet output is first written as an Arrow IPC *stream* to ``OUT.part``; every chunk is a
  self-delimiting record batch, flushed as it is written.  ``close()`` turns it into
  ``OUT`` (a Parquet file) with an atomic rename.  If the writer is killed, ``OUT.part``
  remains and reading ``OUT`` recovers every complete batch from it
  (``kvmtrace.sources.stream``).
- JSON Lines output gets one header line (metadata), one line per event, and at close a
  trailer line with the final metadata.  Gzip output is sync-flushed after every chunk,
  so a killed writer leaves every complete chunk decodable.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from kvmtrace.sources.frame import concat, conform, empty_frame, from_rows
from kvmtrace.schema import (COLUMNS, COLUMN_BY_NAME, KIND_BY_NAME, KIND_NAMES, SCHEMA_VERSION, Kind,
                             SchemaError, TraceMeta, columns_added_after)

META_KEY = b"kvmtrace"
PARQUET_MAGIC = b"PAR1"
IPC_STREAM_MAGIC = b"\xff\xff\xff\xff"
GZIP_MAGIC = b"\x1f\x8b"
JSONL_HEADER = "kvmtrace"
JSONL_TRAILER = "kvmtrace_end"
PART_SUFFIX = ".part"


class TraceFileError(Exception):
    """A trace file cannot be read or written; the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class Recovery:
    """What a reader salvaged from a file its writer did not finish."""

    chunks: int = 0
    events: int = 0
    discarded_bytes: int = 0
    problem: str = ""

    def describe(self) -> str:
        return (f"recovered {self.events} events in {self.chunks} complete chunks; "
                f"{self.discarded_bytes} trailing bytes discarded ({self.problem})")


@dataclass
class Trace:
    events: pd.DataFrame
    meta: TraceMeta
    recovery: Recovery | None = None
    warnings: list[str] = field(default_factory=list)


ARROW_SCHEMA = pa.schema([
    pa.field(c.name, pa.string() if c.dtype == "str" else pa.from_numpy_dtype(np.dtype(c.dtype)),
             nullable=False)
    for c in COLUMNS
])


def native_format(path: str | os.PathLike) -> str:
    """Output format chosen from a file name: 'parquet', 'jsonl' or 'jsonl.gz'."""
    name = str(path)
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl") or name.endswith(".json"):
        return "jsonl"
    raise TraceFileError(path, "unknown output format: name it .parquet, .jsonl or .jsonl.gz")


def use_system_memory_pool() -> None:
    """Make Arrow allocate with malloc instead of its bundled mimalloc.

    Measured on the replay bench: a process's first pass over a 10 M-event trace took
    1.37 s with mimalloc (fresh segments fault in page by page) and 1.01 s with the
    system allocator, which is as fast as mimalloc once warm.  The CLI calls this at
    start-up; it is process-wide, so library users decide for themselves.
    """
    pa.set_memory_pool(pa.system_memory_pool())


# ----------------------------------------------------------------------------- writing

def _stamped(meta: TraceMeta) -> dict:
    """The metadata as written: a file always holds every column of this schema version."""
    return {**meta.to_dict(), "schema_version": SCHEMA_VERSION}


def _with_meta(schema: pa.Schema, meta: TraceMeta) -> pa.Schema:
    return schema.with_metadata({META_KEY: json.dumps(_stamped(meta), sort_keys=True).encode()})


def _to_batch(df: pd.DataFrame) -> pa.RecordBatch:
    return pa.RecordBatch.from_pandas(conform(df), schema=ARROW_SCHEMA, preserve_index=False)


def _event_to_json(row: dict) -> str:
    out = {}
    for col in COLUMNS:
        value = row[col.name]
        if col.name == "kind":
            out["kind"] = KIND_NAMES[int(value)]
        elif col.name in ("ts",) or value != col.missing:
            out[col.name] = value if col.dtype == "str" else int(value)
    return json.dumps(out, separators=(",", ":"))


class TraceWriter:
    """Write a trace in chunks so that a killed writer leaves a recoverable file.

    Use as a context manager; ``write(df)`` per chunk, ``close(meta)`` to finish.
    """

    def __init__(self, path: str | os.PathLike, meta: TraceMeta, fmt: str | None = None):
        self.path = Path(path)
        self.fmt = fmt or native_format(path)
        self.meta = meta
        self.events = 0
        self.closed = False
        self._ipc: ipc.RecordBatchStreamWriter | None = None
        self._text: IO[str] | None = None
        self._raw: IO[bytes] | None = None
        try:
            if self.fmt == "parquet":
                self.part = Path(str(self.path) + PART_SUFFIX)
                self._raw = open(self.part, "wb")
                self._ipc = ipc.new_stream(self._raw, _with_meta(ARROW_SCHEMA, meta))
                # Arrow writes the schema (and so the metadata) only with the first batch:
                # an empty one puts it on disk now, so a recorder killed before its first
                # chunk still leaves a file that says what it was.
                self._ipc.write_batch(pa.RecordBatch.from_pylist([], schema=ARROW_SCHEMA))
                self._raw.flush()
            else:
                self.part = self.path
                self._raw = open(self.path, "wb")
                stream: IO[bytes] = self._raw
                if self.fmt == "jsonl.gz":
                    stream = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
                self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
                self._text.write(json.dumps({JSONL_HEADER: _stamped(meta)}, sort_keys=True) + "\n")
                self._flush()
        except OSError as exc:
            raise TraceFileError(path, f"cannot write: {exc.strerror or exc}") from None

    @property
    def bytes_written(self) -> int:
        try:
            return os.path.getsize(self.part if not self.closed else self.path)
        except OSError:
            return 0

    def write(self, df: pd.DataFrame) -> None:
        if not len(df):
            return
        if self._ipc is not None:
            self._ipc.write_batch(_to_batch(df))
        else:
            assert self._text is not None
            frame = conform(df)
            lines = [_event_to_json(r) for r in frame.to_dict("records")]
            self._text.write("\n".join(lines) + "\n")
        self.events += len(df)
        self._flush()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write a chunk that already is an ARROW_SCHEMA record batch (Parquet output only).

        The live recorder builds its chunks with the exact schema dtypes and uses this to
        skip conform(); anything else should call write()."""
        if self._ipc is None:
            raise ValueError("write_batch() needs Parquet output")
        if not batch.schema.equals(ARROW_SCHEMA, check_metadata=False):
            raise SchemaError("record batch does not have the kvmtrace schema")
        if batch.num_rows:
            self._ipc.write_batch(batch)
            self.events += batch.num_rows
            self._flush()

    def _flush(self) -> None:
        if self._text is not None:
            self._text.flush()
            inner = self._text.buffer
            if isinstance(inner, gzip.GzipFile):
                inner.flush(zlib.Z_SYNC_FLUSH)
        assert self._raw is not None
        self._raw.flush()

    def close(self, meta: TraceMeta | None = None) -> None:
        """Finish the file, recording the final metadata (e.g. lost-event counts)."""
        if self.closed:
            return
        self.meta = meta or self.meta
        if self._ipc is not None:
            self._ipc.close()
            assert self._raw is not None
            self._raw.close()
            self._finish_parquet()
        else:
            assert self._text is not None
            self._text.write(json.dumps({JSONL_TRAILER: _stamped(self.meta)}, sort_keys=True) + "\n")
            self._text.close()
        self.closed = True

    def _finish_parquet(self) -> None:
        tmp = Path(str(self.path) + ".tmp")
        schema = _with_meta(ARROW_SCHEMA, self.meta)
        with open(self.part, "rb") as src, pq.ParquetWriter(tmp, schema, compression="zstd") as out:
            reader = ipc.open_stream(src)
            for batch in reader:
                if batch.num_rows:
                    out.write_batch(batch, row_group_size=1 << 20)
        os.replace(tmp, self.path)
        os.unlink(self.part)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_trace(path: str | os.PathLike, events: pd.DataFrame, meta: TraceMeta,
                fmt: str | None = None, chunk_rows: int = 1 << 20) -> None:
    with TraceWriter(path, meta, fmt) as writer:
        for start in range(0, len(events), chunk_rows):
            writer.write(events.iloc[start:start + chunk_rows])


# ----------------------------------------------------------------------------- reading

def sniff_native(head: bytes) -> str | None:
    """'parquet', 'ipc' (an unfinished recording), 'jsonl' or None, from a file's first bytes."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(IPC_STREAM_MAGIC):
        return "ipc"
    if head.lstrip().startswith(b'{"' + JSONL_HEADER.encode() + b'"'):
        return "jsonl"
    return None


def meta_from_schema(path, schema: pa.Schema) -> TraceMeta:
    """The TraceMeta a Parquet file or Arrow stream carries in its schema metadata."""
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceFileError(path, "Parquet file without kvmtrace metadata (not a kvmtrace trace)")
    try:
        return TraceMeta.from_dict(json.loads(raw))
    except (ValueError, TypeError, SchemaError) as exc:
        raise TraceFileError(path, f"bad metadata: {exc}") from None


def check_columns(path, schema: pa.Schema, meta: TraceMeta) -> list[str]:
    """The schema columns the file has; a column its version should hold must be there."""
    may_lack = columns_added_after(meta.schema_version)
    for col in COLUMNS:
        if col.name not in schema.names and col.name not in may_lack:
            raise TraceFileError(path, f"missing column {col.name!r}")
    return [c.name for c in COLUMNS if c.name in schema.names]


def _batch_frame(path, batch: pa.RecordBatch) -> pd.DataFrame:
    try:
        return conform(batch.to_pandas(), fill_missing=True)   # columns were checked
    except SchemaError as exc:
        raise TraceFileError(path, str(exc)) from None


def read_ipc(path) -> Trace:
    """Every complete chunk of an unfinished recording (``OUT.part``, an Arrow stream)."""
    recovery = Recovery()
    frames = []
    size = os.path.getsize(path)
    with open(path, "rb") as src:
        try:
            reader = ipc.open_stream(src)
        except pa.ArrowException as exc:
            raise TraceFileError(path, f"unfinished recording without a readable header ({exc})") from None
        meta = meta_from_schema(path, reader.schema)
        check_columns(path, reader.schema, meta)
        good_end = src.tell()
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                recovery.problem = f"truncated chunk: {exc}"
                break
            if batch.num_rows:      # the empty batch that carries the header is no chunk
                frames.append(_batch_frame(path, batch))
                recovery.chunks += 1
            good_end = src.tell()
    events = concat(frames)
    recovery.events = len(events)
    recovery.discarded_bytes = max(0, size - good_end)
    if not recovery.problem:
        recovery.problem = "the writer did not finish the file"
    _recount_lost(meta, events)
    meta.notes.append("recovered from an unfinished recording: " + recovery.describe())
    return Trace(events, meta, recovery)


def _recount_lost(meta: TraceMeta, events: pd.DataFrame) -> None:
    """Rebuild lost-event counts from the LOST markers (an unfinished file has no trailer)."""
    lost = events[events["kind"] == Kind.LOST]
    if len(lost):
        # A marker of unknown size (value -1) stands for at least one lost event.
        counts = lost["value"].clip(lower=1)
        meta.lost_events = int(counts.sum())
        meta.lost_per_cpu = {str(k): int(v) for k, v in counts.groupby(lost["cpu"]).sum().items()}


def _json_event(line_no: int, obj: dict) -> dict:
    """One JSON Lines event object -> a row dict with a numeric kind."""
    if "kind" not in obj or "ts" not in obj:
        raise SchemaError(f"line {line_no}: event without 'kind' or 'ts'")
    row = {}
    for key, value in obj.items():
        col = COLUMN_BY_NAME.get(key)
        if col is None:
            raise SchemaError(f"line {line_no}: unknown field {key!r}")
        if key == "kind":
            kind = KIND_BY_NAME.get(value)
            if kind is None:
                raise SchemaError(f"line {line_no}: unknown event kind {value!r}")
            value = int(kind)
        elif col.dtype == "str":
            if not isinstance(value, str):
                raise SchemaError(f"line {line_no}: field {key!r} must be a string")
        elif not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"line {line_no}: field {key!r} must be an integer")
        row[key] = value
    return row


def read_jsonl(path) -> Trace:
    """A kvmtrace JSON Lines file, gzipped or not; an unfinished one keeps its whole lines."""
    with open(path, "rb") as raw:
        head = raw.read(2)
        raw.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw
        return _JsonlReader(path).read(stream)


def _json_object(line_no: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        raise SchemaError(f"line {line_no}: not valid JSON") from None
    if not isinstance(obj, dict):
        raise SchemaError(f"line {line_no}: not a JSON object")
    return obj


class _JsonlReader:
    """One pass over a JSON Lines trace: the header line, event lines, the trailer line."""

    def __init__(self, path) -> None:
        self.path = path
        self.meta: TraceMeta | None = None
        self.final: TraceMeta | None = None      # the trailer's metadata
        self.rows: list[dict] = []
        self.warnings: list[str] = []
        self.recovery: Recovery | None = None
        self.line_no = 0
        self.pending: str | None = None          # a last line without its newline

    def read(self, raw: IO[bytes]) -> Trace:
        try:
            self._lines(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.recovery = Recovery(problem=f"compressed stream cut off ({exc})")
        except UnicodeDecodeError:
            raise TraceFileError(self.path, f"line {self.line_no + 1}: not UTF-8 text") from None
        except SchemaError as exc:
            raise TraceFileError(self.path, str(exc)) from None
        if self.meta is None:
            raise TraceFileError(self.path, "empty kvmtrace JSON Lines file (no header)")
        return self._trace(self.meta)

    def _lines(self, raw: IO[bytes]) -> None:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")
        for line in text:
            self.line_no += 1
            if self.pending is not None:   # the previous line was cut; only the last may be
                raise SchemaError(f"line {self.line_no - 1}: not a JSON object")
            if not line.endswith("\n"):
                self.pending = line
            elif line.strip():
                self._record(_json_object(self.line_no, line))

    def _record(self, obj: dict) -> None:
        if JSONL_HEADER in obj and self.line_no == 1:
            self.meta = TraceMeta.from_dict(obj[JSONL_HEADER])
        elif self.meta is None:
            raise SchemaError("first line is not a kvmtrace header")
        elif JSONL_TRAILER in obj:
            self.final = TraceMeta.from_dict(obj[JSONL_TRAILER])
        else:
            self.rows.append(_json_event(self.line_no, obj))

    def _trace(self, meta: TraceMeta) -> Trace:
        recovery = self.recovery
        if self.pending is not None:
            self.warnings.append(f"line {self.line_no}: partial last line skipped "
                                 "(the writer was cut off)")
            recovery = recovery or Recovery(problem="partial last line")
            recovery.discarded_bytes = len(self.pending.encode())
        if self.final is None and recovery is None:
            recovery = Recovery(problem="no trailer: the writer did not finish the file")
        try:
            events = conform(from_rows(self.rows)) if self.rows else empty_frame()
        except (SchemaError, OverflowError) as exc:
            raise TraceFileError(self.path, f"bad event values: {exc}") from None
        if self.final is not None:
            meta = self.final
        else:
            _recount_lost(meta, events)
        if recovery is not None:
            recovery.events = len(events)
            recovery.chunks = len(events)
            meta.notes.append("recovered from an unfinished file: " + recovery.describe())
        return Trace(events, meta, recovery, self.warnings)
