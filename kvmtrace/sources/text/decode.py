"""One text line -> normalised rows, and the block scan the compiled fast path replaces.

A *block* is a run of complete lines (bytes).  ``scan(block)`` returns, per line, a status
and, for the lines it decoded, rows; it is implemented twice:

- ``kvmtrace.sources.text._fastscan`` (C, ``_fastscan.c``, built on install): decodes the
  common printed forms of every model tracepoint in every line shape of ``lines.py`` and
  hands anything else - headers, lost markers, quotes, raw-field and plugin forms, kprobes,
  lines it does not recognise - back as ``DEFER``;
- ``py_scan`` below: defers every line.

Deferred lines go through ``EventDecoder`` (regular expressions, every form), so both scans
give identical rows (tests compare them on every fixture).  Rows are int64 records of
``ROW_FIELDS``; ``key`` orders rows of a block (line * 4 + sub-row; LOST rows use sub 0).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kvmtrace.functions import kind_for, perf_probe_function
from kvmtrace.schema import COLUMN_BY_NAME
from kvmtrace.sources.text import lines as L
from kvmtrace.sources.text.payloads import (TRACEPOINTS, function_payload, joined,
                                             kprobe_function, perf_probe_args)

ROW_FIELDS = ("key", "ts", "cpu", "tid", "tgid", "comm", "kind", "vcpu", "gfn", "role", "level",
              "root_count", "unsync", "created", "need_flush", "value")
NFIELDS = len(ROW_FIELDS)
PAYLOAD_FIELDS = ROW_FIELDS[6:]

# Line status (uint8), shared with _fastscan.c.
BLANK, ROWS, IGNORED, DEFER, OTHER = 0, 1, 2, 3, 4

_IGNORE = object()          # decoder verdict: an event outside the model


def _bounds(name: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(COLUMN_BY_NAME[name].dtype))
    return int(info.min), int(info.max)


_PAYLOAD_BOUNDS = tuple(_bounds(n) for n in PAYLOAD_FIELDS)


def out_of_range(payload: tuple) -> str:
    """The first payload field that does not fit its schema column ('' when all fit)."""
    for name, v, (lo, hi) in zip(PAYLOAD_FIELDS, payload, _PAYLOAD_BOUNDS):
        if not lo <= v <= hi:
            return name
    return ""


def ts_value(ts: str) -> tuple[int, bool]:
    """(ns, is a bare counter) of a printed timestamp; ValueError when it is not one."""
    if ts[-7:-6] == ".":
        return int(ts.replace(".", "", 1)) * 1000, False
    if ts[-10:-9] == ".":
        return int(ts.replace(".", "", 1)), False
    return L.ts_ns(ts), "." not in ts


@dataclass
class Scan:
    """What a block scan found: per-line status/ts/cpu, line starts, decoded rows.

    ``starts`` are offsets into the buffer scanned (nlines + 1 of them: the last is where
    the scan stopped, ``consumed``).  The arrays may be views of buffers the next scan
    overwrites: copy what must outlive the block.
    """

    status: np.ndarray           # uint8 per line
    line_ts: np.ndarray          # int64 per line (event lines)
    line_cpu: np.ndarray         # int64 per line (event lines; -1 unknown)
    starts: np.ndarray           # int64, nlines + 1 offsets into the buffer
    rows: np.ndarray             # int64 (NFIELDS, n)
    ignored: dict = field(default_factory=dict)
    counter_clock: bool = False
    invlpg: int = 0              # kvm_exit lines with reason INVLPG (lines.INVLPG_EXIT)

    @property
    def nlines(self) -> int:
        return len(self.status)

    @property
    def consumed(self) -> int:
        return int(self.starts[-1])


MAX_BLOCK_LINES = 1 << 18


def py_scan(buf, start: int, final: bool, comm_ids: dict, comm_names: list) -> Scan:
    """The pure-Python scan: every line deferred to ``EventDecoder``."""
    view = np.frombuffer(buf, dtype=np.uint8)[start:]
    nl = np.flatnonzero(view == 10)[:MAX_BLOCK_LINES] + (start + 1)
    starts = np.concatenate(([start], nl)).astype(np.int64)
    if final and len(nl) < MAX_BLOCK_LINES and starts[-1] < len(buf):
        starts = np.append(starts, len(buf))             # a last line without newline
    n = len(starts) - 1
    return Scan(np.full(n, DEFER, dtype=np.uint8), np.zeros(n, dtype=np.int64),
                np.full(n, -1, dtype=np.int64), starts, np.zeros((NFIELDS, 0), dtype=np.int64))


# Decoder numbers of _fastscan.c (its D_* enum) for the tracepoints it decodes itself.
FAST_IDS = {"kvm_pv_tlb_flush": 10, "kvm_mmu_get_page": 11, "kvm_mmu_unsync_page": 12,
            "kvm_mmu_sync_page": 13, "kvm_mmu_prepare_zap_page": 14, "kvm_mmu_zap_page": 14,
            "kvm_entry": 15, "kvm_exit": 16, "kvm_mmu_set_spte": 17,
            "kvm_mmu_paging_element": 18, "kvm_mmu_pagetable_walk": 19, "kvm_emulate_insn": 20,
            "kvm_pio": 21, "kvm_mmio": 22, "kvm_hypercall": 23, "kvm_userspace_exit": 24,
            "kvm_page_fault": 25}
C_IGNORE, C_DEFER, C_KPROBE = 0, 1, 2


def fast_scanner(module) -> Callable:
    """A scan function (the signature of py_scan) backed by the compiled module.  Its output
    arrays are allocated once and reused for every block (fresh pages are costly)."""
    classifier = EventDecoder()
    status = np.empty(MAX_BLOCK_LINES, dtype=np.uint8)
    line_ts = np.empty(MAX_BLOCK_LINES, dtype=np.int64)
    line_cpu = np.empty(MAX_BLOCK_LINES, dtype=np.int64)
    starts = np.empty(MAX_BLOCK_LINES + 1, dtype=np.int64)
    rows = np.empty((NFIELDS, 2 * MAX_BLOCK_LINES), dtype=np.int64)

    def scan(buf, start: int, final: bool, comm_ids: dict, comm_names: list) -> Scan:
        ignored: dict = {}
        n, _end, nrows, invlpg = module.scan(buf, start, status, line_ts, line_cpu, starts,
                                             rows, ignored, comm_ids, comm_names,
                                             classifier.classify, final)
        return Scan(status[:n], line_ts[:n], line_cpu[:n], starts[:n + 1], rows[:, :nrows],
                    ignored, False, invlpg)
    return scan


def _load_fast() -> Callable | None:
    if os.environ.get("KVMTRACE_PURE_PYTHON"):
        return None
    try:
        from kvmtrace.sources.text import _fastscan       # type: ignore[attr-defined]
    except ImportError:
        return None
    return fast_scanner(_fastscan)


class EventDecoder:
    """Event name + body -> payload tuples, _IGNORE, or a reason it cannot be decoded."""

    def __init__(self) -> None:
        self.probes: set[str] = set()
        self._cache: dict[str, tuple] = {}

    def decode(self, event: str, body: str) -> tuple[list | object, str]:
        """(payloads or _IGNORE, problem).  problem is '' on success."""
        pair = self._cache.get(event)
        if pair is None:
            pair = self._cache[event] = self._pair(event)
        printed, fallback = pair
        if printed is _IGNORE or (printed == self._ftrace_kprobe and not body.startswith("(")):
            return _IGNORE, ""
        if joined(body):
            return [], f"another event follows the {event} payload (joined lines)"
        out = printed(body)
        if out is None and fallback is not None:
            out = fallback(body.replace("\x00", ""))
        if out is None:
            return [], f"cannot decode the {event} payload"
        if out is _IGNORE:
            return _IGNORE, ""
        return (out if type(out) is list else [out]), ""

    def classify(self, event: str) -> int:
        """How the compiled scanner treats an event name (C_IGNORE, C_DEFER, C_KPROBE, or
        the number of its own decoder for a FAST_IDS tracepoint)."""
        pair = self._cache.get(event)
        if pair is None:
            pair = self._cache[event] = self._pair(event)
        if pair[0] is _IGNORE:
            return C_IGNORE
        if pair[0] == self._ftrace_kprobe:
            return C_KPROBE
        group, sep, name = event.rpartition(":")
        if pair is TRACEPOINTS.get(name) and name in FAST_IDS:
            return FAST_IDS[name]
        return C_DEFER

    def is_model(self, event: str, body: str) -> bool:
        """Whether this event is (or may be) decoded into model rows."""
        pair = self._cache.get(event)
        if pair is None:
            pair = self._cache[event] = self._pair(event)
        if pair[0] == self._ftrace_kprobe:
            probe = kprobe_function(body) if body.startswith("(") else None
            return probe is not None and kind_for(probe[0], probe[1]) is not None
        return pair[0] is not _IGNORE

    def _pair(self, event: str) -> tuple:
        group, sep, name = event.rpartition(":")
        if sep:
            probe = perf_probe_function(name)
            if probe is not None:
                func, is_return = probe
                self.probes.add(f"{'kretprobe' if is_return else 'kprobe'}:{func}")

                def perf_probe(body: str, func=func, is_return=is_return):
                    parsed = perf_probe_args(body)
                    if parsed is None:
                        return None
                    payload = function_payload(func, is_return, parsed[1])
                    return _IGNORE if payload is None else payload
                return perf_probe, None
            pair = TRACEPOINTS.get(name) if group in ("kvm", "kvmmmu") else None
            return pair if pair is not None else (_IGNORE, None)
        pair = TRACEPOINTS.get(event)
        if pair is not None:
            return pair
        return self._ftrace_kprobe, None

    def _ftrace_kprobe(self, body: str):
        """Any other ftrace event name: a kprobe if its body names a function we use."""
        if not body.startswith("("):
            return _IGNORE
        probe = kprobe_function(body)
        if probe is None:
            return _IGNORE
        func, is_return, args = probe
        payload = function_payload(func, is_return, args)
        if payload is None:
            return _IGNORE
        self.probes.add(f"{'kretprobe' if is_return else 'kprobe'}:{func}")
        return payload


IGNORE = _IGNORE


def ignored_name(event: str, colon: str) -> str:
    """How an ignored line is counted: its event, or the function tracer's "func <-parent"."""
    return event if colon or event.startswith("<") else "(function tracer)"


FAST_SCAN = _load_fast()
