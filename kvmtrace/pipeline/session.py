"""A tracing session: one chunk source feeding one OnlineAnalysis from a worker thread.

The command's main thread stays free for signals (Ctrl-C / SIGTERM set ``stop``), the
status line, the live table and early stopping; the worker thread runs the source (the
recorder's drain loop spends its time in the ring buffer's epoll and in numpy, so the GIL
is mostly free).  An exception in the worker is re-raised in the main thread by
``close()``.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator, Optional

from kvmtrace.pipeline.online import OnlineAnalysis
from kvmtrace.schema import TraceMeta
from kvmtrace.sources.chunks import ChunkSource, SourceInfo


class Session:
    def __init__(self, source: ChunkSource, online: OnlineAnalysis) -> None:
        self.source = source
        self.online = online
        self.stop = threading.Event()
        self.info: Optional[SourceInfo] = None
        self.started = 0.0
        self.ended = 0.0
        self.final_meta: Optional[TraceMeta] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._closed = False

    def open(self) -> SourceInfo:
        """Attach (or open the file) and start the model; LiveUnavailable propagates."""
        self.source.columns = OnlineAnalysis.COLUMNS
        info = self.source.open()
        try:
            self.online.start(info.meta, source=info.label if not info.live else "")
        except BaseException:
            self.source.close()             # detach: nothing will run the source
            raise
        self.info = info
        return info

    def start(self, duration: Optional[float] = None) -> None:
        if self.info is None:
            self.open()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._work, args=(duration,),
                                        name="kvmtrace-source", daemon=True)
        self._thread.start()

    def _work(self, duration: Optional[float]) -> None:
        try:
            self.source.run(self.online.feed, duration, self.stop)
        except BaseException as exc:          # re-raised by close() in the main thread
            self._error = exc
        finally:
            self.ended = time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    def wait(self, timeout: Optional[float]) -> bool:
        """Wait up to timeout (None: for ever) for the source to end; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> Optional[TraceMeta]:
        """Stop the source, finish its file, re-raise a worker error.  Idempotent."""
        if self._closed:
            return self.final_meta
        self._closed = True
        self.stop.set()
        wake = getattr(self.source, "wake", None)     # a live source waits on its ring buffer
        if wake is not None and self._thread is not None:
            wake()
        try:
            if self._thread is not None:
                self._thread.join()
        finally:
            self.final_meta = self.source.close()
        if self._error is not None:
            raise self._error
        return self.final_meta


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) and SIGTERM set ``stop`` instead of ending the process,
    so a recording finishes its file and detaches its probes (a probe attached through the
    legacy tracefs ``kprobe_events`` interface outlives a killed process).  Enter it before
    attaching: a signal during the compile is then honoured as soon as tracing starts.
    Python lets only the main thread install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
