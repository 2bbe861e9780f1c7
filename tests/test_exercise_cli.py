"""`kvmtrace exercise`: exit codes, summary and --json keys."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import kvmtrace.exercise as exercise_pkg
from kvmtrace.cli import cli
from kvmtrace.commands import exercise as cmd
from kvmtrace.exercise import ExerciseResult, StaleRead

from live_support import exercise_unavailable_reason, shadow_paging

REASON = exercise_unavailable_reason()


def live(fn):
    """Runs the built-in guest on /dev/kvm."""
    return pytest.mark.live(pytest.mark.skipif(REASON is not None, reason=f"exercise: {REASON}")(fn))

JSON_KEYS = {"vcpus", "rounds", "pages", "seed", "flush", "flushes_requested", "reads",
             "stale_reads", "stale_read_count", "pid", "vcpu_tids", "backend", "tdp", "exposed",
             "duration_s", "functional_failure", "verdict", "exit_code", "stale_reads_truncated"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmtrace", "exercise", *args],
                          capture_output=True, text=True, timeout=120)


def fake_result(flush: bool, stale: int, exposed: bool = True) -> ExerciseResult:
    reads = [StaleRead(1, r, 0x600000, 0x6B76000000000401, 0x6B76000000000400, True)
             for r in range(stale)]
    return ExerciseResult(vcpus=2, rounds=5, pages=1, seed=1, flush=flush,
                          flushes_requested=5 if flush else 0, reads=10, stale_reads=reads,
                          pid=1, vcpu_tids={0: 2, 1: 3}, backend="vmx", tdp=not exposed,
                          exposed=exposed, duration_s=0.01)


@pytest.mark.parametrize("flush,stale,code,word", [
    (True, 0, 0, "PASS"),
    (True, 2, 1, "FAIL"),                      # functional failure
    (False, 3, 0, "control ok"),               # the control saw staleness
    (False, 0, 3, "control saw NO stale"),     # the control proved nothing
])
def test_exit_codes_from_results(monkeypatch, flush, stale, code, word):
    monkeypatch.setattr(cmd, "run_exercise", lambda config: fake_result(flush, stale))
    res = CliRunner().invoke(cli, ["exercise"] + ([] if flush else ["--no-flush"]))
    assert res.exit_code == code, res.output
    assert word in res.output
    if flush and stale:
        assert "stale read: vCPU 1 round 0 address 0x600000 expected 0x6b76000000000401" in res.output


def test_tdp_host_says_not_exposed(monkeypatch):
    monkeypatch.setattr(cmd, "run_exercise", lambda config: fake_result(True, 0, exposed=False))
    res = CliRunner().invoke(cli, ["exercise"])
    assert res.exit_code == 0
    assert "TDP on: not exposed" in res.output


def test_cannot_run_exits_4_with_one_line(monkeypatch):
    monkeypatch.setattr(exercise_pkg, "KVM_DEVICE", "/nonexistent/kvm")
    res = CliRunner().invoke(cli, ["exercise"])
    assert res.exit_code == 4
    lines = [l for l in res.output.splitlines() if l]
    assert lines == ["kvmtrace: exercise: cannot run here: /nonexistent/kvm does not exist "
                     "(load kvm_intel, kvm_amd or kvm_pvm)"]


@pytest.mark.parametrize("args", [["--vcpus", "1"], ["--rounds", "0"], ["--pages", "0"],
                                  ["--vcpus", "64", "--pages", "64"]])
def test_bad_arguments_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


@live
def test_cli_pass_and_summary():
    proc = run_cli("--rounds", "40")
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout
    for label in ("rounds             40", "flushes requested  40", "stale reads        0",
                  "time", "host"):
        assert label in proc.stdout
    assert proc.stderr == ""                   # no progress bar when stderr is not a terminal


@live
def test_cli_json_keys_and_values():
    proc = run_cli("--rounds", "25", "--pages", "2", "--vcpus", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert JSON_KEYS <= set(out)
    assert out["verdict"] == "pass" and out["exit_code"] == 0
    assert out["rounds"] == 25 and out["flushes_requested"] == 50 and out["stale_read_count"] == 0
    assert set(out["vcpu_tids"]) == {"0", "1", "2"}


@live
def test_cli_control_json():
    proc = run_cli("--no-flush", "--rounds", "25", "--json")
    out = json.loads(proc.stdout)
    assert out["exposed"] is shadow_paging()
    assert proc.returncode == 0
    if not shadow_paging():
        return                     # EPT/NPT: the control need not see stale values
    assert out["verdict"] == "control-ok" and out["stale_read_count"] > 0
    assert out["flushes_requested"] == 0 and not out["functional_failure"]
    s = out["stale_reads"][0]
    assert set(s) == {"vcpu", "round", "address", "expected", "observed", "after_flush"}


def _holds_kvm(pid: int) -> bool:
    import os
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/kvm":
                return True
        except OSError:
            pass
    return False


@live
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_finishes_cleanly(sig):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", "exercise", "--rounds", "100000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Signal it once it runs the guest (holds /dev/kvm open), not while Python still
    # imports: on a loaded host that can take longer than any fixed sleep.
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not _holds_kvm(proc.pid):
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None                 # still running rounds
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted" in err
