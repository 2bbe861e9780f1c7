"""Running ``kvmtrace watch``: a tracing session whose closed windows are shown as they close.

The source's thread feeds ``OnlineAnalysis``; its listener only queues the closed windows,
and this module's loop, in the main thread, prints them and refreshes the view -- so all
output comes from one thread and the feeding thread never blocks on the terminal.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Optional, Protocol

from kvmtrace.analysis import AnalysisResult, FlushWindow
from kvmtrace.analysis.replay import ReplayListener
from kvmtrace.pipeline.online import OnlineAnalysis, Snapshot
from kvmtrace.pipeline.session import Session
from kvmtrace.sources.chunks import ChunkSource, SourceInfo

POLL_S = 0.1


class View(Protocol):
    def window(self, w: FlushWindow) -> None: ...
    def tick(self, snap: Snapshot, elapsed: float) -> None: ...
    def final(self, snap: Snapshot, elapsed: float, verdict: str) -> None: ...


class Watch:
    """One watch: open the source, then ``run()`` until the source ends or ``stop`` is set."""

    def __init__(self, source: ChunkSource, view: View, interval: float,
                 stop: Optional[threading.Event] = None,
                 replay_listener: Optional[ReplayListener] = None) -> None:
        self.online = OnlineAnalysis(replay_listener=replay_listener)
        self.session = Session(source, self.online)
        if stop is not None:
            self.session.stop = stop
        self.view = view
        self.interval = interval
        self.closed: queue.SimpleQueue = queue.SimpleQueue()
        self.online.add_listener(self._queue)
        self.info: Optional[SourceInfo] = None
        self.windows_shown = 0

    def _queue(self, windows: list[FlushWindow]) -> None:
        for w in windows:
            self.closed.put(w)

    def open(self) -> SourceInfo:
        """Attach; LiveUnavailable propagates (exit 4)."""
        self.info = self.session.open()
        return self.info

    def _drain(self) -> None:
        while True:
            try:
                w = self.closed.get_nowait()
            except queue.Empty:
                return
            self.windows_shown += 1
            self.view.window(w)

    def run(self) -> AnalysisResult:
        if self.info is None:
            self.open()
        self.session.start(duration=None)
        next_tick = time.monotonic()
        try:
            while not self.session.stop.is_set():
                ended = self.session.wait(POLL_S)
                self._drain()
                if ended:
                    break
                if time.monotonic() >= next_tick:
                    self.view.tick(self.online.snapshot(), self.session.elapsed)
                    next_tick = time.monotonic() + self.interval
        finally:
            self.session.close()
        self._drain()
        result = self.online.finish()
        self.view.final(self.online.snapshot(), self.session.elapsed, result.verdict)
        return result
