"""Every branch of the check verdict (kvmtrace.pipeline.check_rules.decide)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.pipeline.check_rules import (FAIL, INCONCLUSIVE, NOT_EXPOSED, PASS, Evidence,
                               ExerciseOutcome, decide)


def counts(ok=0, violation=0, suspect=0, inconclusive=0, open=0, meaningful=None) -> dict:
    total = ok + violation + suspect + inconclusive + open
    return {"total": total, "meaningful": total if meaningful is None else meaningful,
            "ok": ok, "violation": violation, "suspect": suspect,
            "inconclusive": inconclusive, "open": open}


def ev(**kw) -> Evidence:
    base = dict(windows=counts(), meaningful_ok=0, tdp=False, backend="kvm_pvm",
                shadow_vms=1, vms_seen=1, pattern="sync-in-place")
    base.update(kw)
    return Evidence(**base)


VIOLATION_FINDING = {"ts": 2_252_596_626_000, "tgid": 42, "vcpu": 1, "tid": 7,
                     "verdict": "violation", "harmless": False,
                     "reason": "the vCPU ran guest code with 1 unsync shadow page reachable",
                     "outstanding": [{"gfn": 4, "role": 0x1701, "level": 1}]}


def joined(v) -> str:
    return " | ".join(v.reasons + v.next_steps)


# ----------------------------------------------------------------------------- fail
def test_a_violation_fails_and_names_the_window_and_page() -> None:
    v = decide(ev(windows=counts(ok=5, violation=1), meaningful_ok=5,
                  findings=[VIOLATION_FINDING], pattern="hardware-flush-only"))
    assert v.verdict == FAIL and v.exit_code == 1
    text = joined(v)
    assert "1 guest TLB flush let a vCPU run guest code" in text
    assert "VM 42 vCPU 1" in text and "gfn 0x4 (level 1)" in text
    assert "hardware-flush-only" in text
    assert "NOT safe" in v.next_steps[0]


def test_a_harmless_violation_still_fails() -> None:
    f = dict(VIOLATION_FINDING, harmless=True, outstanding=[])
    v = decide(ev(windows=counts(violation=1, meaningful=0), findings=[f]))
    assert v.verdict == FAIL
    assert "harmless this time" in joined(v)


def test_a_stale_read_fails_even_when_every_window_was_ok() -> None:
    stale = [{"vcpu": 1, "round": 3, "address": 0x40_0000, "expected": 0x2222,
              "observed": 0x1111}]
    v = decide(ev(windows=counts(ok=300), meaningful_ok=300,
                  exercise=ExerciseOutcome(flushes_requested=300, reads=2400, stale_reads=stale)))
    assert v.verdict == FAIL and v.exit_code == 1
    assert "vCPU 1 round 3 read 0x400000: expected 0x2222, observed 0x1111" in joined(v)


def test_fail_wins_over_lost_events_tdp_and_too_few_windows() -> None:
    v = decide(ev(windows=counts(violation=1), meaningful_ok=0, lost_events=99, tdp=True,
                  shadow_vms=0, findings=[VIOLATION_FINDING], min_windows=10))
    assert v.verdict == FAIL


# ----------------------------------------------------------------------------- not-exposed
def test_tdp_on_without_shadow_paging_vms_is_not_exposed() -> None:
    v = decide(ev(tdp=True, backend="kvm_intel", shadow_vms=0, windows=counts(ok=4, meaningful=0)))
    assert v.verdict == NOT_EXPOSED and v.exit_code == 0
    assert "TDP (EPT/NPT) is on (kvm_intel)" in joined(v)


def test_tdp_on_with_the_exercise_says_what_the_guest_did() -> None:
    v = decide(ev(tdp=True, shadow_vms=0, vms_seen=1,
                  exercise=ExerciseOutcome(flushes_requested=300, reads=2400, exposed=False)))
    assert v.verdict == NOT_EXPOSED
    assert "requested 300 flushes and read no stale value" in joined(v)


def test_tdp_on_but_a_shadow_paging_vm_is_judged_normally() -> None:
    v = decide(ev(tdp=True, shadow_vms=1, windows=counts(ok=2, meaningful=0)))
    assert v.verdict == INCONCLUSIVE


def test_unknown_tdp_is_never_not_exposed() -> None:
    v = decide(ev(tdp=None, shadow_vms=0, vms_seen=0))
    assert v.verdict == INCONCLUSIVE


# ----------------------------------------------------------------------------- inconclusive
def test_seeing_nothing_is_inconclusive_never_pass() -> None:
    v = decide(ev(vms_seen=0, shadow_vms=0))
    assert v.verdict == INCONCLUSIVE and v.exit_code == 3
    assert "no guest TLB flush was serviced while tracing (no VM showed any KVM event)" in v.reasons[0]
    assert any("--exercise" in s for s in v.next_steps)


def test_windows_with_nothing_unsync_are_not_evidence() -> None:
    v = decide(ev(windows=counts(ok=50, meaningful=0)))
    assert v.verdict == INCONCLUSIVE
    assert "50 flush windows closed, but no shadow page was unsync" in v.reasons[0]


def test_only_suspect_windows_are_inconclusive() -> None:
    v = decide(ev(windows=counts(suspect=3)))
    assert v.verdict == INCONCLUSIVE
    assert v.reasons[0].startswith("only suspect windows: in 3 windows")


def test_too_few_meaningful_windows_for_min_windows() -> None:
    v = decide(ev(windows=counts(ok=2), meaningful_ok=2, min_windows=5))
    assert v.verdict == INCONCLUSIVE
    assert "2 meaningful flush windows closed ok; at least 5 are needed (--min-windows 5)" in v.reasons[0]


def test_lost_events_block_a_pass_even_with_enough_windows() -> None:
    v = decide(ev(windows=counts(ok=20, inconclusive=1), meaningful_ok=20, lost_events=17,
                  lost_windows=1))
    assert v.verdict == INCONCLUSIVE
    assert "17 trace events were lost" in v.reasons[0]
    assert "1 flush window was cut by the loss" in v.reasons[0]
    assert any("-p TGID" in s for s in v.next_steps)


def test_a_guest_that_did_not_finish_is_inconclusive() -> None:
    v = decide(ev(windows=counts(ok=20), meaningful_ok=20,
                  exercise=ExerciseOutcome(finished=False, error="ExerciseError: vCPU 1 died")))
    assert v.verdict == INCONCLUSIVE
    assert "stopped before it finished: ExerciseError: vCPU 1 died" in joined(v)


def test_exercise_flushes_unseen_by_the_probes_point_at_doctor() -> None:
    v = decide(ev(exercise=ExerciseOutcome(flushes_requested=300, reads=2400)))
    assert v.verdict == INCONCLUSIVE
    assert "requested 300 flushes but the trace saw none" in joined(v)
    assert any("kvmtrace doctor" in s for s in v.next_steps)
    assert not any("check --exercise" in s for s in v.next_steps)


def test_unjudged_windows_are_explained_when_evidence_is_short() -> None:
    v = decide(ev(windows=counts(inconclusive=2, open=1), meaningful_ok=0))
    assert v.verdict == INCONCLUSIVE
    assert any("3 windows could not be judged" in r for r in v.reasons)


# ----------------------------------------------------------------------------- pass
def test_enough_meaningful_ok_windows_pass() -> None:
    v = decide(ev(windows=counts(ok=1), meaningful_ok=1,
                  pattern_kernels="kernels 5.16+: ...", min_windows=1))
    assert v.verdict == PASS and v.exit_code == 0
    assert v.reasons[0].startswith("1 flush window had unsync shadow pages")
    assert "flush pattern: sync-in-place: kernels 5.16+" in joined(v)


def test_pass_with_the_exercise_and_a_suspect_note() -> None:
    v = decide(ev(windows=counts(ok=300, suspect=2), meaningful_ok=300,
                  exercise=ExerciseOutcome(flushes_requested=300, reads=2400)))
    assert v.verdict == PASS
    assert "requested 300 flushes and read no stale value in 2400 reads" in joined(v)
    assert "note: 2 windows stayed suspect" in joined(v)


def test_min_windows_boundary() -> None:
    assert decide(ev(windows=counts(ok=5), meaningful_ok=5, min_windows=5)).verdict == PASS
    assert decide(ev(windows=counts(ok=5), meaningful_ok=4, min_windows=5)).verdict == INCONCLUSIVE


# ----------------------------------------------------------------------------- invariants
@settings(max_examples=300, deadline=None)
@given(ok=st.integers(0, 5), violation=st.integers(0, 2), suspect=st.integers(0, 2),
       inconclusive=st.integers(0, 2), meaningful_ok=st.integers(0, 5),
       lost=st.integers(0, 3), stale=st.integers(0, 2), tdp=st.sampled_from([True, False, None]),
       shadow=st.integers(0, 1), min_windows=st.integers(1, 4), with_exercise=st.booleans())
def test_pass_only_with_clean_sufficient_evidence(ok, violation, suspect, inconclusive,
                                                   meaningful_ok, lost, stale, tdp, shadow,
                                                   min_windows, with_exercise) -> None:
    meaningful_ok = min(meaningful_ok, ok)
    exercise = (ExerciseOutcome(flushes_requested=10, reads=10,
                                stale_reads=[{"vcpu": 1, "round": 0, "address": 0,
                                              "expected": 1, "observed": 0}] * stale)
                if with_exercise else None)
    e = ev(windows=counts(ok=ok, violation=violation, suspect=suspect, inconclusive=inconclusive),
           meaningful_ok=meaningful_ok, lost_events=lost, tdp=tdp, shadow_vms=shadow,
           min_windows=min_windows, exercise=exercise)
    v = decide(e)
    assert v.reasons and v.next_steps
    if violation or (with_exercise and stale):
        assert v.verdict == FAIL
    elif v.verdict == PASS:
        assert meaningful_ok >= min_windows and not lost
    elif v.verdict == NOT_EXPOSED:
        assert tdp is True and not shadow
    if meaningful_ok == 0:
        assert v.verdict != PASS
