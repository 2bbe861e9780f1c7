"""The recording's file writer in a thread of its own, so draining never waits on encoding.

Draining the BPF ring buffer is numpy work between epoll waits; turning a chunk into an
Arrow batch and compressing it into the crash-safe part file is not, and when both ran in
the drain loop a one-core producer overflowed the ring while Parquet was written.  Here
the drain loop only queues validated column chunks; joining them, building the Arrow
batch and compressing happen here.  The queue is bounded: when the disk cannot
keep up, ``put`` blocks, the ring buffer fills, and the kernel counts every record it
drops (the LOST markers say so) — memory never grows without bound and nothing is lost
silently.  May import: the sources layer.
"""
from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Optional

from kvmtrace.sources.live.records import Columns

if TYPE_CHECKING:          # native.py (pyarrow) is imported by the writer thread, to write
    from kvmtrace.sources.native import TraceWriter

QUEUED_CHUNKS = 8          # at most this many chunks (each <= a few MB) wait for the disk


class BackgroundWriter:
    """Feeds a TraceWriter from a bounded queue in a daemon thread."""

    def __init__(self, writer: TraceWriter, max_chunks: int = QUEUED_CHUNKS) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(max_chunks)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="kvmtrace-writer", daemon=True)
        self._thread.start()

    def put(self, chunks: list[Columns]) -> None:
        """Queue chunks to be written as one (blocks while the queue is full); re-raises
        a write error."""
        self._raise()
        self._queue.put(chunks)

    def flush(self) -> None:
        """Wait until every queued chunk is written; re-raises a write error."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Write what is queued, stop the thread, re-raise a write error.  Idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            chunks = self._queue.get()
            try:
                if chunks is None:
                    return
                if self._error is None:   # after a failed write the rest is dropped
                    self._write(chunks)
            except BaseException as exc:  # OSError (ENOSPC ...), reported by put()/flush()
                self._error = exc
            finally:
                self._queue.task_done()

    def _write(self, chunks: list[Columns]) -> None:
        from kvmtrace.sources.native import ARROW_SCHEMA
        chunk = Columns.concat(chunks)
        if self.writer.fmt == "parquet":
            # Columns have the schema's dtypes: straight to Arrow, no DataFrame, no conform().
            self.writer.write_batch(chunk.batch(ARROW_SCHEMA))
        else:
            self.writer.write(chunk.frame())
