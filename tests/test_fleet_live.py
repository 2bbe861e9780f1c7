"""Live: `kvmtrace record --dataset DIR --host NAME` while the built-in guest runs adds one
part for the guest's VM, which `kvmtrace fleet` judges ok with every flush as a window."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fleet_support import cli
from live_support import kvm_unavailable_reason

REASON = kvm_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"live KVM+BPF: {REASON}")]


def test_record_dataset_then_fleet(tmp_path):
    from kvmtrace.exercise import ExerciseConfig, run_exercise
    dataset = tmp_path / "fleet"
    err = tmp_path / "record.err"
    proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", "record", "--dataset", str(dataset),
                             "--host", "live-1", "-p", str(os.getpid())],
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    deadline = time.monotonic() + 120
    while "attached" not in err.read_text():
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, "record did not attach within 120 s"
        time.sleep(0.1)
    result = run_exercise(ExerciseConfig(vcpus=2, rounds=20, pages=2, seed=3, flush=True))
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, err.read_text()
    parts = list(dataset.glob(f"host=live-1/vm={os.getpid()}/part-*.parquet"))
    assert len(parts) == 1, err.read_text()
    assert not [p for p in dataset.rglob(".*")], "the hidden recording was left behind"
    code, out, _ = cli("fleet", dataset, "--json", "-j", "1")
    data = json.loads(out)
    [row] = data["rows"]
    assert (row["host"], row["vm"]) == ("live-1", os.getpid())
    assert row["verdict"] == "ok" and code == 0
    assert row["windows_total"] >= result.flushes_requested == 20
    assert row["kernel"] == os.uname().release
