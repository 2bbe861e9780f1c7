"""Live: kvmtrace's own loader (sources/live/loader.py) and the program cache.

The first recorder compiles with BCC and stores the object; the next loads the object with
bpf(2) and records the same events without importing BCC; the kernel's verifier words come
back when it refuses a program."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kvmtrace.sources.live import Recorder, bpfsys
from kvmtrace.sources.live.bpfobject import MapSpec, ProgramObject, ProgSpec, load
from kvmtrace.sources.live.progcache import ENV
from kvmtrace.sources.live.selftest import GETPPID

from live_support import bpf_unavailable_reason

REASON = bpf_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"live BPF: {REASON}")]
ROOT = Path(__file__).resolve().parent.parent


def record(n: int) -> tuple[pd.DataFrame, list[str]]:
    chunks: list[pd.DataFrame] = []
    rec = Recorder(None, tgids=(os.getpid(),), tracepoints=[GETPPID], on_chunk=chunks.append)
    report = rec.attach()
    try:
        getppid = os.getppid
        for _ in range(n):
            getppid()
        rec.run(duration=0.05)
    finally:
        rec.close()
    return pd.concat(chunks, ignore_index=True), report.notes


def test_the_second_recorder_loads_the_cached_object(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    first, notes1 = record(3000)
    assert any(n.startswith("program: compiled by BCC; cached in") for n in notes1), notes1
    assert len(list((tmp_path / "cache").glob("*.bpfobj"))) == 1
    second, notes2 = record(3000)
    assert any(n.startswith("program: compiled before, loaded from the cache") for n in notes2), notes2
    for events in (first, second):
        assert len(events) == 3000 and set(events["tgid"]) == {os.getpid()}
        assert set(events["value"]) == {110}                 # __NR_getppid on x86-64


def test_a_cache_hit_does_not_import_bcc(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{ENV: str(tmp_path / "cache")})
    script = (
        "import os, sys, json\n"
        "from kvmtrace.sources.live import Recorder\n"
        "from kvmtrace.sources.live.selftest import GETPPID\n"
        "rec = Recorder(None, tgids=(os.getpid(),), tracepoints=[GETPPID])\n"
        "report = rec.attach(); rec.close()\n"
        "print(json.dumps({'bcc': 'bcc' in sys.modules, 'notes': report.notes}))\n")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True, text=True, timeout=120).stdout)
            for _ in range(2)]
    assert runs[0]["bcc"] is True                            # compiled
    assert runs[1]["bcc"] is False, runs[1]["notes"]         # loaded from the cache


def test_a_damaged_cache_entry_is_recompiled(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    record(10)
    entry = next((tmp_path / "cache").glob("*.bpfobj"))
    entry.write_bytes(entry.read_bytes()[:-40] + b"x" * 40)
    events, notes = record(500)
    assert len(events) == 500
    assert any("ignored: checksum mismatch" in n for n in notes), notes
    assert any(n.startswith("program: compiled by BCC; cached in") for n in notes), notes


def test_the_verifier_refusal_is_reported():
    # r0 is never set before exit: every kernel's verifier refuses it ("R0 !read_ok").
    obj = ProgramObject((MapSpec("kt_x", 2, 4, 8, 1),),
                        (ProgSpec("kt_bad", bpfsys.PROG_TYPE_RAW_TRACEPOINT,
                                  bytes([0x95, 0, 0, 0, 0, 0, 0, 0]), ()),))
    loaded = load(obj)
    try:
        with pytest.raises(bpfsys.BpfError) as err:
            loaded.load_prog("kt_bad")
        assert "R0" in err.value.log
    finally:
        loaded.close()
