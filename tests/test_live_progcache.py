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

from live_support import bpf_unavailable_reason, kvm_tracing_unavailable_reason

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


def test_bccs_own_loader_still_records(tmp_path, monkeypatch):
    # The path of programs with kprobes (none here: this kernel has no kprobes) keeps BCC
    # as the loader; forced for a tracepoint program, it must record the same events.
    from kvmtrace.sources.live import loader, recorder
    real = loader.compile_and_load
    monkeypatch.setattr(recorder, "compile_and_load",
                        lambda text, types, hdr, tracefs, with_kprobes, root: real(
                            text, types, hdr, tracefs, True, root))
    events, notes = record(2000)
    assert "program: compiled and loaded by BCC (kprobes)" in notes, notes
    assert len(events) == 2000 and set(events["tgid"]) == {os.getpid()}
    assert events["comm"].iloc[0] != ""                      # kt_comm read through its fd


def _refusing(monkeypatch, prefix: str) -> None:
    from kvmtrace.sources.live import loader
    real = loader.OwnProgram.attach_raw

    def attach_raw(self, event: str, fn: str) -> None:
        if fn.startswith(prefix):
            raise loader.LoadFailed(f"loading raw tracepoint {event}: Invalid argument (test)")
        real(self, event, fn)
    monkeypatch.setattr(loader.OwnProgram, "attach_raw", attach_raw)


EXACT_REASON = kvm_tracing_unavailable_reason() or (
    None if Path("/sys/kernel/btf/vmlinux").exists() else "no kernel BTF (/sys/kernel/btf/vmlinux)")


@pytest.mark.skipif(EXACT_REASON is not None, reason=f"{EXACT_REASON}")
def test_a_refused_exact_program_falls_back_to_the_tracepoints(monkeypatch):
    _refusing(monkeypatch, "kt_exact__")
    rec = Recorder(None, tgids=(os.getpid(),))
    assert rec.plan().exact is not None, rec.plan().exact_off      # on where KVM and BTF are
    report = rec.attach()
    rec.close()
    assert rec.plan().exact is None
    assert any(n.startswith("exact mode: off (raw tracepoints refused: loading raw tracepoint")
               for n in report.notes), report.notes
    assert not any(a.startswith("raw_tracepoint:kvm_mmu_get_page") for a in report.attached)
    # the SP events come from their tracepoints again (the exact mode had taken them over)
    assert "tracepoint:kvmmmu:kvm_mmu_sync_page" in report.attached, report.attached


def test_a_refused_raw_tracepoint_puts_every_tracepoint_on_perf(monkeypatch):
    _refusing(monkeypatch, "kt_raw__")
    rec = Recorder(None, tgids=(os.getpid(),), probes="tracepoints")
    report = rec.attach()
    rec.close()
    assert rec.plan().raw_off.startswith("the kernel refused one: ")
    assert report.attached and all(a.startswith("tracepoint:") for a in report.attached)
    assert any(n.startswith("tracepoints: ") and "raw tracepoints off" in n for n in report.notes)


def test_one_cached_program_serves_other_tgids(tmp_path, monkeypatch):
    # The TGIDs live in kt_tgid_filter: a second recorder with another TGID set (the same
    # slot count) loads the same object, and the filter still keeps only its TGIDs.
    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    record(100)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        chunks: list[pd.DataFrame] = []
        rec = Recorder(None, tgids=(child.pid, os.getpid()), tracepoints=[GETPPID],
                       on_chunk=chunks.append)
        report = rec.attach()
        try:
            for _ in range(700):
                os.getppid()
            rec.run(duration=0.05)
        finally:
            rec.close()
    finally:
        child.kill()
        child.wait()
    assert any(n.startswith("program: compiled before, loaded from the cache") for n in report.notes)
    events = pd.concat(chunks, ignore_index=True)
    assert len(events) == 700 and set(events["tgid"]) == {os.getpid()}
    assert len(list((tmp_path / "cache").glob("*.bpfobj"))) == 1
