"""Read ftrace, trace-cmd report and perf script text as a stream of event chunks.

``TextReader`` reads the (possibly compressed, possibly piped) text in blocks of
``BLOCK_BYTES`` complete lines; each block is scanned (``decode.FAST_SCAN``, the compiled
scanner, or ``decode.py_scan``), the lines the scanner defers are decoded here, and the
rows become one chunk of schema columns.  Memory holds one block and one chunk, whatever the
size of the trace.

Per chunk: losses (``CPU:1 [LOST 123 EVENTS]``) become LOST rows on their CPU at the time of
that CPU's next event; threads get their VM (vms.py rules, applied as threads appear); each
CPU's timestamps must not go back (kernel/trace/ring_buffer.c writes each CPU's buffer in
time order, so only an edited, spliced or corrupt file does); rows are merged by time,
holding back the rows that a CPU still to come in the next block could precede.

Tolerance: a line that cannot be decoded is skipped and counted by reason, with the first
examples (``SkipTally``); ``strict`` turns the first one into an error.  A skipped line that
names a model event (or mentions one, when even its header is unreadable) could change a
verdict: ``SkipTally.decisive`` counts those, and the pipeline makes the verdict
inconclusive.  Mail quotes (``> ``) are removed and a line a mail client wrapped is joined
back to the line before it.  A text in which nothing is recognised is an error.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Optional

import numpy as np
import pandas as pd

from kvmtrace.schema import COLUMN_BY_NAME, COLUMN_NAMES, COLUMNS, CommColumn, Kind, TraceMeta
from kvmtrace.sources.native import GZIP_MAGIC, Trace, TraceFileError
from kvmtrace.sources.text import decode as D
from kvmtrace.sources.text import lines as L
from kvmtrace.sources.text.payloads import MODEL_HINT, joined
from kvmtrace.sources.text.vms import SINGLE_VM_TGID

BLOCK_BYTES = 8 << 20
SNIFF_BYTES = 1 << 20          # format detection reads at most this much
SNIFF_LINES = 4000
EXAMPLES = 3
UNKNOWN_COMM = "<...>"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZ2_MAGIC = b"BZh"

_DTYPE = {c.name: np.dtype(c.dtype) for c in COLUMNS if c.dtype != "str"}
_SP_KIND_CODES = np.array([int(k) for k in (Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP)])
_I32 = (1 << 31) - 1
_I16 = (1 << 15) - 1
_R = {name: i for i, name in enumerate(D.ROW_FIELDS)}
_ROW_DTYPE = {name: (np.dtype(np.int32) if name == "comm" else _DTYPE.get(name, np.dtype(np.int64)))
              for name in D.ROW_FIELDS}
_SP = np.zeros(256, dtype=bool)
_SP[_SP_KIND_CODES] = True
_KVMMMU = np.zeros(256, dtype=bool)        # kinds only the kvmmmu tracepoint group emits
for _k in (Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP, Kind.WALK_ELEMENT,
           Kind.WALK_START, Kind.SPTE_INSTALL):
    _KVMMMU[int(_k)] = True


def _last_pairs(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """The distinct (a, b) pairs of two non-negative int columns, in order of last appearance
    (a few per chunk: threads and their names or VMs)."""
    if not len(a):
        return []
    change = np.flatnonzero((a[1:] != a[:-1]) | (b[1:] != b[:-1]))
    ends = np.r_[change, len(a) - 1]
    key = (a[ends].astype(np.int64) << 32) | (b[ends].astype(np.int64) & 0xFFFFFFFF)
    _, last = np.unique(key[::-1], return_index=True)
    pick = np.sort(len(key) - 1 - last)
    return list(zip(a[ends][pick].tolist(), b[ends][pick].tolist()))


# ----------------------------------------------------------------------------- input

def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """The decompressed bytes of a file (gzip, xz, bz2, zstd or plain); '-' is stdin."""
    if str(path) == "-":
        raw: IO[bytes] = sys.stdin.buffer
    else:
        raw = open(path, "rb")
    head = raw.peek(8)[:8] if hasattr(raw, "peek") else b""
    if not head and str(path) != "-":
        head = raw.read(8)
        raw.seek(0)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")       # type: ignore[return-value]
    if head.startswith(XZ_MAGIC):
        return lzma.LZMAFile(raw, "rb")                     # type: ignore[return-value]
    if head.startswith(BZ2_MAGIC):
        return bz2.BZ2File(raw, "rb")                       # type: ignore[return-value]
    if head.startswith(ZSTD_MAGIC):
        import pyarrow as pa                                 # zstd through Arrow's codec
        return pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")  # type: ignore
    return raw


# ----------------------------------------------------------------------------- skips

@dataclass
class SkipTally:
    """Lines skipped, by reason, with their first examples (line number, text)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    decisive: int = 0              # skipped lines that could change a verdict
    decisive_examples: list = field(default_factory=list)
    last_line: int = 0
    last_text: str = ""

    def add(self, lineno: int, reason: str, text: str, decisive: bool) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < EXAMPLES:
            ex.append((lineno, text.rstrip()[:160]))
        if decisive:
            self.decisive += 1
            if len(self.decisive_examples) < EXAMPLES:
                self.decisive_examples.append(lineno)
        if lineno >= self.last_line:
            self.last_line, self.last_text = lineno, text

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "decisive": self.decisive,
                "by_reason": [{"reason": r, "count": n,
                               "examples": [{"line": ln, "text": t}
                                            for ln, t in self.examples.get(r, [])]}
                              for r, n in self.counts.most_common()]}

    def describe(self) -> str:
        parts = [f"{r} ({n}, e.g. line {self.examples[r][0][0]})"
                 for r, n in self.counts.most_common()]
        return f"skipped {self.total} lines that could not be decoded: " + "; ".join(parts)


# ----------------------------------------------------------------------------- reader

class TextReader:
    """Stream a text trace as chunks of schema columns (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, tgid_map: Optional[dict[int, int]] = None,
                 strict: bool = False, block_bytes: Optional[int] = None,
                 scan=None) -> None:
        self.path = str(path)
        self.tgid_map = dict(tgid_map or {})
        self.strict = strict
        self.block_bytes = block_bytes or BLOCK_BYTES      # read at call time (tests shrink it)
        self.scan = scan if scan is not None else (D.FAST_SCAN or D.py_scan)
        self.decoder = D.EventDecoder()
        self.skips = SkipTally()
        self.ignored: Counter = Counter()
        self.warnings: list[str] = []
        self.comm_ids: dict[str, int] = {}
        self.comm_names: list[str] = []
        self.unknown_comm = self._comm_id(UNKNOWN_COMM)
        self.tid_comm: dict[int, int] = {}
        self.tid_tgid: dict[int, int] = {}
        self.assumed_single = False
        self.source_vms: set[int] = set()            # VMs named by the trace or --tgid-map
        self.used_map = False
        self.late_tgid_threads: set[int] = set()
        self.joined_only_vm: set[int] = set()
        self.pending_lost: dict[int, int] = {}       # cpu -> count (-1 unknown)
        self.lost_per_cpu: Counter = Counter()
        self.lost_unknown = 0
        self.header_lost = 0
        self.kernel_release = ""
        self.counter_clock = False
        self.cpu_last: dict[int, int] = {}
        self.held: Optional[dict] = None
        self.max_ts = 0
        self.rows_out = 0
        self.events_seen = 0              # event lines recognised (rows or ignored)
        self.lines = 0
        self.last_nonblank = 0
        self.sp_without_gfn = 0
        self.kvmmmu_rows = 0
        self.invlpg_exits = 0
        self.wrap: Optional[tuple[int, str]] = None   # a failed line a wrap may continue
        self.meta: Optional[TraceMeta] = None
        self._f: Optional[IO[bytes]] = None
        self._head = b""
        self.dialect = ""

    # ------------------------------------------------------------------ open

    def open(self) -> TraceMeta:
        try:
            self._f = open_binary(self.path)
            self._head = self._f.read(SNIFF_BYTES)
        except FileNotFoundError:
            raise TraceFileError(self.path, "no such file") from None
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise TraceFileError(self.path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        except Exception as exc:                     # pyarrow's zstd errors
            raise TraceFileError(self.path, f"cannot read: {exc}") from None
        if not self._head:
            raise TraceFileError(self.path, "empty file")
        cut = self._head.rfind(b"\n") if len(self._head) == SNIFF_BYTES else len(self._head)
        text = self._head[:max(cut, 0)].decode("utf-8", errors="replace")
        head_lines = text.splitlines()[:SNIFF_LINES]
        dialect = L.sniff(head_lines)
        if dialect is None:
            binary = "\x00" in text or text.count("\ufffd") > 8
            what = "binary data" if binary else (
                f"no ftrace, trace-cmd report or perf script line in the first {len(head_lines)} lines")
            raise TraceFileError(self.path, f"not a recognised trace: {what}")
        self.dialect = dialect
        self._probes_in(head_lines)
        self.meta = TraceMeta(source="imported", source_format=dialect, source_path=self.path,
                              probes=sorted(self.decoder.probes))
        return self.meta

    def _probes_in(self, head_lines: list[str]) -> None:
        """Learn the probed functions from the prefix, so that the model knows from the first
        chunk that function probes are present (the metadata of a recording says so too)."""
        for line in head_lines:
            if ": (" not in line and "probe" not in line:
                continue
            ev = L.split_event_line(line)
            if ev is not None and ev.colon and (ev.body.startswith("(") or ":" in ev.event):
                self.decoder.decode(ev.event, ev.body)

    # ------------------------------------------------------------------ blocks

    def _read_into(self, mv: memoryview) -> int:
        assert self._f is not None
        try:
            return self._f.readinto(mv) or 0
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise TraceFileError(self.path, f"cannot read after line {self.lines}: "
                                            f"{getattr(exc, 'strerror', None) or exc}") from None
        except Exception as exc:                     # zlib/pyarrow errors of corrupt input
            raise TraceFileError(self.path, f"cannot read after line {self.lines}: {exc}") from None

    def _scans(self) -> Iterator[tuple[memoryview, D.Scan]]:
        """(buffer, its scan) for the whole input.

        One buffer of ``block_bytes`` is filled, scanned, and refilled after moving the
        incomplete last line to its front: no new memory per block."""
        cap = max(self.block_bytes, len(self._head) + 1)
        buf = bytearray(cap)
        mv = memoryview(buf)
        fill = len(self._head)
        buf[:fill] = self._head
        self._head = b""
        eof = skipping = False
        while True:
            while not eof and fill < cap:
                k = self._read_into(mv[fill:])
                eof = k == 0
                fill += k
            start = 0
            if skipping:                             # the rest of a line too long to scan
                nl = buf.find(b"\n", 0, fill)
                if nl < 0:
                    fill = 0
                    if eof:
                        return
                    continue
                start, skipping = nl + 1, False
            view = mv[:fill]
            while start < fill:
                scan = self.scan(view, start, False, self.comm_ids, self.comm_names)
                if scan.nlines == 0:
                    break
                start = scan.consumed
                yield view, scan
            if eof:
                if start < fill:                     # a last line without newline
                    self._partial_line(bytes(buf[start:fill]))
                return
            rest = fill - start
            if rest == cap:                          # no newline in a whole buffer
                self.lines += 1
                self._skip_line(self.lines, "line too long", bytes(buf[:160]).decode(
                    "utf-8", errors="replace"), False)
                skipping, fill = True, 0
                continue
            buf[:rest] = buf[start:fill]
            fill = rest

    def chunks(self) -> Iterator[tuple[dict, CommColumn]]:
        """(columns dict with schema dtypes, CommColumn) per block, in time order."""
        if self.meta is None:
            self.open()
        try:
            for view, scan in self._scans():
                cols = self._block(view, scan)
                out = self._release(cols, final=False)
                if out is not None:
                    yield out[0], CommColumn(self.comm_names, out[1])
            self._end_of_input()
            out = self._release(None, final=True)
            if out is not None:
                yield out[0], CommColumn(self.comm_names, out[1])
        finally:
            self.close()
        self._finish_meta()

    def close(self) -> None:
        if self._f is not None and self._f is not getattr(sys.stdin, "buffer", None):
            self._f.close()
        self._f = None

    # ------------------------------------------------------------------ one block

    def _partial_line(self, raw: bytes) -> None:
        """The input ended inside a line (a capture cut off): skip it, say so."""
        self.lines += 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if text.strip():
            self.last_nonblank = self.lines
            self._skip_line(self.lines, "partial last line (no newline)", text, False)
            self.warnings.append(f"skipped the partial last line {self.lines} (no newline; "
                                 f"capture cut off?): {text.rstrip()[:80]!r}")

    def _block(self, block: memoryview, scan: D.Scan) -> Optional[dict]:
        base = self.lines
        n = scan.nlines
        self.lines += n
        self.counter_clock |= scan.counter_clock
        self.invlpg_exits += scan.invlpg
        for name, count in scan.ignored.items():
            self.ignored[name] += count
        status = scan.status
        nonblank = np.flatnonzero(status != D.BLANK)
        if len(nonblank):
            self.last_nonblank = base + int(nonblank[-1]) + 1
        extra: list[tuple] = []
        markers: list[tuple[int, int, int]] = []
        deferred = np.flatnonzero(status == D.DEFER)
        starts = scan.starts
        for i in deferred.tolist():
            raw = block[starts[i]:starts[i + 1]]
            text = str(raw, "utf-8", errors="replace").rstrip("\n").rstrip("\r")
            lineno = base + i + 1
            self._line(i, lineno, text, scan, extra, markers)
        self.events_seen += int(np.count_nonzero((status == D.ROWS) | (status == D.IGNORED)))
        return self._rows(scan, extra, markers, base)

    def _line(self, i: int, lineno: int, text: str, scan: D.Scan, extra: list,
              markers: list) -> None:
        """Decode one deferred line (every form), or account for it."""
        status = scan.status
        status[i] = D.OTHER
        if text[:1] == ">":
            text = L.unquote(text)
        stripped = text.strip()
        if not stripped:
            status[i] = D.BLANK
            return
        if stripped[0] == "#":
            self._header(stripped)
            return
        lost = L.FTRACE_LOST.match(stripped) or L.TRACE_CMD_LOST.match(stripped)
        if lost is not None:
            self._flush_wrap()
            markers.append((i, int(lost.group("cpu")),
                            int(lost.group("n")) if lost.group("n") else -1))
            return
        if len(text) <= L.MAX_LINE and L.SKIP_LINE.match(text):
            return
        if self._event(i, lineno, text, scan, extra):
            self._flush_wrap()
            return
        wrap, self.wrap = self.wrap, None
        if wrap is not None and wrap[0] == lineno - 1:
            # The previous line failed too: a mail client may have wrapped it here.
            if self._event(i, wrap[0], wrap[1].rstrip() + " " + stripped, scan, extra):
                return
            self._fail(*wrap)
        elif wrap is not None:
            self._fail(*wrap)
        self.wrap = (lineno, text)

    def _flush_wrap(self) -> None:
        if self.wrap is not None:
            self._fail(*self.wrap)
            self.wrap = None

    def _fail(self, lineno: int, text: str) -> None:
        """Account for a line no decoding (alone or joined) accepted."""
        problem, decisive = self._why(text)
        self._skip_line(lineno, problem, text, decisive)

    def _why(self, text: str) -> tuple[str, bool]:
        if len(text) > L.MAX_LINE:
            return "line too long", MODEL_HINT.search(text, 0, L.MAX_LINE) is not None
        ev = L.split_event_line(text)
        if ev is None:
            return "not an event line", MODEL_HINT.search(text) is not None
        if not (-1 <= ev.tid <= _I32 and -1 <= ev.tgid <= _I32 and -1 <= ev.cpu <= _I16):
            return "tid, tgid or cpu out of range", self.decoder.is_model(ev.event, ev.body)
        try:
            D.ts_value(ev.ts)
        except ValueError:
            return "bad timestamp", self.decoder.is_model(ev.event, ev.body)
        if joined(ev.body):
            # Newlines lost: the events after the first are lost too.
            return (f"another event follows the {ev.event} payload (joined lines)",
                    MODEL_HINT.search(text, 0, L.MAX_LINE) is not None)
        out, problem = self.decoder.decode(ev.event, ev.body)
        if problem:
            return problem, self.decoder.is_model(ev.event, ev.body)
        if out is not D.IGNORE:
            for payload in out:
                bad = D.out_of_range(payload)
                if bad:
                    return f"{bad} value out of range", True
        return "not an event line", False

    def _skip_line(self, lineno: int, reason: str, text: str, decisive: bool) -> None:
        if self.strict:
            raise TraceFileError(self.path, f"line {lineno}: {reason}: {text.rstrip()[:100]!r}")
        self.skips.add(lineno, reason, text, decisive)

    def _event(self, i: int, lineno: int, text: str, scan: D.Scan, extra: list) -> bool:
        """Decode an event line into rows (True), or return False (caller accounts for it)."""
        ev = L.split_event_line(text)
        if ev is None:
            return False
        try:
            t, counter = D.ts_value(ev.ts)
        except ValueError:
            return False
        if not (-1 <= ev.tid <= _I32 and -1 <= ev.tgid <= _I32 and -1 <= ev.cpu <= _I16):
            return False
        if joined(ev.body):
            return False
        if not ev.colon and not ev.event.startswith("<"):
            out = D.IGNORE
        else:
            out, problem = self.decoder.decode(ev.event, ev.body)
            if problem:
                return False
        if out is not D.IGNORE:
            for payload in out:
                if D.out_of_range(payload):
                    return False
        if not -(1 << 63) <= t < (1 << 63):
            return False
        self.counter_clock |= counter
        if out is not D.IGNORE and ev.event.endswith("kvm_exit") and L.INVLPG_EXIT.match(ev.body):
            self.invlpg_exits += 1
        scan.line_ts[i] = t
        scan.line_cpu[i] = ev.cpu
        if out is D.IGNORE:
            self.ignored[D.ignored_name(ev.event, ev.colon)] += 1
            scan.status[i] = D.IGNORED
            return True
        comm = self._comm_id(ev.comm)
        key = i * 4
        for sub, payload in enumerate(out, 1):
            extra.append((key + sub, t, ev.cpu, ev.tid, ev.tgid, comm) + tuple(payload))
        scan.status[i] = D.ROWS
        return True

    def _comm_id(self, comm: str) -> int:
        cid = self.comm_ids.get(comm)
        if cid is None:
            cid = self.comm_ids[comm] = len(self.comm_names)
            self.comm_names.append(comm)
        return cid

    def _header(self, line: str) -> None:
        m = L.ENTRIES.match(line)
        if m is not None:
            in_buffer, written = int(m.group(1)), int(m.group(2))
            self.header_lost += max(0, written - in_buffer)
            return
        kv = L.PERF_HEADER_KV.match(line) if len(line) < 400 else None
        if kv is not None and kv.group(1) == "os release":
            self.kernel_release = kv.group(2)

    # ------------------------------------------------------------------ rows of a block

    def _rows(self, scan: D.Scan, extra: list, markers: list, base: int) -> Optional[dict]:
        rows = scan.rows
        if extra:
            py = np.array(extra, dtype=np.int64).T.reshape(D.NFIELDS, -1)
            rows = np.concatenate([rows, py], axis=1) if rows.shape[1] else py
        lost = self._lost_rows(scan, markers)
        if lost is not None:
            rows = np.concatenate([rows, lost], axis=1) if rows.shape[1] else lost
        if extra or lost is not None:
            rows = rows[:, np.argsort(rows[_R["key"]], kind="stable")]
        if rows.shape[1] == 0:
            return None
        # Schema dtypes now (a copy: the scan's arrays are reused for the next block).
        cols = {name: rows[j].astype(_ROW_DTYPE[name]) for j, name in enumerate(D.ROW_FIELDS)
                if name != "key"}
        self._check_cpu_order(cols)
        self._names(cols)
        self._vms(cols, base)
        return cols

    def _lost_rows(self, scan: D.Scan, markers: list) -> Optional[np.ndarray]:
        """LOST rows for the markers of this block and those pending from earlier blocks."""
        event = (scan.status == D.ROWS) | (scan.status == D.IGNORED)
        out = []
        targets: dict[tuple[int, int], int] = {}
        for _at, cpu, n in markers:
            if n >= 0:
                self.lost_per_cpu[cpu] += n
            else:
                self.lost_unknown += 1
        pending = [(-1, cpu, n) for cpu, n in self.pending_lost.items()] + markers
        self.pending_lost = {}
        cpus = scan.line_cpu
        for at, cpu, n in pending:
            later = np.flatnonzero(event[at + 1:] & (cpus[at + 1:] == cpu))
            if not len(later):
                before = self.pending_lost.get(cpu, 0)
                self.pending_lost[cpu] = -1 if n < 0 or before < 0 else before + n
                continue
            j = at + 1 + int(later[0])
            k = (j, cpu)
            if k in targets:
                prev = out[targets[k]]
                prev[-1] = -1 if n < 0 or prev[-1] < 0 else prev[-1] + n
                continue
            targets[k] = len(out)
            out.append([j * 4, int(scan.line_ts[j]), cpu, -1, -1, self._comm_id(""),
                        int(Kind.LOST), -1, -1, -1, -1, -1, -1, -1, -1, n])
        return np.array(out, dtype=np.int64).T if out else None

    def _check_cpu_order(self, cols: dict) -> None:
        """Refuse timestamps that go back on one CPU (see the module docstring)."""
        ts, cpu = cols["ts"], cols["cpu"]
        order = np.argsort(cpu, kind="stable")
        t, c = ts[order], cpu[order]
        back = np.flatnonzero((t[1:] < t[:-1]) & (c[1:] == c[:-1]))
        if len(back):
            i = int(back[0])
            self._out_of_order(int(c[i]), int(t[i + 1]), int(t[i]))
        first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        last = np.r_[first[1:] - 1, len(c) - 1]
        for f, l in zip(first.tolist(), last.tolist()):
            k = int(c[f])
            prev = self.cpu_last.get(k)
            if prev is not None and int(t[f]) < prev:
                self._out_of_order(k, int(t[f]), prev)
            self.cpu_last[k] = int(t[l])

    def _out_of_order(self, cpu: int, t: int, before: int) -> None:
        raise TraceFileError(self.path, f"timestamps go back on CPU {cpu} ({t} ns after "
                                        f"{before} ns): the trace is out of order")

    def _names(self, cols: dict) -> None:
        """ftrace prints "<...>" when its comm cache missed: use the thread's known name."""
        comm, tid = cols["comm"], cols["tid"]
        named = (comm != self.unknown_comm) & (tid >= 0)
        for t, c in _last_pairs(tid[named], comm[named]):
            self.tid_comm[t] = c
        unknown = np.flatnonzero(comm == self.unknown_comm)
        for i in unknown.tolist():
            known = self.tid_comm.get(int(tid[i]))
            if known is not None:
                comm[i] = known

    def _vms(self, cols: dict, base: int) -> None:
        """Give each row its VM: the source's TGID, the thread's, --tgid-map, or (vms.py)."""
        tid, tgid = cols["tid"], cols["tgid"]
        src = tgid >= 0
        if src.any():
            for t, g in _last_pairs(tid[src], tgid[src]):
                if t >= 0:
                    self.tid_tgid[t] = g
                    self.source_vms.add(g)
        todo = np.flatnonzero(~src & (tid >= 0))
        if len(todo):
            lookup = {}
            for t in np.unique(tid[todo]).tolist():
                lookup[t] = self._vm_of(t, base)
            keys = np.fromiter(lookup.keys(), dtype=np.int64)
            vals = np.fromiter(lookup.values(), dtype=np.int64)
            srt = np.argsort(keys)
            tgid[todo] = vals[srt][np.searchsorted(keys[srt], tid[todo])]
        rest = np.flatnonzero(~src & (tid < 0))
        if len(rest):
            vms = set(self.source_vms)
            if not vms and not self.tgid_map:
                self.assumed_single = True
                vms = {SINGLE_VM_TGID}
            tgid[rest] = vms.pop() if len(vms) == 1 else -1

    def _vm_of(self, tid: int, base: int) -> int:
        known = self.tid_tgid.get(tid)
        if known is not None:
            return known
        if self.tgid_map:
            if tid in self.tgid_map:
                self.used_map = True
                g = self.tgid_map[tid]
            elif tid in set(self.tgid_map.values()):
                self.used_map = True
                g = tid
            else:
                g = None
            if g is not None:
                self.tid_tgid[tid] = g
                self.source_vms.add(g)
                return g
        vms = set(self.source_vms)
        if not vms:
            if self.tgid_map:
                vms_mapped = set(self.tgid_map.values())
                if len(vms_mapped) == 1:
                    g = vms_mapped.pop()
                    self.joined_only_vm.add(tid)
                    self.tid_tgid[tid] = g
                    return g
                self._unassignable(tid, sorted(vms_mapped))
            self.assumed_single = True
            self.tid_tgid[tid] = SINGLE_VM_TGID
            return SINGLE_VM_TGID
        if len(vms) == 1:
            g = next(iter(vms))
            self.joined_only_vm.add(tid)
            self.tid_tgid[tid] = g
            return g
        self._unassignable(tid, sorted(vms))
        return -1

    def _unassignable(self, tid: int, vms: list[int]) -> None:
        name = self.comm_names[self.tid_comm[tid]] if tid in self.tid_comm else "?"
        raise TraceFileError(self.path, f"threads {tid} ({name}) belong to none of the VMs "
                                        f"{', '.join(map(str, vms))}; name them with "
                                        "--tgid-map TID=TGID")

    # ------------------------------------------------------------------ time order

    def _release(self, cols: Optional[dict], final: bool) -> Optional[tuple[dict, np.ndarray]]:
        """Merge a block's rows by time with the rows held back; return what is safe to emit."""
        parts = [p for p in (self.held, cols) if p is not None]
        self.held = None
        if not parts:
            return None
        if len(parts) == 2:
            merged = {k: np.concatenate([parts[0][k], parts[1][k]]) for k in parts[1]}
        else:
            merged = parts[0]
        ts = merged["ts"]
        if len(ts) > 1 and (ts[1:] < ts[:-1]).any():
            order = np.argsort(ts, kind="stable")
            merged = {k: v[order] for k, v in merged.items()}
            ts = merged["ts"]
        if not final and cols is not None and len(ts):
            # Every CPU of this block will only print later times; another CPU might not.
            cpus = np.unique(cols["cpu"])
            watermark = min(self.cpu_last.get(int(c), 0) for c in cpus.tolist())
            cut = int(np.searchsorted(ts, watermark, side="right"))
            if len(ts) - cut <= len(ts) // 2 and cut < len(ts):
                self.held = {k: v[cut:] for k, v in merged.items()}
                merged = {k: v[:cut] for k, v in merged.items()}
        if not len(merged["ts"]):
            return None
        return self._columns(merged)

    def _columns(self, rows: dict) -> tuple[dict, np.ndarray]:
        n = len(rows["ts"])
        if not self.rows_out and self.meta is not None:
            self.meta.start_time_ns = int(rows["ts"][0])
        self.rows_out += n
        self.max_ts = max(self.max_ts, int(rows["ts"][-1]))
        out = {}
        for name in COLUMN_NAMES:
            if name == "comm":
                continue
            if name in rows:
                out[name] = rows[name]
            else:
                out[name] = np.full(n, COLUMN_BY_NAME[name].missing, dtype=_DTYPE[name])
        kind = out["kind"]
        sp = _SP[kind]
        if sp.any():
            self.sp_without_gfn += int(np.count_nonzero(sp & (out["gfn"] == -1)))
        self.kvmmmu_rows += int(np.count_nonzero(_KVMMMU[kind]))
        return out, rows["comm"]

    def _end_of_input(self) -> None:
        self._flush_wrap()
        if self.pending_lost:
            end = self.max_ts
            if self.held is not None and len(self.held["ts"]):
                end = max(end, int(self.held["ts"][-1]))
            n = len(self.pending_lost)
            lost = {name: np.full(n, -1 if _ROW_DTYPE[name].kind == "i" else 0,
                                  dtype=_ROW_DTYPE[name])
                    for name in D.ROW_FIELDS if name != "key"}
            lost["ts"][:] = end
            lost["cpu"][:] = list(self.pending_lost)
            lost["kind"][:] = int(Kind.LOST)
            lost["comm"][:] = self._comm_id("")
            lost["value"][:] = list(self.pending_lost.values())
            vms = set(self.tid_tgid.values())
            lost["tgid"][:] = vms.pop() if len(vms) == 1 else -1
            self.pending_lost = {}
            self.held = lost if self.held is None else {
                k: np.concatenate([self.held[k], lost[k]]) for k in lost}
        if self.skips.last_line and self.skips.last_line == self.last_nonblank \
                and L.looks_like_event(self.skips.last_text) \
                and not any("partial last line" in w for w in self.warnings):
            self.warnings.append(f"skipped the partial last line {self.last_nonblank} "
                                 "(capture cut off?)")

    # ------------------------------------------------------------------ metadata

    def _finish_meta(self) -> None:
        meta = self.meta
        assert meta is not None
        notes = list(self.warnings)
        if self.events_seen == 0 and self.skips.total and self.rows_out == 0:
            raise TraceFileError(self.path, "not a recognised trace: no line decoded ("
                                 + self.skips.describe() + ")")
        if self.rows_out == 0 and not self.ignored:
            notes.append("the trace holds no events")
        if self.assumed_single:
            meta.vm_assignment = "single-vm-assumed"
            threads = sum(1 for g in self.tid_tgid.values() if g == SINGLE_VM_TGID)
            which = f"all {threads} threads are" if threads else "all events are"
            notes.append(f"the source has no TGID and no --tgid-map was given: {which} "
                         f"assumed to belong to one VM (tgid {SINGLE_VM_TGID})")
        elif self.used_map:
            meta.vm_assignment = "tgid-map"
        if self.joined_only_vm:
            tids = sorted(self.joined_only_vm)
            shown = ", ".join(f"{t} ({self.comm_names[self.tid_comm[t]] if t in self.tid_comm else '?'})"
                              for t in tids[:8])
            more = f" and {len(tids) - 8} more" if len(tids) > 8 else ""
            vm = self.tid_tgid[tids[0]]
            notes.append(f"threads {shown}{more} have no TGID: assigned to the only VM, tgid {vm}")
        self._lost_notes(meta, notes)
        if self.ignored:
            total = sum(self.ignored.values())
            kinds = ", ".join(f"{k} ({n})" for k, n in sorted(self.ignored.items()))
            notes.append(f"ignored {total} events of kinds outside the model: {kinds}")
        if self.skips.total:
            note = self.skips.describe()
            if self.skips.decisive:
                note += (f"; {self.skips.decisive} of them are model events (e.g. line "
                         f"{self.skips.decisive_examples[0]}) whose loss could change the verdict")
            notes.append(note)
        if self.sp_without_gfn:
            notes.append(f"{self.sp_without_gfn} kvmmmu page events were printed by "
                         "libtraceevent's kvm plugin, which omits the gfn (gfn = -1); "
                         "`trace-cmd report -R` prints the raw fields")
        if self.counter_clock:
            notes.append("timestamps are bare counter values (a counter trace clock such as "
                         "x86-tsc), not nanoseconds")
            meta.clock = "counter"
        meta.kernel_release = self.kernel_release
        meta.probes = sorted(self.decoder.probes)
        meta.notes = notes

    def _lost_notes(self, meta: TraceMeta, notes: list[str]) -> None:
        marked = sum(self.lost_per_cpu.values())
        meta.lost_per_cpu = {str(c): int(n) for c, n in sorted(self.lost_per_cpu.items())}
        meta.lost_events = max(marked, self.header_lost)
        if self.header_lost:
            notes.append(f"the ftrace header counts {self.header_lost} events written but no "
                         "longer in the buffer (overwritten: the oldest events are missing)")
        if marked or self.lost_unknown:
            parts = [f"{marked} lost events"] if marked else []
            if self.lost_unknown:
                parts.append(f"{self.lost_unknown} losses of unknown size (value -1)")
            notes.append(f"the tracer reported {' and '.join(parts)}; LOST rows mark where")

    @property
    def skipped_lines(self) -> dict:
        return self.skips.to_dict()

    def doubts(self) -> list[str]:
        """Why no window of this trace can be trusted (empty: nothing known against it)."""
        out = []
        if self.skips.decisive:
            first = self.skips.decisive_examples[0]
            out.append(f"{self.skips.decisive} lines of model events could not be decoded and "
                       f"were skipped (first at line {first}): they could have changed a window")
        if self.invlpg_exits and not self.kvmmmu_rows:
            out.append(f"the trace shows shadow paging ({self.invlpg_exits} INVLPG exits, which "
                       "only the shadow MMU intercepts) but carries no kvmmmu event, so unsync "
                       "shadow pages and their syncs cannot be seen (enable the kvmmmu events)")
        return out


# ----------------------------------------------------------------------------- whole file

def import_text(path: str | os.PathLike, tgid_map: dict[int, int] | None = None,
                strict: bool = False) -> Trace:
    """Read a whole text trace into a Trace (small files, tests, ``convert``)."""
    reader = TextReader(path, tgid_map=tgid_map, strict=strict)
    reader.open()
    parts = []
    comms = []
    for cols, comm in reader.chunks():
        parts.append(cols)
        comms.append(comm._indices)
    names = np.array(reader.comm_names, dtype=object)
    if parts:
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        data["comm"] = names[np.concatenate(comms)]
    else:
        data = {c.name: np.empty(0, dtype=object if c.dtype == "str" else c.dtype) for c in COLUMNS}
    events = pd.DataFrame(data, columns=list(COLUMN_NAMES))
    meta = reader.meta
    assert meta is not None
    meta.start_time_ns = int(events["ts"].iloc[0]) if len(events) else 0
    trace = Trace(events=events, meta=meta, warnings=list(meta.notes))
    trace.skipped_lines = reader.skipped_lines          # type: ignore[attr-defined]
    return trace
