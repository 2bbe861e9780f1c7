"""Live: `kvmtrace record` as a process — -d, SIGTERM and kill -9 all leave a readable file."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmtrace.sources.live.tracepoints import attached

from kvmtrace.sources.stream import load
from kvmtrace.schema import Kind
from kvmtrace.sources.native import TraceFileError

from live_support import kvm_unavailable_reason

REASON = kvm_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"live KVM+BPF: {REASON}")]


def start_record(tmp_path: Path, out: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "record.err"
    proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", "record", "-o", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    deadline = time.monotonic() + 120
    while "attached" not in err.read_text():
        if proc.poll() is not None:
            pytest.fail(f"record exited {proc.returncode}: {err.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("record did not attach within 120 s")
        time.sleep(0.1)
    return proc, err


def guest_run():
    from kvmtrace.exercise import ExerciseConfig, run_exercise
    return run_exercise(ExerciseConfig(vcpus=2, rounds=10, pages=2, seed=3, flush=True))


def written_flush_requests(out: Path) -> int:
    """Flush requests the running recorder has written to OUT.part so far."""
    try:
        ev = load(out).events                         # NAME reads NAME.part
    except TraceFileError:
        return 0                                      # no chunk yet: Arrow writes nothing before one
    return int(((ev["kind"] == Kind.FLUSH_REQUEST_PV) & (ev["need_flush"] == 1)).sum())


def wait_until_written(out: Path, flushes: int) -> None:
    """Until OUT.part holds every flush request of the run.  The recorder writes about
    every 0.1 s; on a loaded host that can take much longer, so wait for the data rather
    than for a fixed time."""
    deadline = time.monotonic() + 60
    while written_flush_requests(out) < flushes:
        assert time.monotonic() < deadline, "the recorder did not write the run within 60 s"
        time.sleep(0.1)


def test_kill_9_leaves_a_recoverable_file(tmp_path):
    out = tmp_path / "killed.parquet"
    part = Path(str(out) + ".part")
    proc, _ = start_record(tmp_path, out, "-p", str(os.getpid()))
    assert part.exists()
    result = guest_run()
    wait_until_written(out, result.flushes_requested)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and part.exists()
    trace = load(out)                                 # NAME finds NAME.part
    assert trace.recovery is not None
    ev = trace.events
    flushes = ev[(ev["kind"] == Kind.FLUSH_REQUEST_PV) & (ev["need_flush"] == 1)]
    assert len(flushes) == result.flushes_requested
    assert set(ev["tgid"]) == {os.getpid()}
    assert trace.meta.source == "recorded" and trace.meta.kvm_backend


def test_sigterm_finishes_the_file(tmp_path):
    out = tmp_path / "term.parquet"
    proc, err = start_record(tmp_path, out, "-p", str(os.getpid()))
    result = guest_run()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, err.read_text()
    assert out.exists() and not Path(str(out) + ".part").exists()
    trace = load(out)
    assert trace.recovery is None
    ev = trace.events
    assert int(((ev["kind"] == Kind.FLUSH_REQUEST_PV) & (ev["need_flush"] == 1)).sum()) == result.flushes_requested
    assert "wrote" in err.read_text()


def test_duration_stops_by_itself(tmp_path):
    out = tmp_path / "d.jsonl"
    proc, err = start_record(tmp_path, out, "-d", "1", "-p", str(os.getpid()))
    assert proc.wait(timeout=60) == 0, err.read_text()
    trace = load(out)
    assert trace.recovery is None and trace.meta.source_format == "bcc"
    assert attached("kvm:kvm_pv_tlb_flush", trace.meta.probes)


def test_ebpf_prints_the_program():
    proc = subprocess.run([sys.executable, "-m", "kvmtrace", "record", "--ebpf", "-p", "77"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # A raw tracepoint where BTF has its prototype, else a perf-event one; a line says which.
    assert re.search(r"int kt_(raw|tp)__kvm__kvm_pv_tlb_flush\(", proc.stdout)
    assert re.search(r"^/\* tracepoints: \d+ as ", proc.stdout, re.M)
    # The TGIDs go into a map, not the text (one compiled program serves every run).
    assert "#define KT_TGID_SLOTS 4" in proc.stdout
    assert "/* kt_tgid_filter (written before attaching): 77 */" in proc.stdout
    assert "77" not in proc.stdout.split("*/\n", 3)[-1]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl.gz"])
def test_fast_exit_leaves_the_whole_file(tmp_path, suffix):
    """`python -m kvmtrace` ends with os._exit (cli.console): the file it wrote is whole --
    every flush request of the run, the trailer / footer, a gzip stream with its CRC."""
    out = tmp_path / f"whole{suffix}"
    proc, err = start_record(tmp_path, out, "-d", "3", "-p", str(os.getpid()))
    result = guest_run()
    assert proc.wait(timeout=60) == 0, err.read_text()
    assert out.exists() and not Path(str(out) + ".part").exists()
    if suffix == ".jsonl.gz":
        import gzip
        lines = gzip.decompress(out.read_bytes()).decode().splitlines()   # CRC checked
        assert lines[-1].startswith('{"kvmtrace_end"')
    trace = load(out)
    assert trace.recovery is None
    ev = trace.events
    assert int(((ev["kind"] == Kind.FLUSH_REQUEST_PV) & (ev["need_flush"] == 1)).sum()) == result.flushes_requested
