"""node_exporter textfile-collector output for `kvmtrace check --prom FILE`.

The collector reads every ``*.prom`` file in its directory on each scrape, so the file is
written to a temporary name in the same directory and renamed over the old one: a scrape
sees the old metrics or the new ones, never half a file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

VERDICTS = ("pass", "fail", "inconclusive", "not-exposed", "error")
MAX_REASON = 300
WINDOW_VERDICTS = ("ok", "violation", "suspect", "inconclusive", "open")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(verdict: str, windows: Mapping[str, int], stale_reads: int,
                   timestamp: float, labels: Mapping[str, str] | None = None,
                   reason: str = "", exit_code: int | None = None) -> str:
    """The metrics of one check run in the Prometheus text exposition format.

    ``verdict`` "error": the run could not judge (exit 2 or 4, interrupted); ``reason``
    says why, as a label of ``kvmtrace_check_info``."""
    extra = "".join(f',{k}="{_escape(v)}"' for k, v in sorted((labels or {}).items()))
    base = extra.lstrip(",")
    braces = f"{{{base}}}" if base else ""
    lines = [
        "# HELP kvmtrace_check_verdict 1 for the verdict of the last kvmtrace check, 0 for the others.",
        "# TYPE kvmtrace_check_verdict gauge",
    ]
    for name in VERDICTS:
        lines.append(f'kvmtrace_check_verdict{{verdict="{name}"{extra}}} {int(name == verdict)}')
    lines += [
        "# HELP kvmtrace_check_windows Guest TLB flush windows seen by the last check, by window verdict.",
        "# TYPE kvmtrace_check_windows gauge",
    ]
    for name in WINDOW_VERDICTS:
        lines.append(f'kvmtrace_check_windows{{verdict="{name}"{extra}}} {int(windows.get(name, 0))}')
    lines += [
        "# HELP kvmtrace_check_meaningful_windows Flush windows opened while a shadow page was unsync.",
        "# TYPE kvmtrace_check_meaningful_windows gauge",
        f"kvmtrace_check_meaningful_windows{braces} {int(windows.get('meaningful', 0))}",
        "# HELP kvmtrace_check_violations Flushes that let a vCPU run before its shadow roots were synced.",
        "# TYPE kvmtrace_check_violations gauge",
        f"kvmtrace_check_violations{braces} {int(windows.get('violation', 0))}",
        "# HELP kvmtrace_check_stale_reads Stale values the built-in guest read after a flush.",
        "# TYPE kvmtrace_check_stale_reads gauge",
        f"kvmtrace_check_stale_reads{braces} {int(stale_reads)}",
        "# HELP kvmtrace_check_last_run_timestamp_seconds When the last check finished.",
        "# TYPE kvmtrace_check_last_run_timestamp_seconds gauge",
        f"kvmtrace_check_last_run_timestamp_seconds{braces} {timestamp:.3f}",
        "# HELP kvmtrace_check_info The last check's verdict, exit code and first reason.",
        "# TYPE kvmtrace_check_info gauge",
        (f'kvmtrace_check_info{{verdict="{_escape(verdict)}",exit_code="{"" if exit_code is None else exit_code}",'
         f'reason="{_escape(" ".join(reason.split())[:MAX_REASON])}"{extra}}} 1'),
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Replace path with text so that readers never see a partial file."""
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
