"""Record an exercise run as plain tracefs text, the way an ftrace user would.

A private tracefs *instance* (``instances/<name>``, kernel/trace/trace.c
``instance_mkdir``) has its own ring buffer and event switches, so a capture neither
disturbs nor is disturbed by other tracefs users.  It enables every event of the ``kvm``
and ``kvmmmu`` systems, turns on ``options/record-tgid`` (the TGID column tells VMs
apart), and with ``set_event_pid`` + ``options/event-fork`` keeps only the calling thread
and the threads it creates afterwards (the vCPU threads), so concurrent VMs stay out.
``trace`` then reads as ``cat /sys/kernel/tracing/trace`` would.
"""
from __future__ import annotations

import os
import re
import threading

from kvmtrace.host.tracefs import find_mount

SYSTEMS = ("kvm", "kvmmmu")
_ENTRIES_RE = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")


class CaptureUnavailable(RuntimeError):
    """tracefs, its instances, or the KVM event systems are missing, or we may not write."""


def capture_unavailable_reason() -> str | None:
    mount = find_mount()
    if mount is None:
        return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    if not os.access(mount, os.R_OK | os.X_OK):
        return f"{mount} is not readable (run as root)"
    if not (mount / "instances").is_dir():
        return f"{mount} has no instances directory"
    missing = [s for s in SYSTEMS if not (mount / "events" / s).is_dir()]
    if missing:
        return f"{mount}: no {', '.join(missing)} events (is KVM loaded?)"
    if not os.access(mount / "instances", os.W_OK):
        return f"{mount}/instances is not writable (run as root)"
    return None


class TracefsCapture:
    """``with TracefsCapture() as cap: ...; text = cap.text()``"""

    def __init__(self, buffer_kb: int = 32768, name: str | None = None) -> None:
        reason = capture_unavailable_reason()
        if reason:
            raise CaptureUnavailable(reason)
        self.root = find_mount() / "instances" / (name or f"kvmtrace-exercise-{os.getpid()}")
        self.buffer_kb = buffer_kb

    def _write(self, rel: str, value: str) -> None:
        with open(self.root / rel, "w") as f:
            f.write(value)

    def __enter__(self) -> "TracefsCapture":
        self.root.mkdir()
        try:
            self._write("tracing_on", "0")
            self._write("buffer_size_kb", str(self.buffer_kb))
            self._write("options/record-tgid", "1")
            self._write("options/event-fork", "1")
            self._write("set_event_pid", str(threading.get_native_id()))
            for system in SYSTEMS:
                self._write(f"events/{system}/enable", "1")
            self._write("trace", "")
            self._write("tracing_on", "1")
        except BaseException:
            self._remove()
            raise
        return self

    def stop(self) -> None:
        self._write("tracing_on", "0")

    def text(self) -> str:
        """The buffer as ``trace`` formats it (call after the run, before leaving)."""
        self.stop()
        return (self.root / "trace").read_text()

    def _remove(self) -> None:
        try:
            self._write("tracing_on", "0")
            for system in SYSTEMS:
                self._write(f"events/{system}/enable", "0")
        finally:
            self.root.rmdir()

    def __exit__(self, *exc) -> None:
        self._remove()


def lost_entries(text: str) -> int:
    """Events the ring buffer overwrote, from the ``entries-in-buffer/entries-written``
    header line (0 when the header is absent)."""
    m = _ENTRIES_RE.search(text[:4096])
    return 0 if m is None else int(m.group(2)) - int(m.group(1))
