"""node_exporter textfile-collector output for `kvmtrace check --prom FILE`.

The conventions node_exporter's textfile collector and Prometheus expect, and how this
module keeps them:

- atomic replacement: the collector reads every ``*.prom`` file in its directory on each
  scrape, so the file is written to a temporary name in the same directory (a dot name
  that does not end in ``.prom``, so the collector never reads it) and renamed over the
  old one: a scrape sees the old metrics or the new ones, never half a file;
- names: every metric starts with ``kvmtrace_check_``; values are in base units
  (seconds, plain counts), and per-run counts are gauges (a check run is a snapshot, not a
  counter that grows);
- every family has ``# HELP`` and ``# TYPE`` before its samples, once;
- no client-side timestamps on samples (the collector rejects them); when the check ran is
  the value of ``kvmtrace_check_last_run_timestamp_seconds`` (node_exporter adds
  ``node_textfile_mtime_seconds`` for the file);
- one-hot verdict: ``kvmtrace_check_verdict{verdict=...}`` is 1 for the run's verdict and
  0 for the others, so alerts match ``== 1`` on one label value.  ``error`` means the run
  could not judge (exit 2 or 4, interrupted): then only the verdict, the run time and
  ``kvmtrace_check_info`` (its reason) are written, never window or violation counts, so a
  dashboard shows a gap instead of a zero nobody measured.

Imports: the standard library only (layer 7, outputs).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

VERDICTS = ("pass", "fail", "inconclusive", "not-exposed", "error")
ERROR = "error"
MAX_REASON = 300
WINDOW_VERDICTS = ("ok", "violation", "suspect", "inconclusive", "open")
PREFIX = "kvmtrace_check_"


@dataclass
class Measured:
    """What a check that judged saw, beyond its verdict (absent when it could not judge)."""

    events: int = 0
    lost_events: int = 0
    duration_seconds: float = 0.0
    guest_flushes_requested: Optional[int] = None     # only with --exercise (the guest ran)


@dataclass
class _Family:
    name: str
    help: str
    samples: list[tuple[str, float]] = field(default_factory=list)   # (label text, value)

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for labels, value in self.samples:
            out.append(f"{self.name}{{{labels}}} {_number(value)}" if labels
                       else f"{self.name} {_number(value)}")
        return out


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return f"{value:.3f}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str], extra: Mapping[str, str]) -> str:
    """``k="v",...``: the metric's own labels first, then the caller's extra ones (sorted)."""
    items = list(pairs.items()) + sorted(extra.items())
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in items)


def render_metrics(verdict: str, windows: Mapping[str, int], stale_reads: int,
                   timestamp: float, labels: Mapping[str, str] | None = None,
                   reason: str = "", exit_code: int | None = None,
                   measured: Measured | None = None) -> str:
    """The metrics of one check run in the Prometheus text exposition format.

    ``verdict`` "error": the run could not judge (exit 2 or 4, interrupted); ``reason``
    says why, as a label of ``kvmtrace_check_info``, and no measurement is written."""
    extra = dict(labels or {})
    fams = [_Family(PREFIX + "verdict", "1 for the verdict of the last kvmtrace check "
                    "(error: it could not judge), 0 for the others.",
                    [(_labels({"verdict": v}, extra), int(v == verdict)) for v in VERDICTS])]
    if verdict != ERROR:
        fams += _measurements(windows, stale_reads, measured or Measured(), extra)
    fams += [
        _Family(PREFIX + "last_run_timestamp_seconds",
                "Unix time in seconds when the last kvmtrace check finished.",
                [(_labels({}, extra), round(timestamp, 3))]),
        _Family(PREFIX + "info", "Always 1; the last check's verdict, exit code and first "
                "reason as labels.",
                [(_labels({"verdict": verdict,
                           "exit_code": "" if exit_code is None else str(exit_code),
                           "reason": " ".join(reason.split())[:MAX_REASON]}, extra), 1)]),
    ]
    return "\n".join(line for fam in fams for line in fam.lines()) + "\n"


def _measurements(windows: Mapping[str, int], stale_reads: int, m: Measured,
                  extra: Mapping[str, str]) -> list[_Family]:
    plain = _labels({}, extra)
    fams = [
        _Family(PREFIX + "windows", "Guest TLB flush windows closed in the last check, by "
                "window verdict (open: still open when it ended).",
                [(_labels({"verdict": v}, extra), int(windows.get(v, 0)))
                 for v in WINDOW_VERDICTS]),
        _Family(PREFIX + "meaningful_windows", "Flush windows of the last check opened while "
                "a shadow page was unsync (they test whether KVM syncs).",
                [(plain, int(windows.get("meaningful", 0)))]),
        _Family(PREFIX + "violations", "Flushes in the last check that let a vCPU run before "
                "its shadow roots were synced.", [(plain, int(windows.get("violation", 0)))]),
        _Family(PREFIX + "stale_reads", "Stale values the built-in guest read after a flush "
                "in the last check.", [(plain, int(stale_reads))]),
        _Family(PREFIX + "events", "Trace events the last check analysed.",
                [(plain, int(m.events))]),
        _Family(PREFIX + "lost_events", "Trace events the recorder dropped in the last check "
                "(any makes it inconclusive at best).", [(plain, int(m.lost_events))]),
        _Family(PREFIX + "duration_seconds", "How long the last check traced, in seconds.",
                [(plain, round(float(m.duration_seconds), 3))]),
    ]
    if m.guest_flushes_requested is not None:
        fams.append(_Family(PREFIX + "guest_flushes_requested", "Guest TLB flushes the "
                            "built-in guest requested in the last check (--exercise).",
                            [(plain, int(m.guest_flushes_requested))]))
    return fams


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Replace path with text so that readers never see a partial file.

    The temporary file is ``.NAME.XXXX`` in the same directory: the same file system (so
    the rename is atomic) and, not ending in ``.prom``, never read by the collector."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
