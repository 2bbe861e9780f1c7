"""The live recorder: compile and attach the probes, drain the ring buffer in bulk, write
schema chunks through the crash-safe TraceWriter and/or hand them to a callback.

Usable as a library, also from a background thread::

    rec = Recorder("out.parquet", tgids=(1234,), on_chunk=feed)
    report = rec.attach()              # raises LiveUnavailable with what to install
    rec.run(duration=30, stop=event)   # returns when the time is up or event is set
    meta = rec.close()

Ordering.  The ring buffer holds records in reservation order, which may differ from
timestamp order by the few hundred nanoseconds between a CPU's ``bpf_ktime_get_ns()`` and
its reservation.  Rows are sorted by timestamp and held back for ``holdback_ns`` before
they are written, so every file is in timestamp order; a record later than that (never
seen in practice) is clamped to the last written time and counted in the notes.
"""
from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from kvmtrace import __version__, phases
from kvmtrace.host import FormatError, HostFacts, gather
from kvmtrace.host import exactlayout
from kvmtrace.host.btf import load_kernel
from kvmtrace.schema import KIND_NAMES, TraceMeta
from kvmtrace.sources.live.background import BackgroundWriter
from kvmtrace.sources.nativefile import (PART_BATCH_AGE_S, PART_BATCH_ROWS, PART_MAX_AGE_S,
                                         PART_MIN_ROWS, OutputLock, TraceFileError, native_format)
from kvmtrace.sources.validate import Validator
from kvmtrace.sources.live import capabilities
from kvmtrace.sources.live.bccload import headers, privileges
from kvmtrace.sources.live.loader import CompileFailed, LoadFailed, Program, compile_and_load
from kvmtrace.sources.live.errors import INSTALL_HINT, LiveUnavailable
from kvmtrace.sources.live.plan import MODES, ProbePlan, build, prog_types
from kvmtrace.sources.live.program import (NKINDS, ProgramConfig, exact_fn, generate, resolve,
                                           tgid_filter_value)
from kvmtrace.sources.live.records import SLOT_DTYPE, Columns, lost_columns, to_columns
from kvmtrace.sources.live.ringbuf import RingbufReader, page_size
from kvmtrace.sources.live.tracepoints import TracepointProbe

if TYPE_CHECKING:        # pandas and pyarrow only where a frame or a file is asked for
    import pandas as pd
    from kvmtrace.sources.native import TraceWriter

# Records per drain and per chunk at most.  Keeping each buffer well under glibc's
# largest mmap threshold (32 MiB) lets malloc reuse memory instead of faulting in fresh
# pages for every chunk, which costs more than the copy itself.
CHUNK_RECORDS = 1 << 17
CLOCK = "monotonic"     # bpf_ktime_get_ns() is CLOCK_MONOTONIC; so is time.monotonic_ns()


@dataclass
class AttachReport:
    attached: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skipped_lines(self) -> list[str]:
        """One line per reason: most probes are skipped for the same one (no kprobes)."""
        by_reason: dict[str, list[str]] = {}
        for name, why in self.skipped:
            by_reason.setdefault(why, []).append(name)
        return [f"not attached: {', '.join(names)}: {why}" for why, names in by_reason.items()]

    def lines(self) -> list[str]:
        out = [f"attached {len(self.attached)} probes: " + ", ".join(self.attached)]
        return out + self.skipped_lines() + self.notes


@dataclass
class RecorderStats:
    elapsed: float = 0.0
    events: int = 0          # rows written / handed on
    lost: int = 0            # records the ring buffer had no room for
    bytes: int = 0           # output file size so far

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        return (f"{self.elapsed:7.1f} s  {self.events:>10} events  {self.rate:>10.0f} ev/s  "
                f"lost {self.lost}  {self.bytes / 1e6:.1f} MB")


def _validate_tgids(tgids: Sequence[int]) -> tuple[int, ...]:
    out = []
    for t in tgids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 < int(t) < 2**22:
            raise ValueError(f"TGID {t!r} is not a process id")
        out.append(int(t))
    return tuple(sorted(set(out)))


class Recorder:
    """One recording: plan and attach the probes, then run() until stopped, then close().

    ``on_chunk`` receives every chunk of schema rows, in timestamp order, from the thread
    that calls run() (about every ``flush_interval`` seconds, ``holdback_ns`` behind), as a
    DataFrame; ``on_columns`` receives the same chunks as records.Columns (no pandas).
    ``close()`` finishes the file; call it after run() returned (stop it with ``stop``).
    """

    def __init__(self, output: str | os.PathLike | None = None, tgids: Sequence[int] = (),
                 probes: str = "auto",
                 on_chunk: Callable[[pd.DataFrame], None] | None = None, *,
                 on_columns: Callable[[Columns], None] | None = None,
                 ringbuf_pages: int = 8192, evidence_budget: int = 4,
                 flush_interval: float = 0.1, holdback_ns: int = 20_000_000,
                 tracepoints: Sequence[TracepointProbe] | None = None,
                 root: str | os.PathLike = "/", raw_tracepoints: bool = True):
        """tracepoints: replace the KVM tracepoint set (benchmarks); function probes off.
        raw_tracepoints: read tracepoints as raw tracepoints where BTF allows (rawtp.py);
        False attaches every one as a perf event (tests compare the two)."""
        self.output = None if output is None else Path(output)
        if self.output is not None:
            native_format(self.output)          # reject unknown suffixes before attaching
            # The writer's pyarrow now (~0.4 s), not between attaching and the first drain.
            import kvmtrace.sources.native  # noqa: F401
        self.tgids = _validate_tgids(tgids)
        if probes not in MODES:
            raise ValueError(f"probes must be one of {', '.join(MODES)}, not {probes!r}")
        self.mode = probes
        self.on_chunk = on_chunk
        self.on_columns = on_columns
        self.config = ProgramConfig(self.tgids, ringbuf_pages, evidence_budget)
        self.config.validate()
        self.flush_interval = flush_interval
        self.batch_records = 4096
        self.batch_pause = 0.002
        self.holdback_ns = holdback_ns
        self.custom_tracepoints = list(tracepoints) if tracepoints is not None else None
        self.raw_tracepoints = raw_tracepoints
        phases.mark("plan")
        self.facts: HostFacts = gather(root)
        self.stats = RecorderStats()
        self.meta: TraceMeta | None = None
        self._plan: ProbePlan | None = None
        self._btf = None                     # the kernel's BTF (raw tracepoints, exact mode)
        self._btf_problem = "no BTF"
        self._prog: Program | None = None
        self._reader: RingbufReader | None = None
        self._writer: TraceWriter | None = None
        self._background: BackgroundWriter | None = None     # feeds _writer from a thread
        self._pending: list[np.ndarray] = []
        self._last_ts = 0
        self._first_ts = 0
        self._clamped = 0
        self._lost_seen: dict[int, int] = {}
        self._comms: dict[int, str] = {}
        self._started = 0.0
        self._closed = False
        self._lock = threading.Lock()
        self._validator = Validator(str(output) if output is not None else "live")
        self._output_lock: OutputLock | None = None
        self._out: list[Columns] = []          # validated chunks not yet in the file
        self._out_rows = 0
        self._out_since = 0.0

    # ------------------------------------------------------------------ planning

    def plan(self) -> ProbePlan:
        if self._plan is None:
            if self.facts.tracefs is None:
                raise LiveUnavailable("tracefs is not mounted (tracepoint formats are read from it)",
                                      "mount -t tracefs nodev /sys/kernel/tracing")
            problem = self.facts.tracefs.access_problem()
            if problem:
                raise LiveUnavailable(f"cannot read tracefs at {self.facts.tracefs.path} ({problem})",
                                      "run as root (sudo kvmtrace ...)")
            if self.custom_tracepoints is not None:
                self._plan = self._custom_plan()
            else:
                kp = capabilities.kprobes(self.facts)
                filt = self.facts.tracefs.filter_functions()
                layout = self._load_btf()
                self._plan = build(self.facts, self.mode, kp, filt, layout, self._btf, self._btf_problem)
                if not self.raw_tracepoints:
                    self._plan = self._plan.without_raw("not asked for (raw_tracepoints=False)")
                if self.mode == "exact" and self._plan.exact is None:
                    raise LiveUnavailable(f"the exact mode is off here: {self._plan.exact_off}",
                                          "use --probes auto or tracepoints (see kvmtrace doctor)")
            if self._plan.empty:
                why = "; ".join(f"{n}: {w}" for n, w in self._plan.skipped[:4])
                fix = ("load KVM (modprobe kvm_intel, kvm_amd or kvm_pvm): its kvm and kvmmmu "
                       "tracepoints appear in tracefs with the module")
                if self.mode != "auto":
                    fix = f"use --probes auto, or {fix}"
                raise LiveUnavailable(f"nothing to attach in mode {self.mode!r} ({why})", fix)
        return self._plan

    def _load_btf(self) -> "exactlayout.ExactLayout | None":
        """Load the kernel's BTF once: offsets of the exact mode (modes auto and exact) and the
        argument lists of raw tracepoints.  Returns the exact layout (None = not asked)."""
        if self.mode == "functions":
            return None
        btf, detail = load_kernel(self.facts.root)
        self._btf, self._btf_problem = btf, f"no BTF ({detail})"
        if self.mode not in ("auto", "exact"):
            return None
        if btf is None:
            return exactlayout.ExactLayout("kernel BTF", problems=[detail])
        return exactlayout.add_pvm_module(exactlayout.from_btf(btf, detail), self.facts.root)

    def _custom_plan(self) -> ProbePlan:
        plan = ProbePlan("custom")
        assert self.facts.tracefs is not None and self.custom_tracepoints is not None
        for tp in self.custom_tracepoints:
            try:
                r = resolve(tp, self.facts.tracefs.format(tp.system, tp.event))
            except FormatError as exc:
                r = str(exc)
            if isinstance(r, str):
                plan.skipped.append((f"tracepoint:{tp.name}", r))
            else:
                plan.tracepoints.append(r)
        return plan

    def program_text(self) -> str:
        plan = self.plan()
        return generate(self.config, plan.tracepoints, plan.functions, plan.exact)

    # ------------------------------------------------------------------ attaching

    def attach(self) -> AttachReport:
        """Compile, load and attach; open the output.  Raises LiveUnavailable."""
        ok, why = privileges()
        if not ok:
            raise LiveUnavailable(f"live tracing needs root with CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): {why}",
                                  "run as root (sudo kvmtrace ...); in a container or systemd unit, "
                                  "grant CAP_BPF CAP_PERFMON CAP_SYS_ADMIN")
        if self.output is not None and self._output_lock is None:
            # Before compiling: a second recorder on the same output refuses at once.
            self._output_lock = OutputLock.acquire(self.output)
        try:
            return self._attach()
        except BaseException:
            if self._writer is None and self._output_lock is not None:
                self._output_lock.release()
                self._output_lock = None
            raise

    def _attach(self) -> AttachReport:
        plan = self.plan()
        hdr, hdr_detail = headers(self.facts.kernel_release, self.facts.root)
        if hdr is None:
            raise LiveUnavailable(f"no kernel headers for BCC ({hdr_detail})", INSTALL_HINT)
        phases.mark("compile")
        self._prog, plan, notes = self._load(plan, hdr, hdr_detail)
        notes.append(f"headers: {hdr_detail}")
        phases.mark("attach")
        try:
            report = self._attach_plan(plan, notes)
        except _RawRefused as exc:
            # This kernel will not open raw tracepoints: every tracepoint as a perf event.
            self._prog.close()
            self._prog = None
            self._plan = plan.without_raw(f"the kernel refused one: {exc}")
            phases.mark("compile")
            self._prog, plan, notes = self._load(self._plan, hdr, hdr_detail)
            notes.append(f"headers: {hdr_detail}")
            phases.mark("attach")
            report = self._attach_plan(plan, notes)
        try:
            if not report.attached:
                raise LiveUnavailable("no probe could be attached: " +
                                      "; ".join(f"{n}: {w}" for n, w in report.skipped[:4]),
                                      "see kvmtrace doctor")
            self._reader = RingbufReader.open(self._prog.maps.fds["kt_events"],
                                              self.config.ringbuf_pages * page_size(), SLOT_DTYPE)
            self.meta = self._initial_meta(report)
            if self.output is not None:
                from kvmtrace.sources.native import TraceWriter     # pyarrow: only to write
                self._writer = TraceWriter(self.output, self.meta, lock=self._output_lock)
                self._background = BackgroundWriter(self._writer)
        except BaseException:
            # Failed or interrupted (Ctrl-C) half way: nothing was recorded, so detach what
            # is attached, give the memory back and leave no output file behind.
            self._abandon()
            raise
        return report

    def _attach_plan(self, plan: ProbePlan, notes: list[str]) -> AttachReport:
        assert self._prog is not None
        report = AttachReport(skipped=list(plan.skipped),
                              notes=notes + [plan.exact_line(), plan.transport_line()])
        report.attached.extend(plan.raw_names)      # attached by _load()
        try:
            self._attach_all(plan, report)
        except _RawRefused:
            raise
        except BaseException:
            self._abandon()
            raise
        return report

    def _load(self, plan: ProbePlan, hdr: Path, hdr_detail: str) -> tuple[Program, ProbePlan, list[str]]:
        """The program of ``plan`` compiled (or from the cache), its maps created, the TGID
        filter set and the exact mode's raw tracepoints attached.  In mode auto, an exact
        mode the compiler or the kernel refuses falls back to the tracepoints."""
        text = generate(self.config, plan.tracepoints, plan.functions, plan.exact)
        assert self.facts.tracefs is not None
        try:
            prog, notes = compile_and_load(text, prog_types(plan), hdr, self.facts.tracefs.path,
                                           bool(plan.functions), self.facts.root)
        except (CompileFailed, LoadFailed) as exc:
            return self._load_failed(plan, exc, hdr, hdr_detail)
        try:
            if self.config.tgids:
                # Before the first probe is attached: until then every event would be skipped.
                prog.maps.put("kt_tgid_filter", 0, tgid_filter_value(self.config.tgids))
            for event in plan.exact_events:
                prog.attach_raw(event, exact_fn(event))
        except (LoadFailed, OSError) as exc:
            prog.close()
            return self._load_failed(plan, exc, hdr, hdr_detail)
        except BaseException:
            prog.close()
            raise
        return prog, plan, notes + [prog.how]

    def _load_failed(self, plan: ProbePlan, exc: BaseException, hdr: Path, hdr_detail: str):
        problem = str(exc)
        if plan.exact is not None and self.mode == "auto":
            assert self.facts.tracefs is not None
            kp = capabilities.kprobes(self.facts)
            fallback = build(self.facts, self.mode, kp, self.facts.tracefs.filter_functions(), None,
                             self._btf, self._btf_problem)
            if plan.raw_off:
                fallback = fallback.without_raw(plan.raw_off)
            fallback.exact_off = f"raw tracepoints refused: {problem}"
            self._plan = fallback
            return self._load(fallback, hdr, hdr_detail)
        if getattr(exc, "eperm", False) or "Operation not permitted" in problem or "EPERM" in problem:
            raise LiveUnavailable(f"the kernel refused to load the probe program: {problem}",
                                  "grant CAP_BPF CAP_PERFMON (or CAP_SYS_ADMIN), and check "
                                  "kernel.unprivileged_bpf_disabled and lockdown") from None
        if isinstance(exc, CompileFailed):
            raise LiveUnavailable(f"BCC could not compile the probe program: {problem}",
                                  f"check the kernel headers ({hdr_detail}); {INSTALL_HINT}") from None
        raise LiveUnavailable(f"the kernel refused the probe program: {problem}",
                              "see kvmtrace doctor") from None

    def _abandon(self) -> None:
        self._closed = True
        try:
            if self._writer is not None:         # interrupted right after creating it
                if self._background is not None:
                    self._background.close()
                self._writer.close(self.meta)
                self._writer.path.unlink(missing_ok=True)
        finally:
            if self._reader is not None:
                self._reader.close()
            if self._prog is not None:
                self._prog.close()
                self._prog = None

    def _attach_all(self, plan: ProbePlan, report: AttachReport) -> None:
        assert self._prog is not None
        for rt in plan.tracepoints:
            name = rt.probe_name
            try:
                if rt.raw:
                    self._prog.attach_raw(rt.probe.event, rt.fn_name)
                else:
                    self._prog.attach_tracepoint(rt.probe.system, rt.probe.event, rt.fn_name)
            except LoadFailed as exc:
                if rt.raw:
                    raise _RawRefused(f"{name}: {exc}") from None
                report.skipped.append((name, str(exc)))
                continue
            report.attached.append(name)
        for fp in plan.functions:
            try:
                self._prog.attach_kprobe(fp.symbol, fp.fn_name, fp.is_return)
            except LoadFailed as exc:
                report.skipped.append((fp.name, str(exc)))
                continue
            report.attached.append(fp.name)

    def _initial_meta(self, report: AttachReport) -> TraceMeta:
        notes = report.skipped_lines()
        if self._plan is not None:
            notes.append(self._plan.exact_line())
            notes.append(self._plan.transport_line())
        if self.tgids:
            notes.append("filtered to TGID(s) " + ", ".join(map(str, self.tgids)))
        notes.append(f"guest-run evidence recorded only inside flush windows (up to "
                     f"{self.config.evidence_budget} per window); the rest counted in the kernel")
        return TraceMeta(source="recorded", source_format="bcc",
                         source_path=str(self.output or ""),
                         kernel_release=self.facts.kernel_release,
                         kvm_backend=self.facts.kvm_backend, tdp=self.facts.tdp, clock=CLOCK,
                         start_wall=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         tool_version=__version__, vm_assignment="tgid",
                         probes=list(report.attached), notes=notes)

    # ------------------------------------------------------------------ running

    def run(self, duration: float | None = None, stop: threading.Event | None = None,
            progress: Callable[[RecorderStats], None] | None = None,
            progress_interval: float = 0.5) -> RecorderStats:
        """Record until duration seconds pass or stop is set, then flush everything."""
        if self._reader is None:
            raise RuntimeError("attach() first")
        self._started = time.monotonic()
        deadline = None if duration is None else self._started + duration
        last_flush = last_progress = self._started
        while True:
            now = time.monotonic()
            if (stop is not None and stop.is_set()) or (deadline is not None and now >= deadline):
                break
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - now))
            self._reader.wait(timeout)
            if self._drain() < self.batch_records:
                # Few records: let more accumulate rather than paying the per-drain cost
                # on every wakeup (the ring holds far more than this pause produces).
                time.sleep(self.batch_pause)
            now = time.monotonic()
            if now - last_flush >= self.flush_interval or self._pending_records() >= CHUNK_RECORDS:
                self._flush(final=False)
                last_flush = now
            if progress is not None and now - last_progress >= progress_interval:
                progress(self._update_stats())
                last_progress = now
        self.collect()
        stats = self._update_stats()
        if progress is not None:
            progress(stats)
        return stats

    def wake(self) -> None:
        """Make run() look at its stop event now, not after its wait times out (call it
        after setting stop, from another thread, before close())."""
        with self._lock:
            if self._reader is not None and not self._closed:
                self._reader.wake()

    def collect(self) -> int:
        """Drain the ring buffer completely now and hand every record on (writer,
        on_chunk), without waiting for the hold-back; returns how many records."""
        if self._reader is None:
            raise RuntimeError("attach() first")
        before = self.stats.events
        while True:
            got = self._drain()
            if not got and not self._pending:
                break
            self._flush(final=True)
        self._flush(final=True)       # lost-record markers, if any
        return self.stats.events - before

    def _update_stats(self) -> RecorderStats:
        self.stats.elapsed = time.monotonic() - self._started if self._started else 0.0
        self.stats.bytes = self._writer.bytes_written if self._writer else 0
        return self.stats

    def _pending_records(self) -> int:
        return sum(len(p) for p in self._pending) // SLOT_DTYPE.itemsize

    def _drain(self) -> int:
        """Move committed records into the pending list (raw bytes), up to one chunk's
        worth pending; how many were moved."""
        assert self._reader is not None
        total = 0
        while self._pending_records() < CHUNK_RECORDS:
            got = self._reader.drain_raw(CHUNK_RECORDS)
            n = len(got) // SLOT_DTYPE.itemsize
            if not n:
                break
            self._pending.append(got)
            total += n
            if n < self.batch_records:
                break                  # caught up; the rest next time
        return total

    def _read_lost(self) -> dict[int, int]:
        """Per-CPU increase of the kernel's lost-record counters since the last read."""
        values = self._prog.maps.per_cpu_u64("kt_lost", 0)
        delta = {}
        for cpu, v in enumerate(values):
            v = int(v)
            d = v - self._lost_seen.get(cpu, 0)
            if d > 0:
                delta[cpu] = d
                self._lost_seen[cpu] = v
        return delta

    def _flush(self, final: bool) -> None:
        now_ns = time.monotonic_ns()
        pieces, order = self._take_ready(None if final else now_ns - self.holdback_ns)
        chunks = []
        if pieces:
            first = int(pieces[0]["ts"][order[0] if order is not None else 0])
            if first < self._last_ts:
                for slots in pieces:
                    late = slots["ts"] < np.uint64(self._last_ts)
                    self._clamped += int(late.sum())
                    slots["ts"][late] = np.uint64(self._last_ts)
            chunk = to_columns(pieces, self._comm, order)
            chunks.append(chunk)
            if not self._first_ts:
                self._first_ts = int(chunk.arrays["ts"][0])
            self._last_ts = int(chunk.arrays["ts"][-1])
        lost = self._read_lost()
        if lost:
            lost_ts = self._last_ts if final else max(self._last_ts, now_ns - self.holdback_ns)
            chunks.append(lost_columns(lost_ts, lost))
            self._last_ts = lost_ts
            self.stats.lost += sum(lost.values())
        for chunk in chunks:
            self._drain()
            self._emit(chunk)
        self._write_out(force=final)

    def _take_ready(self, watermark: int | None) -> tuple[list[np.ndarray], np.ndarray | None]:
        """(pieces, order): the pending slots with ts <= watermark (all when None), as
        pieces that are consecutive in the ring, and the order that sorts their rows by ts
        (None when they already are in order; then they are not even joined: one copy of
        every record less); the rest stay pending."""
        pending = [p.view(SLOT_DTYPE) for p in self._pending if len(p)]
        if not pending:
            self._pending = []
            return [], None
        ts = np.concatenate([p["ts"] for p in pending]) if len(pending) > 1 else pending[0]["ts"]
        order = None if bool(np.all(ts[1:] >= ts[:-1])) else np.argsort(ts, kind="stable")
        sorted_ts = ts if order is None else ts[order]
        cut = len(ts) if watermark is None else int(np.searchsorted(sorted_ts, np.uint64(max(watermark, 0)), side="right"))
        if cut == 0:                 # everything pending is still inside the hold-back
            self._pending = [p.view(np.uint8) for p in pending]
            return [], None
        if order is not None:
            raw = np.concatenate(pending) if len(pending) > 1 else pending[0]
            if cut == len(raw):
                self._pending = []
                return [raw], order
            self._pending = [raw[order[cut:]].view(np.uint8)]
            return [raw], order[:cut]
        ready: list[np.ndarray] = []
        rest: list[np.ndarray] = []
        left = cut
        for piece in pending:
            take = min(left, len(piece))
            if take:
                ready.append(piece[:take])
            if take < len(piece):
                rest.append(piece[take:].view(np.uint8))
            left -= take
        self._pending = rest
        return ready, None

    def _emit(self, chunk: Columns) -> None:
        # A record with impossible fields (a gfn above 2**63 read as a negative int64 ...)
        # is written and handed on as an INVALID marker, never as data.
        chunk.arrays = self._validator.check_cols(chunk.arrays)
        if self._writer is not None:
            if not self._out:
                self._out_since = time.monotonic()
            self._out.append(chunk)
            self._out_rows += len(chunk)
            self._write_out(force=False)
        self.stats.events += len(chunk)
        if self.on_columns is not None:
            self.on_columns(chunk)
        if self.on_chunk is not None:
            self.on_chunk(chunk.frame())

    def _write_out(self, force: bool) -> None:
        """Write the gathered frames as one chunk of the file (native.PART_* say when): one
        chunk per 0.1 s drain would take 2-4x the final size and make the final file one
        row group per drain."""
        if not self._out or self._writer is None:
            return
        age = time.monotonic() - self._out_since
        rows = self._out_rows
        if not (force or rows >= PART_BATCH_ROWS or age >= PART_MAX_AGE_S
                or (age >= PART_BATCH_AGE_S and rows >= PART_MIN_ROWS)):
            return
        chunks, self._out, self._out_rows = self._out, [], 0
        if self._background is None:
            self._background = BackgroundWriter(self._writer)
        try:
            self._background.put(chunks)         # joined, encoded and written in the writer thread
            if force:
                self._background.flush()         # on disk before the caller goes on
        except OSError as exc:
            raise self._write_failed(exc) from None

    def _comm(self, tid: int) -> str:
        name = self._comms.get(tid)
        if name is None:
            name = self._comm_from_map(tid) or _comm_from_proc(tid)
            if name:
                self._comms[tid] = name
        return name or ""

    def _comm_from_map(self, tid: int) -> str:
        value = self._prog.maps.get("kt_comm", tid)
        return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""

    # ------------------------------------------------------------------ closing

    def counted(self) -> dict[str, int]:
        """Events the kernel counted but did not record, by kind name."""
        if self._prog is None:
            return {}
        out = {}
        for k, name in KIND_NAMES.items():
            if k >= NKINDS:
                continue
            total = sum(self._prog.maps.per_cpu_u64("kt_counted", k))
            if total:
                out[name] = total
        return out

    def _exact_notes(self) -> list[str]:
        """What the exact mode learnt or had to cut (kt_exact_stat in exact.c)."""
        if self._plan is None or self._plan.exact is None or self._prog is None:
            return []
        maps = self._prog.maps
        base = maps.u64("kt_exact_stat", 0)
        cut = maps.u64("kt_exact_stat", 1)
        out = [("exact: direct-map base learnt from an SPTE, root slots resolved to their SPs"
                if base else "exact: direct-map base never learnt (no SP link seen): "
                             "root slots not identified (gfn -1, unsync -1)")]
        if cut:
            out.append(f"exact: {cut} parent lists longer than the probe follows were cut")
        if not self._plan.exact.pvm_hypercall_problem():
            seen, flushes = (maps.u64("kt_pvm_hc_stat", i) for i in (0, 1))
            out.append(f"exact: msr:write_msr fired {seen} times on vCPU threads, "
                       f"{flushes} of them after a PVM flush hypercall exit (int 0x1b)")
        return out

    def close(self) -> TraceMeta | None:
        """Finish the file (final metadata), detach everything.  Idempotent."""
        with self._lock:
            if self._closed:
                return self.meta
            self._closed = True
            try:
                if self.meta is not None and self._prog is not None:
                    self._finish_meta()
                if self._writer is not None:
                    self._finish_writing()
                    try:
                        self._writer.close(self.meta)
                    except OSError as exc:
                        raise self._write_failed(exc) from None
            finally:
                if self._reader is not None:
                    self._reader.close()
                if self._prog is not None:
                    phases.mark("detach")
                    self._prog.close()
                    self._prog = None
            return self.meta

    def _finish_writing(self) -> None:
        """Write what is gathered and stop the writer thread."""
        self._write_out(force=True)
        if self._background is not None:
            try:
                self._background.close()
            except OSError as exc:
                raise self._write_failed(exc) from None

    def _write_failed(self, exc: OSError) -> TraceFileError:
        assert self._writer is not None
        return TraceFileError(self._writer.path,
                              f"cannot write: {exc.strerror or exc}; the chunks written before "
                              f"are readable from {self._writer.part}")

    def _finish_meta(self) -> None:
        assert self.meta is not None
        self.meta.start_time_ns = self._first_ts
        self.meta.lost_events = sum(self._lost_seen.values())
        self.meta.lost_per_cpu = {str(c): v for c, v in sorted(self._lost_seen.items()) if v}
        self.meta.notes += self._exact_notes()
        counted = self.counted()
        if counted:
            self.meta.notes.append("counted in the kernel, not recorded: " +
                                   ", ".join(f"{k} {v}" for k, v in sorted(counted.items())))
        self._validator.annotate(self.meta)
        if self._clamped:
            self.meta.notes.append(f"{self._clamped} records arrived later than the "
                                   f"{self.holdback_ns // 1_000_000} ms hold-back; their time was clamped")

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RawRefused(Exception):
    """The kernel refused to open a raw tracepoint (the message says which and why)."""


def _comm_from_proc(tid: int) -> str:
    try:
        return Path(f"/proc/{tid}/comm").read_text().strip()
    except OSError:
        return ""
