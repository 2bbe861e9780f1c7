"""Live recording with BCC: probe planning, BPF program generation, the bulk ring-buffer
consumer and the Recorder.  Only this package (and the doctor/record commands) imports
BCC, and only when asked to trace."""
from __future__ import annotations

from kvmtrace.sources.live.errors import LiveUnavailable
from kvmtrace.sources.live.recorder import AttachReport, Recorder, RecorderStats

__all__ = ["Recorder", "AttachReport", "RecorderStats", "LiveUnavailable"]
