"""Import ftrace, trace-cmd report and perf script text into the normalised event table.

The dialect is chosen by content (``lines.sniff``).  The file is streamed line by line and
rows are packed into typed column chunks as they come, so memory holds columns, not lines.
Per line: one precompiled line regex, a dispatch dict from event name to payload decoder
(``payloads``), kprobes recognised by the function they print.  Events that are not part of
the model (kvm_fpu, kvm_mmu_spte_requested, ...) are counted and reported, never an error.

Errors (``TraceFileError``, one line naming the file): nothing recognisable in the first
lines; a line in the middle that does not parse, named by its number.  A cut-off last line
(no newline, or unparsable) is skipped with a warning.  Lost-event markers become LOST rows
(value = count, -1 when the tracer did not say) on their CPU at the time of that CPU's next
event.  Rows are sorted stably by timestamp: ftrace text interleaves per-CPU buffers, so
timestamps are only ordered within a CPU.
"""
from __future__ import annotations

import gzip
import io
import itertools
from collections import Counter
from pathlib import Path
from typing import IO, Iterable

import numpy as np
import pandas as pd

from kvmtrace.functions import perf_probe_function
from kvmtrace.schema import COLUMN_BY_NAME, COLUMN_NAMES, COLUMNS, Kind, TraceMeta
from kvmtrace.sources.native import GZIP_MAGIC, Trace, TraceFileError
from kvmtrace.sources.text import lines as L
from kvmtrace.sources.text.payloads import TRACEPOINTS, function_payload, kprobe_function, perf_probe_args
from kvmtrace.sources.text.vms import VmAssignmentError, assign

SNIFF_LINES = 200
CHUNK_ROWS = 1 << 16
UNKNOWN_COMM = "<...>"

# Row layout while parsing: (ts, cpu, tid, comm) + payloads.Payload.
_ROW_FIELDS = ("ts", "cpu", "tid", "comm", "kind", "vcpu", "gfn", "role", "level",
               "root_count", "unsync", "created", "need_flush", "value")
_DTYPE = {c.name: c.dtype for c in COLUMNS}

_IGNORED = object()        # decoder verdict: an event outside the model


def _no_fallback(body: str) -> None:
    return None


def _ignored_name(event: str, colon: str) -> str:
    """How an ignored line is counted: its event, or the function tracer's "func <-parent"."""
    return event if colon or event.startswith("<") else "(function tracer)"


def _open_text(path: Path) -> IO[str]:
    with open(path, "rb") as f:
        magic = f.read(2)
    raw: IO[bytes] = gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")


def _ends_with_newline(path: Path) -> bool | None:
    """Whether a plain file's last byte is a newline (None: compressed, not cheap to know)."""
    with open(path, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            return None
        f.seek(-1, io.SEEK_END)
        return f.read(1) == b"\n"


def _looks_binary(head: list[str]) -> bool:
    text = "".join(head)
    return "\x00" in text or text.count("\ufffd") > 8


class ColumnOverflow(ValueError):
    """A decoded number does not fit its schema column."""


class _Columns:
    """Rows gathered as tuples, packed into typed numpy chunks every CHUNK_ROWS rows."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.chunks: list[list[np.ndarray]] = []

    def pack(self) -> None:
        if not self.rows:
            return
        cols = list(zip(*self.rows))
        packed = []
        for name, values in zip(_ROW_FIELDS, cols):
            dtype = object if name == "comm" else _DTYPE[name]
            try:
                packed.append(np.array(values, dtype=dtype))
            except OverflowError:
                raise ColumnOverflow(f"a {name} value does not fit the {dtype} column "
                                     f"(range {min(values)}..{max(values)})") from None
        self.chunks.append(packed)
        self.rows = []

    def arrays(self) -> dict[str, np.ndarray]:
        self.pack()
        out = {}
        for i, name in enumerate(_ROW_FIELDS):
            parts = [chunk[i] for chunk in self.chunks]
            if parts:
                out[name] = np.concatenate(parts)
            else:
                out[name] = np.empty(0, dtype=object if name == "comm" else _DTYPE[name])
        return out


class _Importer:
    def __init__(self, path: Path, dialect: str, tgid_map: dict[int, int] | None):
        self.path = path
        self.dialect = dialect
        self.tgid_map = tgid_map
        self.cols = _Columns()
        self.ignored: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.tid_tgid: dict[int, int] = {}
        self.tid_comm: dict[int, str] = {}
        self.comms: dict[str, str] = {}
        self.pending_lost: dict[int, int] = {}
        self.lost_per_cpu: Counter[int] = Counter()
        self.lost_unknown = 0
        self.header_lost = 0
        self.kernel_release = ""
        self.probes: set[str] = set()
        self.plugin_sp_without_gfn = 0
        self.resolved: dict[str, object] = {}
        self.fallbacks: dict[str, object] = {}
        self.counter_clock = False

    # ------------------------------------------------------------------ dispatch

    def _resolve(self, event: str):
        """The decoder of an event name (or _IGNORED), cached with its raw-field fallback."""
        decoder, fallback = self._pair(event) if event else (_IGNORED, _no_fallback)
        self.resolved[event] = decoder
        self.fallbacks[event] = fallback
        return decoder

    def _pair(self, event: str):
        if self.dialect == L.PERF:
            group, _, name = event.rpartition(":")
            probe = perf_probe_function(name)
            if probe is not None:
                func, is_return = probe

                def perf_probe(body: str, func=func, is_return=is_return):
                    parsed = perf_probe_args(body)
                    if parsed is None:
                        return None
                    payload = function_payload(func, is_return, parsed[1])
                    return _IGNORED if payload is None else payload
                self.probes.add(f"{'kretprobe' if is_return else 'kprobe'}:{func}")
                return perf_probe, _no_fallback
            pair = TRACEPOINTS.get(name) if group in ("kvm", "kvmmmu") else None
            return pair if pair is not None else (_IGNORED, _no_fallback)
        pair = TRACEPOINTS.get(event)
        if pair is not None:
            return pair
        return self._ftrace_kprobe, _no_fallback

    def _ftrace_kprobe(self, body: str):
        """Any other ftrace event name: a kprobe if its body names a function we use."""
        if not body.startswith("("):
            return _IGNORED
        probe = kprobe_function(body)
        if probe is None:
            return _IGNORED
        func, is_return, args = probe
        payload = function_payload(func, is_return, args)
        if payload is None:
            return _IGNORED
        self.probes.add(f"{'kretprobe' if is_return else 'kprobe'}:{func}")
        return payload

    # ------------------------------------------------------------------ main loop

    def run(self, lines: Iterable[str], ends_with_newline: bool | None = None) -> None:
        """Parse every line; the hot loop keeps its state in locals for speed.

        ``ends_with_newline``: whether the input's last byte is known to be a newline, which
        spares the per-line check for a cut-off last line.
        """
        dialect = self.dialect
        ftrace, perf = dialect == L.FTRACE, dialect == L.PERF
        match = {L.FTRACE: L.FTRACE_LINE, L.TRACE_CMD: L.TRACE_CMD_LINE,
                 L.PERF: L.PERF_LINE}[dialect].match
        check_tail = not ends_with_newline
        rows = self.cols.rows
        append = rows.append
        decoders = self.resolved
        fallbacks = self.fallbacks
        comms = self.comms
        tid_tgid = self.tid_tgid
        pending_lost = self.pending_lost
        ignored = self.ignored
        chunk = CHUNK_ROWS
        pending_error: tuple[int, str, str] | None = None
        for lineno, line in enumerate(lines, 1):
            if pending_error is not None and line.strip():
                self._fail(*pending_error)
            if check_tail and line[-1] != "\n":
                if line.strip():
                    self._partial_last(lineno, line)
                break
            m = match(line)
            if m is None:
                problem = self._other_line(line)
                if problem:
                    pending_error = (lineno, line, problem)
                continue
            comm, pid, extra, cpu, _, ts, event, colon, body = m.groups()
            decode = decoders.get(event) if colon else _IGNORED
            if decode is None:
                decode = self._resolve(event)
            if decode is _IGNORED and not pending_lost:
                ignored[_ignored_name(event, colon)] += 1
                continue
            tid = int(pid)
            if ftrace:
                if extra is not None and extra[0] != "-":       # the (TGID) column
                    tid_tgid[tid] = int(extra)
            elif perf:
                if extra is not None:                          # pid/tid
                    tid_tgid[int(extra)] = tid
                    tid = int(extra)
            elif cpu is None:                                  # trace-cmd -l: cpu+flags
                cpu = extra
            # "secs.usecs" / "secs.nsecs" to integer ns without floats.
            if ts[-7:-6] == ".":
                t = int(ts.replace(".", "", 1)) * 1000
            elif ts[-10:-9] == ".":
                t = int(ts.replace(".", "", 1))
            else:
                try:
                    t = self._odd_timestamp(ts)
                except ValueError as exc:
                    pending_error = (lineno, line, str(exc))
                    continue
            c = int(cpu)
            if pending_lost and c in pending_lost:
                self._lost_row(t, c)
            if decode is _IGNORED:
                ignored[_ignored_name(event, colon)] += 1
                continue
            out = decode(body)
            if out is None:
                out = fallbacks[event](body.replace("\x00", ""))
                if out is None:
                    pending_error = (lineno, line, f"cannot decode the {event} payload")
                    continue
            if out is _IGNORED:
                ignored[event] += 1
                continue
            name = comms.get(comm)
            if name is None:
                name = comms[comm] = comm
            if type(out) is list:
                for payload in out:
                    append((t, c, tid, name) + payload)
            else:
                append((t, c, tid, name) + out)
            if len(rows) >= chunk:
                self.cols.pack()
                rows = self.cols.rows
                append = rows.append
        if pending_error is not None:
            self._partial_last(*pending_error[:2], problem=pending_error[2])

    def _odd_timestamp(self, ts: str) -> int:
        """Timestamps other than secs.usecs / secs.nsecs (counter clocks, other precisions)."""
        if "." not in ts:
            self.counter_clock = True
        return L.ts_ns(ts)

    def _lost_row(self, t: int, cpu: int) -> None:
        self.cols.rows.append((t, cpu, -1, "", int(Kind.LOST), -1, -1, -1, -1, -1, -1, -1, -1,
                               self.pending_lost.pop(cpu)))

    def _fail(self, lineno: int, line: str, problem: str) -> None:
        raise TraceFileError(self.path, f"line {lineno}: {problem}: {line.rstrip()[:100]!r}")

    def _partial_last(self, lineno: int, line: str, problem: str = "no newline") -> None:
        self.warnings.append(f"skipped the partial last line {lineno} ({problem}; "
                             f"capture cut off?): {line.rstrip()[:80]!r}")

    def _other_line(self, line: str) -> str:
        """Handle a line that is not an event line; return a problem text if it is bad."""
        stripped = line.strip()
        if not stripped:
            return ""
        if stripped.startswith("#"):
            self._header(stripped)
            return ""
        lost = (L.TRACE_CMD_LOST if self.dialect == L.TRACE_CMD else L.FTRACE_LOST).match(stripped)
        if lost is not None:
            cpu = int(lost.group("cpu"))
            n = int(lost.group("n")) if lost.group("n") else -1
            if n >= 0:
                self.lost_per_cpu[cpu] += n
            else:
                self.lost_unknown += 1
            before = self.pending_lost.get(cpu, 0)
            self.pending_lost[cpu] = -1 if n < 0 or before < 0 else before + n
            return ""
        if L.SKIP_LINE.match(line):
            return ""
        return f"not a {self.dialect} event line"

    def _header(self, line: str) -> None:
        m = L.ENTRIES.match(line)
        if m is not None:
            in_buffer, written = int(m.group(1)), int(m.group(2))
            self.header_lost += max(0, written - in_buffer)
            return
        if self.dialect == L.PERF:
            kv = L.PERF_HEADER_KV.match(line)
            if kv is not None and kv.group(1) == "os release":
                self.kernel_release = kv.group(2)

    # ------------------------------------------------------------------ result

    def finish(self) -> Trace:
        if not self.cols.rows and not self.cols.chunks and not self.ignored:
            self.warnings.append("the trace holds no events")
        if self.pending_lost:
            # Losses after a CPU's last event: mark them at the end of the trace.
            self.cols.pack()
            end = max((int(ch[0].max()) for ch in self.cols.chunks), default=0)
            for cpu in list(self.pending_lost):
                self._lost_row(end, cpu)
        cols = self.cols.arrays()
        notes = list(self.warnings)
        self._thread_names(cols)
        sp = np.isin(cols["kind"], list(_SP_KIND_CODES))
        self.plugin_sp_without_gfn = int(np.count_nonzero(sp & (cols["gfn"] == -1)))
        meta = TraceMeta(source="imported", source_format=self.dialect,
                         source_path=str(self.path), kernel_release=self.kernel_release)
        self._fix_comms(cols)
        tgid = self._tgids(cols, meta, notes)
        self._check_cpu_order(cols)
        order = np.argsort(cols["ts"], kind="stable")
        n = len(order)
        data = {name: (tgid if name == "tgid" else cols[name])[order] if name == "tgid" or name in cols
                else np.full(n, COLUMN_BY_NAME[name].missing, dtype=_DTYPE[name])
                for name in _DTYPE}       # text carries no exact-state columns
        # Every array already has its schema dtype (see _Columns), so this frame conforms
        # (tests check conform(events).equals(events)); building it once saves a copy.
        events = pd.DataFrame(data, columns=list(COLUMN_NAMES))
        self._lost(meta, notes)
        if self.ignored:
            total = sum(self.ignored.values())
            kinds = ", ".join(f"{k} ({n})" for k, n in sorted(self.ignored.items()))
            notes.append(f"ignored {total} events of kinds outside the model: {kinds}")
        if self.plugin_sp_without_gfn:
            notes.append(f"{self.plugin_sp_without_gfn} kvmmmu page events were printed by "
                         "libtraceevent's kvm plugin, which omits the gfn (gfn = -1); "
                         "`trace-cmd report -R` prints the raw fields")
        if self.counter_clock:
            notes.append("timestamps are bare counter values (a counter trace clock such as "
                         "x86-tsc), not nanoseconds")
            meta.clock = "counter"
        meta.start_time_ns = int(events["ts"].iloc[0]) if len(events) else 0
        meta.probes = sorted(self.probes)
        meta.notes = notes
        return Trace(events=events, meta=meta, warnings=list(notes))

    def _check_cpu_order(self, cols: dict[str, np.ndarray]) -> None:
        """Refuse a trace whose timestamps go back on one CPU.

        Each CPU's ring buffer is written in time order (kernel/trace/ring_buffer.c; perf's
        per-CPU mmap likewise), so only an edited, spliced or corrupt file goes back there.
        Sorting would not repair it: the order of events printed with the same timestamp (a
        microsecond clock prints many) is then unknown, and a flush read after the guest
        run it preceded would pass for a synced one.  Across CPUs the file may interleave
        freely; merging by timestamp keeps each CPU's order."""
        ts, cpu = cols["ts"], cols["cpu"]
        if len(ts) < 2 or not (ts[1:] < ts[:-1]).any():
            return
        by_cpu = np.argsort(cpu, kind="stable")
        t, c = ts[by_cpu], cpu[by_cpu]
        back = np.flatnonzero((t[1:] < t[:-1]) & (c[1:] == c[:-1]))
        if len(back):
            i = int(back[0])
            raise TraceFileError(self.path, f"timestamps go back on CPU {int(c[i])} "
                                            f"({int(t[i + 1])} ns after {int(t[i])} ns): "
                                            "the trace is out of order")

    def _thread_names(self, cols: dict[str, np.ndarray]) -> None:
        """tid -> its last known comm (not "<...>")."""
        named = (cols["comm"] != UNKNOWN_COMM) & (cols["tid"] >= 0)
        pairs = pd.DataFrame({"tid": cols["tid"][named], "comm": cols["comm"][named]})
        last = pairs.drop_duplicates("tid", keep="last")
        self.tid_comm.update(zip(last["tid"].tolist(), last["comm"].tolist()))

    def _fix_comms(self, cols: dict[str, np.ndarray]) -> None:
        """ftrace prints "<...>" when its comm cache missed; use the thread's known name."""
        comm = cols["comm"]
        unknown = np.flatnonzero(comm == UNKNOWN_COMM)
        for i in unknown:
            known = self.tid_comm.get(int(cols["tid"][i]))
            if known is not None:
                comm[i] = known

    def _tgids(self, cols: dict[str, np.ndarray], meta: TraceMeta, notes: list[str]) -> np.ndarray:
        tid = cols["tid"]
        threads = set(np.unique(tid[tid >= 0]).tolist())
        try:
            result = assign(threads, self.tid_tgid, self.tgid_map, self.tid_comm)
        except VmAssignmentError as exc:
            raise TraceFileError(self.path, str(exc)) from None
        meta.vm_assignment = result.how
        notes.extend(result.notes)
        if not result.tgid_of:
            return np.full(tid.size, -1, dtype=np.int32)
        vms = set(result.tgid_of.values())
        # LOST rows (tid -1) belong to whichever VM the CPU was running: with one VM, that VM.
        lost_tgid = vms.pop() if len(vms) == 1 else -1
        keys = np.fromiter(result.tgid_of.keys(), dtype=np.int64)
        vals = np.fromiter(result.tgid_of.values(), dtype=np.int64)
        sorter = np.argsort(keys)
        keys, vals = keys[sorter], vals[sorter]
        pos = np.clip(np.searchsorted(keys, tid), 0, keys.size - 1)
        return np.where(tid >= 0, np.where(keys[pos] == tid, vals[pos], -1),
                        lost_tgid).astype(np.int32)

    def _lost(self, meta: TraceMeta, notes: list[str]) -> None:
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


_SP_KIND_CODES = frozenset(int(k) for k in (Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP))


def import_text(path: Path, tgid_map: dict[int, int] | None = None) -> Trace:
    """Read an ftrace / trace-cmd report / perf script text file into a Trace."""
    path = Path(path)
    try:
        with _open_text(path) as f:
            head = list(itertools.islice(f, SNIFF_LINES))
            dialect = L.sniff(head)
            if dialect is None:
                what = "binary data" if _looks_binary(head) else \
                    f"no ftrace, trace-cmd report or perf script line in the first {len(head)} lines"
                raise TraceFileError(path, f"not a recognised trace: {what}")
            importer = _Importer(path, dialect, tgid_map)
            importer.run(itertools.chain(head, f), _ends_with_newline(path))
        return importer.finish()
    except ColumnOverflow as exc:
        raise TraceFileError(path, str(exc)) from None
    except (OSError, EOFError) as exc:
        raise TraceFileError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
