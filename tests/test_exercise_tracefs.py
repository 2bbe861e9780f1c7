"""Live: the exercise drives exactly the KVM paths it claims, as tracefs sees them."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from kvmtrace.exercise import ExerciseConfig, run_exercise
from kvmtrace.exercise.capture import TracefsCapture, lost_entries

from live_support import shadow_paging, tracefs_kvm_unavailable_reason

REASON = tracefs_kvm_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"exercise/tracefs: {REASON}")]

LINE_RE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+)\)\s+\[\d+\]\s+\S+\s+"
                     r"[\d.]+:\s+(?P<event>\w+):\s?(?P<rest>.*)$")


def events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        m = LINE_RE.match(line)
        if m:
            out.append(m.groupdict())
    return out


def run_captured(flush: bool, rounds: int = 10, pages: int = 3):
    with TracefsCapture() as cap:
        result = run_exercise(ExerciseConfig(vcpus=2, rounds=rounds, pages=pages, seed=2, flush=flush))
        text = cap.text()
    assert lost_entries(text) == 0
    return result, events(text)


def test_flush_run_unsyncs_flushes_and_syncs():
    result, evs = run_captured(flush=True)
    assert result.exposed is shadow_paging()
    if not shadow_paging():
        return                     # EPT/NPT: no shadow pages to unsync
    writer, reader = str(result.vcpu_tids[0]), str(result.vcpu_tids[1])
    assert {e["tgid"] for e in evs} == {str(result.pid)}         # only this VM's process
    by = Counter((e["tid"], e["event"]) for e in evs)
    flushes = [e for e in evs if e["event"] == "kvm_pv_tlb_flush" and e["rest"].endswith("true")]
    assert len(flushes) == result.flushes_requested == 10
    assert all(e["tid"] == reader for e in flushes)
    assert by[(writer, "kvm_mmu_unsync_page")] == 10 * 3            # one SP per remapped page
    assert by[(reader, "kvm_mmu_sync_page")] == 10 * 3              # all synced by the flush
    assert all(e["comm"] in ("CPU 0/KVM", "CPU 1/KVM") for e in evs if e["tid"] in (writer, reader))


def test_control_run_requests_no_flush_and_syncs_nothing():
    result, evs = run_captured(flush=False)
    assert result.exposed is shadow_paging()
    if not shadow_paging():
        return                     # EPT/NPT: no shadow pages to unsync
    reader = str(result.vcpu_tids[1])
    assert not [e for e in evs if e["event"] == "kvm_pv_tlb_flush" and e["rest"].endswith("true")]
    assert [e for e in evs if e["event"] == "kvm_mmu_unsync_page"]
    assert not [e for e in evs if e["tid"] == reader and e["event"] == "kvm_mmu_sync_page"]
    assert result.stale_reads
