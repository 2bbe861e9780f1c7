"""Live: the recorder's real BPF ring buffer path, driven by a probe this test fires at will
(syscalls:sys_enter_getppid, filtered to this process in the kernel)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pandas as pd
import pytest

from kvmtrace.sources.live import Recorder
from kvmtrace.sources.live.selftest import GETPPID
from kvmtrace.schema import Kind
from kvmtrace.sources.stream import load

from live_support import bpf_unavailable_reason

REASON = bpf_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"live BPF: {REASON}")]


def fire(n: int) -> None:
    getppid = os.getppid
    for _ in range(n):
        getppid()


def test_every_event_arrives_once_in_order(tmp_path):
    chunks: list[pd.DataFrame] = []
    out = tmp_path / "t.parquet"
    rec = Recorder(out, tgids=(os.getpid(),), tracepoints=[GETPPID], on_chunk=chunks.append)
    report = rec.attach()
    assert report.attached == ["tracepoint:syscalls:sys_enter_getppid"]
    stop = threading.Event()
    runner = threading.Thread(target=rec.run, kwargs={"stop": stop})
    runner.start()
    n = 50_000
    try:
        fire(n)
    finally:
        stop.set()
        runner.join()
        meta = rec.close()
    events = pd.concat(chunks, ignore_index=True)
    assert len(events) == n and meta.lost_events == 0
    assert set(events["tgid"]) == {os.getpid()}
    assert set(events["kind"]) == {int(Kind.HYPERCALL)}
    assert set(events["value"]) == {110}                    # __NR_getppid on x86-64
    assert np.all(np.diff(events["ts"].to_numpy()) >= 0)     # one timestamp order across chunks
    assert events["comm"].iloc[0] != ""
    written = load(out)
    assert len(written.events) == n and written.meta.source_format == "bcc"
    assert written.meta.clock == "monotonic" and written.meta.start_time_ns == int(events["ts"].iloc[0])


def test_lost_records_are_counted_and_written_as_markers(tmp_path):
    # A one-page ring buffer (64 slots) that nobody drains while 5000 events fire.
    out = tmp_path / "lost.parquet"
    rec = Recorder(out, tgids=(os.getpid(),), tracepoints=[GETPPID], ringbuf_pages=1)
    rec.attach()
    n = 5000
    fire(n)
    stats = rec.run(duration=0.2)
    meta = rec.close()
    trace = load(out)
    ev = trace.events
    kept = int((ev["kind"] == Kind.HYPERCALL).sum())
    markers = ev[ev["kind"] == Kind.LOST]
    assert 0 < kept <= 64
    assert len(markers) >= 1
    assert int(markers["value"].sum()) == meta.lost_events == stats.lost == n - kept
    assert sum(meta.lost_per_cpu.values()) == meta.lost_events
    assert trace.meta.lost_events == meta.lost_events
    assert np.all(np.diff(ev["ts"].to_numpy()) >= 0)


def test_tgid_filter_is_applied_in_the_kernel(tmp_path):
    # Filter on a process that is not us: our getppid calls must not be recorded.
    other = os.getppid()
    chunks: list[pd.DataFrame] = []
    rec = Recorder(None, tgids=(other,), tracepoints=[GETPPID], on_chunk=chunks.append)
    rec.attach()
    fire(2000)
    rec.run(duration=0.1)
    rec.close()
    events = pd.concat(chunks) if chunks else pd.DataFrame({"tgid": []})
    assert os.getpid() not in set(events["tgid"])
    assert "#define KT_TGID_SLOTS 4" in rec.program_text()
