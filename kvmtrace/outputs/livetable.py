"""The live view of ``kvmtrace watch``: a per-VM, per-vCPU table of flush windows.

Three outputs for three consumers:
- ``AnsiTable``: on a terminal, the table is redrawn in place (cursor up + clear to end of
  screen); a violation is printed above it, with its context, as it happens;
- ``PlainLines``: not a terminal, no --json: a summary line every interval, violations as
  they happen, the table once at the end;
- ``JsonLines``: one JSON object per closed non-ok window (exactly the ``findings`` entries
  of ``kvmtrace analyze --json``) and a periodic ``summary`` object, for log pipelines.
"""
from __future__ import annotations

import json
import shutil
from typing import IO

from kvmtrace.analysis import FlushWindow
from kvmtrace.analysis.report import finding_dict, is_finding
from kvmtrace.outputs.text import finding_lines, format_ns
from kvmtrace.pipeline.online import Snapshot

CSI = "\x1b["


def header(snap: Snapshot, elapsed: float) -> str:
    w = snap.windows
    rate = snap.events / elapsed if elapsed > 0 else 0.0
    return (f"kvmtrace watch  {elapsed:6.1f} s  {snap.events} events ({rate:.0f}/s)  "
            f"lost {snap.lost_events}  windows {w['total']} ({w['meaningful']} meaningful)  "
            f"violations {w['violation']}  open {snap.open_now}  evidence "
            f"{snap.evidence['exact']} exact / {snap.evidence['inferred']} inferred / "
            f"{snap.evidence['none']} none")


COLUMNS = (f"{'VM':>8} {'vCPU':<9}{'windows':>8}{'meaningful':>11}{'ok':>7}{'viol':>6}"
           f"{'susp':>6}{'inconc':>7}{'lost':>6}{'open':>6}  flush->sync mean / max")


def table_lines(snap: Snapshot, elapsed: float) -> list[str]:
    lines = [header(snap, elapsed), COLUMNS]
    if not snap.rows:
        lines.append(f"{'':>8} (no flush window yet"
                     + (f"; {len(snap.vms)} VM(s) seen)" if snap.vms else "; no VM seen)"))
    for r in snap.rows:
        c = r.windows
        lines.append(f"{r.tgid:>8} {r.label:<9}{c['total']:>8}{c['meaningful']:>11}"
                     f"{c['ok']:>7}{c['violation']:>6}{c['suspect']:>6}{c['inconclusive']:>7}"
                     f"{r.lost_windows:>6}{r.open_now:>6}  {format_ns(r.latency_mean_ns)} / "
                     f"{format_ns(r.latency_max_ns)}")
    return lines


def window_text(w: FlushWindow) -> list[str]:
    """A closed non-ok window with its context: what was left unsync, the events around it."""
    return finding_lines(finding_dict(w))


class AnsiTable:
    """Redraws the table in place on a terminal."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.drawn = 0

    def _clear(self) -> None:
        if self.drawn:
            # Cursor to the start of the line `drawn` lines up, then erase to end of screen.
            self.out.write(f"{CSI}{self.drawn}F{CSI}J")
            self.drawn = 0

    def window(self, w: FlushWindow) -> None:
        if w.verdict != "violation":
            return
        self._clear()
        self.out.write("\n".join(window_text(w)) + "\n")

    def tick(self, snap: Snapshot, elapsed: float) -> None:
        self._clear()
        width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
        lines = [line[:width] for line in table_lines(snap, elapsed)]
        self.out.write("\n".join(lines) + "\n")
        self.drawn = len(lines)
        self.out.flush()

    def final(self, snap: Snapshot, elapsed: float, verdict: str) -> None:
        self.tick(snap, elapsed)
        self.out.write(f"stopped: analysis verdict {verdict}\n")
        self.out.flush()


class PlainLines:
    """Periodic summary lines (not a terminal); the table once at the end."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def window(self, w: FlushWindow) -> None:
        if w.verdict == "violation":
            self.out.write("\n".join(window_text(w)) + "\n")
            self.out.flush()

    def tick(self, snap: Snapshot, elapsed: float) -> None:
        self.out.write(header(snap, elapsed) + "\n")
        self.out.flush()

    def final(self, snap: Snapshot, elapsed: float, verdict: str) -> None:
        self.out.write("\n".join(table_lines(snap, elapsed)) + "\n")
        self.out.write(f"stopped: analysis verdict {verdict}\n")
        self.out.flush()


class JsonLines:
    """One JSON line per closed non-ok window, and summary lines."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def _emit(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    def window(self, w: FlushWindow) -> None:
        if is_finding(w):
            self._emit({"type": "window", **finding_dict(w)})

    def tick(self, snap: Snapshot, elapsed: float) -> None:
        self._emit({"type": "summary", "elapsed_s": round(elapsed, 3), **snap.to_dict()})

    def final(self, snap: Snapshot, elapsed: float, verdict: str) -> None:
        self._emit({"type": "summary", "final": True, "verdict": verdict,
                    "elapsed_s": round(elapsed, 3), **snap.to_dict()})
