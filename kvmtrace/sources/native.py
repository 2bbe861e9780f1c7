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

import contextlib
import errno
import gzip
import io
import json
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from kvmtrace.sources.frame import concat, conform, empty_frame, from_rows
from kvmtrace.sources.validate import Validator
from kvmtrace.schema import (COLUMNS, COLUMN_BY_NAME, KIND_BY_NAME, KIND_NAMES, SALVAGED_NOTE,
                             SCHEMA_VERSION, Kind, SchemaError, TraceMeta, columns_added_after)
# The file names, magic numbers, errors and the output lock need no Arrow: nativefile.py
# holds them for the recorder, which imports pyarrow only when it writes Parquet.
from kvmtrace.sources.nativefile import (GZIP_MAGIC, IPC_STREAM_MAGIC, JSONL_HEADER,  # noqa: F401
                                         JSONL_TRAILER, LOCK_SUFFIX, META_KEY, PARQUET_MAGIC,
                                         PART_BATCH_AGE_S, PART_BATCH_ROWS, PART_MAX_AGE_S,
                                         PART_MIN_ROWS, PART_SUFFIX, ROW_GROUP_ROWS, OutputLock,
                                         TraceFileError, native_format)

# Every exception the reading libraries (pyarrow, zlib/gzip, json, the codecs) raise on
# damaged input.  ``reading()`` turns each into one TraceFileError line naming the file and
# where; nothing else in the readers catches them piecemeal.
READ_ERRORS: tuple[type[BaseException], ...] = (
    pa.ArrowException, OSError, EOFError, zlib.error, UnicodeDecodeError, RecursionError,
    MemoryError, OverflowError, ValueError, TypeError, AttributeError, KeyError, IndexError)


def describe_read_error(exc: BaseException) -> str:
    """What a reading library's exception means, in a few words (one line)."""
    if isinstance(exc, TraceFileError):
        return exc.problem
    if isinstance(exc, SchemaError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large to decode"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return f"corrupt compressed data ({exc})"
    if isinstance(exc, EOFError):
        return f"compressed stream cut off ({exc})"
    text = str(exc).strip().splitlines()
    detail = text[0][:200] if text else ""
    if isinstance(exc, (pa.ArrowException, OSError)):
        return f"corrupt or unreadable data ({detail or type(exc).__name__})"
    return f"malformed ({type(exc).__name__}: {detail})" if detail else f"malformed ({type(exc).__name__})"


def read_error(path, exc: BaseException, where: str = "") -> TraceFileError:
    """The one conversion of a reader exception into a one-line error."""
    if isinstance(exc, TraceFileError) and not where:
        return exc
    problem = describe_read_error(exc)
    return TraceFileError(path, f"{where}: {problem}" if where else problem)


@contextlib.contextmanager
def reading(path, where: Callable[[], str] | str = ""):
    """Run a read; any library exception becomes TraceFileError(path, "where: problem")."""
    try:
        yield
    except TraceFileError:
        raise
    except READ_ERRORS as exc:
        raise read_error(path, exc, where() if callable(where) else where) from None


STDIN_NAMES = ("-", "/dev/stdin")
STDIN_SPOOL_LIMIT = 1 << 34          # 16 GiB: a stream larger than this is refused


def spool_stdin() -> str:
    """Standard input copied to a temporary file (the readers sniff, seek and stream files):
    a pipe, a FIFO or a terminal given as ``-``.  Removed when the process exits."""
    import atexit
    import sys
    import tempfile
    src = sys.stdin.buffer
    fd, name = tempfile.mkstemp(prefix="kvmtrace-stdin-", suffix=".trace")
    atexit.register(lambda: os.path.exists(name) and os.unlink(name))
    copied = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            copied += len(block)
            if copied > STDIN_SPOOL_LIMIT:
                raise TraceFileError("-", f"standard input larger than {STDIN_SPOOL_LIMIT >> 30} GiB")
            out.write(block)
    if not copied:
        raise TraceFileError("-", "standard input is empty")
    return name


def special_file(path: str | os.PathLike) -> str:
    """'fifo', 'character device', 'socket', 'block device' or '' (regular file, directory,
    absent), from the file's type, without opening it: opening a FIFO blocks."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if (stat.S_ISREG(mode) and os.stat(path).st_size == 0
            and os.path.basename(str(path)).startswith("trace_pipe")):
        # tracefs's trace_pipe(_raw) is a regular file that never ends: a read waits for
        # the next event (kernel/trace/trace.c, tracing_read_pipe).
        return "tracefs stream (it never ends)"
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return ""


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


def _fsync(fd: int) -> None:
    """fsync(2); an output that cannot be synced (a pipe, a character device: EINVAL) is
    not an error.  A closed file is only in the page cache: ``kvmtrace`` ends with
    os._exit (cli.console), and a crash right after it must not lose a finished trace."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise


def _fsync_parent(path: Path) -> None:
    """Sync the directory holding path, so that its new name is on disk too (regular
    files only: a FIFO or /dev/stdout has no entry to make durable)."""
    try:
        if not path.is_file():
            return
        fd = os.open(path.resolve().parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class TraceWriter:
    """Write a trace in chunks so that a killed writer leaves a recoverable file.

    Use as a context manager; ``write(df)`` per chunk (on disk when it returns),
    ``close(meta)`` to finish.  Parquet output goes through ``OUT.part``, a zstd-compressed
    Arrow IPC stream (callers write chunks of PART_BATCH_ROWS rows or so: smaller ones
    compress worse), then ``close()`` rewrites it as ``OUT`` in row groups of ROW_GROUP_ROWS.
    Errors leave no ``.tmp`` and no empty ``.part``; a ``.part`` holding chunks stays
    (every command reading ``OUT`` recovers it) unless ``discard()`` is called.
    """

    def __init__(self, path: str | os.PathLike, meta: TraceMeta, fmt: str | None = None,
                 lock: OutputLock | None = None):
        self.path = Path(path)
        self.fmt = fmt or native_format(path)
        self.meta = meta
        self.events = 0
        self.closed = False
        self._ipc: ipc.RecordBatchStreamWriter | None = None
        self._text: IO[str] | None = None
        self._raw: IO[bytes] | None = None
        self._lock = lock or OutputLock.acquire(self.path)
        self.part = Path(str(self.path) + PART_SUFFIX) if self.fmt == "parquet" else self.path
        try:
            if self.fmt == "parquet":
                self._raw = open(self.part, "wb")
                self._ipc = ipc.new_stream(self._raw, _with_meta(ARROW_SCHEMA, meta),
                                           options=ipc.IpcWriteOptions(compression="zstd"))
                # Arrow writes the schema (and so the metadata) only with the first batch:
                # an empty one puts it on disk now, so a recorder killed before its first
                # chunk still leaves a file that says what it was.
                self._ipc.write_batch(pa.RecordBatch.from_pylist([], schema=ARROW_SCHEMA))
                self._raw.flush()
            else:
                self._raw = open(self.path, "wb")
                stream: IO[bytes] = self._raw
                if self.fmt == "jsonl.gz":
                    stream = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
                self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
                self._text.write(json.dumps({JSONL_HEADER: _stamped(meta)}, sort_keys=True) + "\n")
                self._flush()
        except (OSError, pa.ArrowException) as exc:
            self.discard()            # nothing worth keeping: no header on disk
            raise TraceFileError(path, f"cannot write: {getattr(exc, 'strerror', None) or exc}") from None

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
        try:
            if self._ipc is not None:
                self._ipc.close()
                assert self._raw is not None
                self._raw.close()
                self._finish_parquet()
            else:
                assert self._text is not None and self._raw is not None
                self._text.write(json.dumps({JSONL_TRAILER: _stamped(self.meta)}, sort_keys=True) + "\n")
                self._text.flush()
                if isinstance(self._text.buffer, gzip.GzipFile):
                    # Its close writes the CRC trailer into _raw but never flushes or closes
                    # a fileobj it was handed: those 8 bytes waited for the garbage collector.
                    self._text.buffer.close()
                self._raw.flush()
                _fsync(self._raw.fileno())
                self._text.close()    # closes _raw too (plain .jsonl)
                self._raw.close()
                _fsync_parent(self.path)
        except BaseException:
            self.abort()              # no .tmp left; a .part with chunks stays to recover
            raise
        self.closed = True
        self._lock.release()

    def abort(self) -> None:
        """Stop after a failure, keeping what is on disk if it holds any chunk (a recording
        to recover); an empty part file goes."""
        for stream in (self._text, self._raw):
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError, pa.ArrowException):
                pass
        _unlink_quietly(Path(str(self.path) + ".tmp"))
        if self.events == 0 or self.bytes_written == 0:
            _unlink_quietly(self.part)
        self.closed = True
        self._lock.release()

    def discard(self) -> None:
        """Stop and remove everything this writer created (convert: the source remains)."""
        self.events = 0
        self.abort()
        if self.fmt != "parquet":
            _unlink_quietly(self.path)

    def _finish_parquet(self) -> None:
        tmp = Path(str(self.path) + ".tmp")
        schema = _with_meta(ARROW_SCHEMA, self.meta)
        try:
            with open(self.part, "rb") as src, pq.ParquetWriter(tmp, schema, compression="zstd") as out:
                pending: list[pa.RecordBatch] = []
                rows = 0
                for batch in ipc.open_stream(src):
                    if batch.num_rows:
                        pending.append(batch)
                        rows += batch.num_rows
                    if rows >= ROW_GROUP_ROWS:
                        out.write_table(pa.Table.from_batches(pending, schema=ARROW_SCHEMA),
                                        row_group_size=ROW_GROUP_ROWS)
                        pending, rows = [], 0
                if pending:
                    out.write_table(pa.Table.from_batches(pending, schema=ARROW_SCHEMA),
                                    row_group_size=ROW_GROUP_ROWS)
            with open(tmp, "rb") as done:
                _fsync(done.fileno())  # the data on disk before the name points at it
            os.replace(tmp, self.path)
        except BaseException:
            _unlink_quietly(tmp)      # the .part stays: every reader of OUT recovers it
            raise
        os.unlink(self.part)
        _fsync_parent(self.path)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif not self.closed:
            self.abort()


def write_trace(path: str | os.PathLike, events: pd.DataFrame, meta: TraceMeta,
                fmt: str | None = None, chunk_rows: int = 1 << 20,
                lock: OutputLock | None = None) -> None:
    """Write a whole trace (convert).  On any failure nothing of OUT is left behind."""
    writer = TraceWriter(path, meta, fmt, lock=lock)
    try:
        for start in range(0, len(events), chunk_rows):
            writer.write(events.iloc[start:start + chunk_rows])
        writer.close()
    except BaseException as exc:
        writer.discard()
        if isinstance(exc, OSError):
            raise TraceFileError(path, f"cannot write: {exc.strerror or exc}") from None
        raise


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


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether path starts like a Parquet file (unreadable files: False; the reader says
    why).  Special files are never opened here (a FIFO would block)."""
    if special_file(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    except OSError:
        return False


def meta_from_schema(path, schema: pa.Schema) -> TraceMeta:
    """The TraceMeta a Parquet file or Arrow stream carries in its schema metadata."""
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceFileError(path, "Parquet file without kvmtrace metadata (not a kvmtrace trace)")
    with reading(path, "bad metadata"):
        return TraceMeta.from_dict(json.loads(raw))


def check_columns(path, schema: pa.Schema, meta: TraceMeta) -> list[str]:
    """The schema columns the file has; a column its version should hold must be there."""
    may_lack = columns_added_after(meta.schema_version)
    for col in COLUMNS:
        if col.name not in schema.names and col.name not in may_lack:
            raise TraceFileError(path, f"missing column {col.name!r}")
    return [c.name for c in COLUMNS if c.name in schema.names]


def note_salvaged(meta: TraceMeta, problem: str) -> None:
    """--salvage read what precedes the damage: say so; the verdict is then at best
    inconclusive (analysis/report.py)."""
    meta.notes.append(f"{SALVAGED_NOTE}: {problem}; what follows it is missing")


def _batch_frame(path, batch: pa.RecordBatch) -> pd.DataFrame:
    try:
        return conform(batch.to_pandas(), fill_missing=True)   # columns were checked
    except SchemaError as exc:
        raise TraceFileError(path, str(exc)) from None


def read_ipc(path, salvage: bool = False) -> Trace:
    """Every complete chunk of an unfinished recording (``OUT.part``, an Arrow stream)."""
    recovery = Recovery()
    frames = []
    size = os.path.getsize(path)
    with open(path, "rb") as src:
        with reading(path, "unfinished recording without a readable header"):
            reader = ipc.open_stream(src)
        meta = meta_from_schema(path, reader.schema)
        check_columns(path, reader.schema, meta)
        good_end = src.tell()
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except READ_ERRORS as exc:
                # A killed writer cuts its last chunk: that is the end of the recording.
                recovery.problem = f"truncated chunk: {describe_read_error(exc)}"
                break
            if batch.num_rows:      # the empty batch that carries the header is no chunk
                with reading(path, f"chunk {recovery.chunks + 1} at byte {good_end}"):
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


def _fits(value: int, dtype: str) -> bool:
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _json_event(line_no: int, obj: dict, validator: Validator) -> dict:
    """One JSON Lines event object -> a row dict with a numeric kind.  A value that does
    not fit its column (a uint64 gfn above 2**63) makes the row an INVALID marker."""
    if "kind" not in obj or "ts" not in obj:
        raise SchemaError("event without 'kind' or 'ts'")
    row = {}
    overflow = ""
    for key, value in obj.items():
        col = COLUMN_BY_NAME.get(key)
        if col is None:
            raise SchemaError(f"unknown field {str(key)[:40]!r}")
        if key == "kind":
            kind = KIND_BY_NAME.get(value) if isinstance(value, str) else None
            if kind is None:
                raise SchemaError(f"unknown event kind {str(value)[:40]!r}")
            value = int(kind)
        elif col.dtype == "str":
            if not isinstance(value, str):
                raise SchemaError(f"field {key!r} must be a string")
        elif not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"field {key!r} must be an integer")
        elif not _fits(value, col.dtype):
            overflow = overflow or key
            continue
        row[key] = value
    if overflow:
        validator.refuse(f"{overflow} does not fit its {COLUMN_BY_NAME[overflow].dtype} column")
        marker = {"ts": row.get("ts", 0), "kind": int(Kind.INVALID), "value": 1}
        if "tgid" in row:
            marker["tgid"] = row["tgid"]
        return marker
    return row


def _jsonl_line(line: str, line_no: int, meta: TraceMeta | None, final: TraceMeta | None,
                rows: list, validator: Validator) -> tuple:
    """One line of a kvmtrace JSON Lines file: (header meta, trailer meta) after it."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise SchemaError("not valid JSON") from None
    if not isinstance(obj, dict):
        raise SchemaError("not a JSON object")
    if JSONL_HEADER in obj and line_no == 1:
        meta = TraceMeta.from_dict(obj[JSONL_HEADER])
    elif meta is None:
        raise SchemaError("the first line is not a kvmtrace header")
    elif JSONL_TRAILER in obj:
        final = TraceMeta.from_dict(obj[JSONL_TRAILER])
    else:
        rows.append(_json_event(line_no, obj, validator))
    return meta, final


def _read_jsonl(path, raw: IO[bytes], compressed: IO[bytes] | None = None,
                salvage: bool = False) -> Trace:
    """One pass over a JSON Lines trace: the header line, event lines, the trailer line."""
    meta: TraceMeta | None = None
    final: TraceMeta | None = None
    rows: list[dict] = []
    warnings: list[str] = []
    recovery: Recovery | None = None
    validator = Validator(str(path))
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")
    line_no = 0
    pending: str | None = None

    def after() -> str:
        at = f"after line {line_no}"
        if compressed is not None:
            at += f" (compressed byte {compressed.tell()})"
        return at

    try:
        with reading(path, after):          # reading / inflating the next line
            try:
                for line in text:
                    if pending is not None:   # the previous line was cut; only the last may be
                        raise TraceFileError(path, f"line {line_no}: not a JSON object")
                    line_no += 1
                    if not line.endswith("\n"):
                        pending = line
                    elif line.strip():
                        with reading(path, f"line {line_no}"):
                            meta, final = _jsonl_line(line, line_no, meta, final, rows, validator)
            except EOFError as exc:
                # The end of a gzip stream is missing (a writer killed mid-chunk): what came
                # before is sound, checked by the deflate stream up to there.
                recovery = Recovery(problem=f"compressed stream cut off ({exc})")
    except TraceFileError as exc:
        if not salvage or meta is None:
            raise
        note_salvaged(meta, exc.problem)
        pending = None
    if meta is None:
        raise TraceFileError(path, "empty kvmtrace JSON Lines file (no header)")
    if pending is not None:
        warnings.append(f"line {line_no}: partial last line skipped (the writer was cut off)")
        recovery = recovery or Recovery(problem="partial last line")
        recovery.discarded_bytes = len(pending.encode())
    if final is None and recovery is None:
        recovery = Recovery(problem="no trailer: the writer did not finish the file")
    with reading(path, "bad event values"):
        events = conform(from_rows(rows)) if rows else empty_frame()
    if final is not None:
        final.notes = meta.notes + [n for n in final.notes if n not in meta.notes]
        meta = final
    else:
        _recount_lost(meta, events)
    if recovery is not None:
        recovery.events = len(events)
        recovery.chunks = len(events)
        meta.notes.append("recovered from an unfinished file: " + recovery.describe())
    validator.annotate(meta)          # values refused while decoding (their markers stay)
    return Trace(events, meta, recovery, warnings)


def read_jsonl(path, salvage: bool = False) -> Trace:
    """A kvmtrace JSON Lines file, gzipped or not; an unfinished one keeps its whole lines.
    Bytes flipped inside a gzip member are corruption (an error naming the compressed
    offset; ``salvage`` keeps the lines before it); only a stream cut short is a recovery."""
    with open(path, "rb") as raw:
        head = raw.read(2)
        raw.seek(0)
        if head == GZIP_MAGIC:
            return _read_jsonl(path, gzip.GzipFile(fileobj=raw), raw, salvage)
        return _read_jsonl(path, raw, None, salvage)
