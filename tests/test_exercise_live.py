"""Live tests: run the exercise guest on this host's /dev/kvm.  They skip, saying why,
where the host cannot run it (no /dev/kvm, not root, no supported backend)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kvmtrace.exercise import ExerciseConfig, run_exercise

from live_support import exercise_unavailable_reason, shadow_paging

REASON = exercise_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"exercise: {REASON}")]


def test_exercise_passes_and_reads_no_stale_value():
    comms: dict[int, str] = {}
    result = None

    def progress(done, total):
        if done == 1:                  # vCPU threads are alive: look at their names
            for v, tid in tids_during_run().items():
                comms[v] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()

    def tids_during_run():
        return {int(t.name.split()[1].split("/")[0]): t.native_id
                for t in threading.enumerate() if t.name.endswith("/KVM")}

    result = run_exercise(ExerciseConfig(vcpus=2, rounds=50, pages=4, seed=3, progress=progress))
    assert result.stale_reads == []
    assert result.rounds == 50
    assert result.flushes_requested == 50                 # one reader, one flush per round
    assert result.reads == 50 * 4 * 2                     # before and after each flush
    assert result.backend in ("vmx", "svm", "pvm")
    assert set(result.vcpu_tids) == {0, 1} and len(set(result.vcpu_tids.values())) == 2
    assert comms == {0: "CPU 0/KVM", 1: "CPU 1/KVM"}     # named like QEMU's vCPU threads
    assert result.duration_s > 0
    if result.backend == "pvm":
        assert result.exposed and result.tdp is False and result.extra["pvm_signature"]


def test_control_reads_stale_values():
    result = run_exercise(ExerciseConfig(vcpus=2, rounds=30, pages=4, seed=3, flush=False))
    assert result.flushes_requested == 0
    assert result.exposed is shadow_paging()
    if not shadow_paging():
        return                     # EPT/NPT: without a shadow MMU the control need not see staleness
    assert result.stale_reads, "the control saw no stale value: the harness proves nothing"
    after = [s for s in result.stale_reads if s.after_flush]
    assert len(after) >= 30                              # most remaps stay invisible
    for s in result.stale_reads:
        # a stale read sees the *other* frame of the same pair, this round's tag
        assert s.observed == s.expected ^ 1, s


def test_four_vcpus_pass():
    result = run_exercise(ExerciseConfig(vcpus=4, rounds=40, pages=3, seed=11))
    assert result.stale_reads == []
    assert result.flushes_requested == 40 * 3
    assert result.reads == 40 * 3 * 3 * 2
    assert len(set(result.vcpu_tids.values())) == 4


def test_runs_in_a_background_thread_beside_another_run():
    """The recorder runs the exercise in-process beside its own threads: two runs at once
    (each its own VM) must both complete and pass."""
    out = {}

    def bg():
        out["bg"] = run_exercise(ExerciseConfig(vcpus=2, rounds=100, pages=2, seed=5))

    t = threading.Thread(target=bg)
    t.start()
    fg = run_exercise(ExerciseConfig(vcpus=3, rounds=100, pages=2, seed=6))
    t.join(60)
    assert not t.is_alive()
    assert fg.stale_reads == [] and out["bg"].stale_reads == []
    assert fg.flushes_requested == 200 and out["bg"].flushes_requested == 100
