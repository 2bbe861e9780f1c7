"""Where the chunks of an online analysis come from: the live recorder, or a trace file.

``check`` and ``watch`` run the same code from "a chunk arrives" to "a verdict"; only the
source differs.  ``LiveSource`` wraps ``kvmtrace.sources.live.Recorder`` (BPF on the KVM
tracepoints, drained in bulk into schema chunks); ``FileSource`` replays a recorded trace
through ``kvmtrace.sources.stream.open_events`` (``--replay``, and the tests that feed
fixtures through the live path).  Both deliver ``schema.Chunk`` and follow one protocol::

    info = source.open()                       # raises LiveUnavailable (exit 4)
    source.run(on_chunk, duration, stop)       # blocks; call from a worker thread
    meta = source.close()
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Protocol, Sequence

from kvmtrace.schema import NUMERIC_COLUMNS, Chunk, TraceMeta

if TYPE_CHECKING:        # the live path needs neither the file readers nor pandas/pyarrow
    from kvmtrace.sources.live.records import Columns

OnChunk = Callable[[Chunk], None]


@dataclass
class SourceInfo:
    """What a source says once it is open: its metadata and what it attached."""

    meta: TraceMeta
    attached: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    live: bool = True
    label: str = ""

    def probes_dict(self) -> dict:
        out = {"attached": list(self.attached),
               "not_attached": [{"probe": n, "why": w} for n, w in self.skipped]}
        if self.live:
            out["notes"] = list(self.notes)     # how the program was compiled and attached
        return out


class ChunkSource(Protocol):
    # The numeric columns the consumer reads; the session sets the model's before open().
    columns: Sequence[str]

    def open(self) -> SourceInfo: ...
    def run(self, on_chunk: OnChunk, duration: Optional[float],
            stop: threading.Event) -> None: ...
    def close(self) -> Optional[TraceMeta]: ...


class LiveSource:
    """The BCC recorder, filtered in the kernel to ``tgids`` (all VMs when empty)."""

    def __init__(self, tgids: Sequence[int] = (), output: str | os.PathLike | None = None,
                 probes: str = "auto") -> None:
        self.tgids = tuple(tgids)
        self.output = output
        self.probes = probes
        self.columns = NUMERIC_COLUMNS
        self._recorder = None
        self._on_chunk: Optional[OnChunk] = None

    def open(self) -> SourceInfo:
        from kvmtrace.sources.live import Recorder
        self._recorder = Recorder(self.output, tgids=self.tgids, probes=self.probes,
                                  on_columns=self._deliver)
        report = self._recorder.attach()
        assert self._recorder.meta is not None
        return SourceInfo(meta=self._recorder.meta, attached=list(report.attached),
                          skipped=list(report.skipped), notes=list(report.notes), live=True,
                          label="live")

    def _deliver(self, columns: Columns) -> None:
        if self._on_chunk is not None:
            self._on_chunk(columns.chunk(self.columns))

    def run(self, on_chunk: OnChunk, duration: Optional[float], stop: threading.Event) -> None:
        if self._recorder is None:
            raise RuntimeError("open() first")
        self._on_chunk = on_chunk
        self._recorder.run(duration=duration, stop=stop)

    def wake(self) -> None:
        """run() sees its stop event now (Session.close calls it after setting stop)."""
        if self._recorder is not None:
            self._recorder.wake()

    def close(self) -> Optional[TraceMeta]:
        return self._recorder.close() if self._recorder is not None else None

    @property
    def stats(self):
        return self._recorder.stats if self._recorder is not None else None


class FileSource:
    """A recorded trace (any format ``open_events`` reads), fed in chunks.

    kvmtrace Parquet is streamed row group by row group (memory does not grow with the
    trace).  ``chunk_rows`` small chunks exercise the same incremental path as the
    recorder's 0.1 s chunks; ``pace`` (seconds between chunks) makes a replay look live to
    ``watch``.
    """

    def __init__(self, path: str | os.PathLike, chunk_rows: int = 4096,
                 pace: float = 0.0, tgid_map: Optional[dict] = None,
                 columns: Sequence[str] = NUMERIC_COLUMNS) -> None:
        self.path = str(path)
        self.chunk_rows = max(1, int(chunk_rows))
        self.pace = pace
        self.tgid_map = tgid_map
        self.columns = tuple(columns)
        self._chunks: Optional[Iterator[Chunk]] = None
        self._meta: Optional[TraceMeta] = None

    def open(self) -> SourceInfo:
        from kvmtrace.sources.stream import open_events
        stream = open_events(self.path, columns=self.columns, chunk_rows=self.chunk_rows,
                             tgid_map=self.tgid_map)
        meta = stream.meta
        self._chunks = stream.chunks
        self._meta = meta
        return SourceInfo(meta=meta, attached=list(meta.probes), notes=list(meta.notes),
                          live=False, label=self.path)

    def run(self, on_chunk: OnChunk, duration: Optional[float], stop: threading.Event) -> None:
        if self._chunks is None:
            raise RuntimeError("open() first")
        for chunk in self._chunks:
            if stop.is_set():
                return
            on_chunk(chunk)
            if self.pace and stop.wait(self.pace):
                return

    def close(self) -> Optional[TraceMeta]:
        return self._meta
