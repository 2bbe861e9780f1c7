"""Live end to end: the exercise recorded by the live recorder, then analyzed.  Skips,
saying why, where the exercise cannot run or the recorder cannot attach (no BCC, headers,
root)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.cli import cli
from kvmtrace.exercise import ExerciseConfig

from live_support import kvm_unavailable_reason, shadow_paging

REASON = kvm_unavailable_reason()
needs_kvm = pytest.mark.skipif(REASON is not None, reason=f"exercise: {REASON}")


def _has_symbol(name: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            return any(line.split()[2] == name for line in f if len(line.split()) >= 3)
    except OSError:
        return False


def recorded(tmp_path: Path, config: ExerciseConfig):
    from kvmtrace.exercise.recording import run_recorded
    return run_recorded(config, str(tmp_path / "run.parquet"))


@pytest.mark.live
@needs_kvm
@pytest.mark.parametrize("vcpus,rounds,pages", [(2, 60, 3), (4, 300, 2)])
def test_exercise_recorded_then_analyzed_is_ok(tmp_path, vcpus, rounds, pages):
    result, rec = recorded(tmp_path, ExerciseConfig(vcpus=vcpus, rounds=rounds, pages=pages, seed=4))
    assert result.stale_reads == []
    assert rec.lost == 0 and rec.events > 0
    analysis = analyze_path(rec.path)
    assert analysis.verdict == ("ok" if result.exposed else analysis.verdict)
    assert result.exposed is shadow_paging()
    if not shadow_paging():
        return                     # EPT/NPT: nothing to sync, windows are not meaningful
    assert analysis.windows["meaningful"] >= result.flushes_requested == rounds * (vcpus - 1)
    assert analysis.windows["violation"] == 0
    (vm,) = analysis.vms
    assert vm["tgid"] == result.pid
    assert {v["vcpu"] for v in vm["vcpus"]} == set(range(1, vcpus))     # the readers
    if _has_symbol("kvm_mmu_sync_prev_roots"):        # the 5.16+ flush path is built in
        assert analysis.pattern == "sync-in-place"


@pytest.mark.live
@needs_kvm
def test_cli_record_writes_a_trace(tmp_path):
    out = tmp_path / "cli.parquet"
    proc = subprocess.run([sys.executable, "-m", "kvmtrace", "exercise", "--rounds", "30",
                           "--record", str(out), "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["recording"]["path"] == str(out) and info["recording"]["lost"] == 0
    assert out.exists() and info["recording"]["events"] > 0
    assert analyze_path(out).windows["total"] >= info["flushes_requested"]


def test_cli_record_unavailable_exits_4(monkeypatch, tmp_path):
    """A recorder that cannot attach: one line, exit 4, no run."""
    import kvmtrace.exercise.recording as recording
    from kvmtrace.sources.live import LiveUnavailable

    def refuse(config, output, probes="auto", via_info=None):
        raise LiveUnavailable("no kernel headers for BCC", "apt install linux-headers")
    monkeypatch.setattr(recording, "run_recorded", refuse)
    import kvmtrace.exercise as pkg
    monkeypatch.setattr(pkg, "unavailable_reason", lambda device=None: None)
    res = CliRunner().invoke(cli, ["exercise", "--record", str(tmp_path / "x.parquet")])
    assert res.exit_code == 4
    assert [l for l in res.output.splitlines() if l] == [
        "kvmtrace: exercise: cannot record here: no kernel headers for BCC; apt install linux-headers"]
