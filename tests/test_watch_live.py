"""`kvmtrace watch` live: windows of a real guest show up while it runs, SIGINT finishes
cleanly, and -o writes the same trace.  Skips, saying why, without root, BCC, headers,
tracefs or /dev/kvm."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from live_support import kvm_unavailable_reason

from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.exercise import ExerciseConfig, run_exercise

REASON = kvm_unavailable_reason()


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _next_json(lines: queue.Queue, deadline: float, want=lambda d: True) -> dict:
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "watch ended early"
        d = json.loads(line)
        if want(d):
            return d


@pytest.mark.live
@pytest.mark.skipif(REASON is not None, reason=f"live watch: {REASON}")
def test_watch_shows_a_running_guest_and_writes_its_trace(tmp_path: Path) -> None:
    out_file = tmp_path / "watched.parquet"
    # The guest runs in this (pytest) process: watch only it, so other guests on the host
    # cannot change the counts.
    proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", "watch", "--json",
                             "--interval", "0.2", "-p", str(os.getpid()), "-o", str(out_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        first = _next_json(lines, time.monotonic() + 60)      # attached: summaries flow
        assert first["type"] == "summary" and first["windows"]["total"] == 0
        result = run_exercise(ExerciseConfig(vcpus=3, rounds=40, pages=2, seed=3))
        n = result.flushes_requested
        live = _next_json(lines, time.monotonic() + 20,
                          lambda d: d["type"] == "summary" and d["windows"]["total"] >= n)
        assert "final" not in live, "windows were reported while watch was still running"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)                      # stdout is read by the thread
        err = proc.stderr.read()
    assert proc.returncode == 0, err
    tail = []
    while (line := lines.get(timeout=10)) is not None:
        tail.append(json.loads(line))
    final = tail[-1]
    assert final["type"] == "summary" and final["final"] is True
    assert final["verdict"] == "ok"
    w = final["windows"]
    assert result.stale_reads == []
    assert w["meaningful"] >= n == 80 and w["violation"] == 0
    (vm,) = final["vms"]
    assert vm["tgid"] == os.getpid() and vm["shadow_paging"] is True
    assert sorted(r["vcpu"] for r in vm["vcpus"]) == [1, 2]     # the two readers
    # -o: the trace written at the same time holds the same windows.
    offline = analyze_path(out_file)
    assert offline.windows == w
