"""kvmtrace's own trace files, the part that needs neither pyarrow nor pandas: file names and
magic numbers, the file error, the output lock and how a recorder gathers rows into chunks.

native.py (reading and writing, with pyarrow) re-exports all of it; the live recorder
imports it from here so that ``check`` and ``record`` to no file never import pyarrow.
May import: the contract.
"""
from __future__ import annotations

import os
from pathlib import Path

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

    def __reduce__(self):
        # Pickled as (path, problem): a fleet worker process raises it to its parent.
        return (type(self), (self.path, self.problem))


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


LOCK_SUFFIX = ".lock"
# How a recorder gathers rows into chunks of the .part.  Each Arrow IPC record batch costs
# about 1 KB of metadata whatever its size, so chunks of 100 rows take 4x the final
# Parquet, 1000 rows 1.5x, 4096 rows 1.25x (bench/part_size_bench.py).  A chunk is written
# at PART_BATCH_ROWS rows, or after PART_BATCH_AGE_S with at least PART_MIN_ROWS rows, or
# after PART_MAX_AGE_S whatever it holds: a killed recorder loses about the last second,
# at most PART_MAX_AGE_S when fewer than PART_MIN_ROWS events a second come in.
PART_BATCH_ROWS = 4096
PART_MIN_ROWS = 1000
PART_BATCH_AGE_S = 1.0
PART_MAX_AGE_S = 10.0
ROW_GROUP_ROWS = 1 << 20     # rows per Parquet row group of a finished file (the last one
                             # holds the rest), never one per drain batch


class OutputLock:
    """An exclusive lock on an output trace: ``OUT.lock`` holds the writer's PID and is
    flock()ed while it writes, so a second recorder (or convert) refuses at start instead
    of truncating the first one's ``.part``.  The kernel drops the lock when the holder
    dies, so a stale file after ``kill -9`` does not block the next writer."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, output: str | os.PathLike) -> "OutputLock":
        import fcntl
        lock_path = Path(str(output) + LOCK_SUFFIX)
        for _ in range(10):        # the holder may unlink the file between open and flock
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise TraceFileError(output, f"cannot write: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise TraceFileError(output, f"another kvmtrace (PID {holder}) is writing it "
                                             f"(it holds {lock_path})") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return cls(lock_path, fd)
            os.close(fd)
        raise TraceFileError(output, f"cannot lock {lock_path}: it keeps being replaced")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
