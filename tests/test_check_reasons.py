"""The check's reasons and next steps, word for word, for each branch of
check_rules.decide(): what a user reads is the evidence the verdict names (sparse
``windows`` dicts as well: a count a check never saw is 0)."""
from __future__ import annotations

import pytest

from kvmtrace.pipeline.check_rules import ExerciseOutcome, decide

from test_check_verdict import VIOLATION_FINDING, counts, ev


CASES = {
    'harmless_violation_with_nothing_left': (
        lambda: ev(windows=counts(violation=1, meaningful=0), findings=[dict(VIOLATION_FINDING, harmless=True, outstanding=[])]),
        'fail',
        ['1 guest TLB flush let a vCPU run guest code before KVM synced its shadow page tables '
         '(flush pattern: sync-in-place)',
         'VM 42 vCPU 1 at 2252.596626 s: the vCPU ran guest code with 1 unsync shadow page '
         'reachable (harmless this time)'],
        ['the traced kernel is NOT safe: install a kernel whose kvm_vcpu_flush_tlb_guest() '
         'syncs the shadow roots (5.13+, or a stable kernel with "KVM: X86: fix '
         'tlb_flush_guest()"), or run guests with EPT/NPT on',
         'to give the kernel team the evidence: kvmtrace record -o trace.parquet while the '
         'problem shows, then kvmtrace analyze trace.parquet']),
    'two_violations_and_a_harmless_one_on_a_thread': (
        lambda: ev(windows=counts(ok=1, violation=2), meaningful_ok=1, findings=[VIOLATION_FINDING, dict(VIOLATION_FINDING, vcpu=None, tid=9, harmless=True, outstanding=[{'gfn': i, 'level': 1} for i in range(6)]), dict(VIOLATION_FINDING, verdict='suspect')], pattern='hardware-flush-only'),
        'fail',
        ['2 guest TLB flushes let a vCPU run guest code before KVM synced its shadow page '
         'tables (flush pattern: hardware-flush-only)',
         'VM 42 vCPU 1 at 2252.596626 s: the vCPU ran guest code with 1 unsync shadow page '
         'reachable; left unsync: gfn 0x4 (level 1)',
         'VM 42 thread 9 at 2252.596626 s: the vCPU ran guest code with 1 unsync shadow page '
         'reachable (harmless this time); left unsync: gfn 0x0 (level 1), gfn 0x1 (level 1), '
         'gfn 0x2 (level 1), gfn 0x3 (level 1)'],
        ['the traced kernel is NOT safe: install a kernel whose kvm_vcpu_flush_tlb_guest() '
         'syncs the shadow roots (5.13+, or a stable kernel with "KVM: X86: fix '
         'tlb_flush_guest()"), or run guests with EPT/NPT on',
         'to give the kernel team the evidence: kvmtrace record -o trace.parquet while the '
         'problem shows, then kvmtrace analyze trace.parquet']),
    'five_stale_reads': (
        lambda: ev(windows=counts(ok=3), meaningful_ok=3, exercise=ExerciseOutcome(flushes_requested=3, reads=8, stale_reads=[{'vcpu': 1, 'round': r, 'address': 0x1000, 'expected': 2, 'observed': 1} for r in range(5)])),
        'fail',
        ['the built-in guest read 5 stale values after a guest TLB flush: the host let it use '
         'a translation the guest had replaced',
         'vCPU 1 round 0 read 0x1000: expected 0x2, observed 0x1',
         'vCPU 1 round 1 read 0x1000: expected 0x2, observed 0x1',
         'vCPU 1 round 2 read 0x1000: expected 0x2, observed 0x1'],
        ['the traced kernel is NOT safe: install a kernel whose kvm_vcpu_flush_tlb_guest() '
         'syncs the shadow roots (5.13+, or a stable kernel with "KVM: X86: fix '
         'tlb_flush_guest()"), or run guests with EPT/NPT on',
         'to give the kernel team the evidence: kvmtrace record -o trace.parquet while the '
         'problem shows, then kvmtrace analyze trace.parquet']),
    'not_exposed_unknown_backend': (
        lambda: ev(tdp=True, shadow_vms=0, backend='', windows=counts(ok=2, meaningful=0), exercise=ExerciseOutcome(flushes_requested=7, reads=10)),
        'not-exposed',
        ['TDP (EPT/NPT) is on (KVM): KVM does not shadow guest page tables, so a guest TLB '
         'flush has no shadow page to sync',
         'no traced VM showed shadow paging (no indirect shadow page was seen)',
         'the built-in guest requested 7 flushes and read no stale value'],
        ['nothing to do while EPT/NPT stays on; check again if it is turned off or guests run '
         'nested guests on the shadow MMU']),
    'one_event_lost_one_window_cut': (
        lambda: ev(windows=counts(ok=3), meaningful_ok=3, lost_events=1, lost_windows=1),
        'inconclusive',
        ["1 trace event was lost (the recorder's buffer overflowed); 1 flush window was cut by "
         'the loss: a lost flush request or sync hides a whole window, so the absence of a '
         'violation is not established'],
        ['trace only the VMs you need (-p TGID), or check when the host is less busy']),
    'two_events_lost_two_windows_cut': (
        lambda: ev(windows=counts(ok=3), meaningful_ok=3, lost_events=2, lost_windows=2),
        'inconclusive',
        ["2 trace events were lost (the recorder's buffer overflowed); 2 flush windows were "
         'cut by the loss: a lost flush request or sync hides a whole window, so the absence '
         'of a violation is not established'],
        ['trace only the VMs you need (-p TGID), or check when the host is less busy']),
    'events_lost_no_window_cut': (
        lambda: ev(windows=counts(ok=3), meaningful_ok=3, lost_events=2),
        'inconclusive',
        ["2 trace events were lost (the recorder's buffer overflowed): a lost flush request or "
         'sync hides a whole window, so the absence of a violation is not established'],
        ['trace only the VMs you need (-p TGID), or check when the host is less busy']),
    'nothing_traced': (
        lambda: ev(windows={}, vms_seen=0),
        'inconclusive',
        ['no guest TLB flush was serviced while tracing (no VM showed any KVM event): nothing '
         'tested whether KVM syncs its shadow page tables'],
        ["run kvmtrace check --exercise: kvmtrace's own guest requests flushes with unsync "
         'shadow pages, so the flush path is certainly exercised',
         'or trace longer (-d SECONDS) while guests run']),
    'two_vms_no_flush': (
        lambda: ev(windows={}, vms_seen=2),
        'inconclusive',
        ['no guest TLB flush was serviced while tracing (2 VMs traced): nothing tested whether '
         'KVM syncs its shadow page tables'],
        ["run kvmtrace check --exercise: kvmtrace's own guest requests flushes with unsync "
         'shadow pages, so the flush path is certainly exercised',
         'or trace longer (-d SECONDS) while guests run']),
    'no_meaningful_window_with_the_guest': (
        lambda: ev(windows={'total': 3}, exercise=ExerciseOutcome(flushes_requested=4)),
        'inconclusive',
        ['3 flush windows closed, but no shadow page was unsync when any of their flushes was '
         'serviced, so none tested whether KVM syncs',
         'the built-in guest requested 4 flushes but the trace saw none of them as a '
         "meaningful window: the probes may not see this host's flush path"],
        ['run kvmtrace doctor to see which probes this host supports',
         'or trace longer (-d SECONDS) while guests run']),
    'only_suspect': (
        lambda: ev(windows={'total': 2, 'meaningful': 2, 'suspect': 2}),
        'inconclusive',
        ['only suspect windows: in 2 windows shadow pages stayed unsync and nothing was '
         "synced, but the trace could not show whether they were reachable from the vCPU's "
         'root'],
        ["run kvmtrace check --exercise: kvmtrace's own guest requests flushes with unsync "
         'shadow pages, so the flush path is certainly exercised',
         'or trace longer (-d SECONDS) while guests run']),
    'too_few_for_min_windows': (
        lambda: ev(windows={'total': 3, 'meaningful': 3, 'ok': 1, 'inconclusive': 1, 'open': 1}, meaningful_ok=1, min_windows=2),
        'inconclusive',
        ['1 meaningful flush window closed ok; at least 2 are needed (--min-windows 2)',
         '2 windows could not be judged (trace started inside them, events lost, or the trace '
         'ended before the vCPU ran again)'],
        ["run kvmtrace check --exercise: kvmtrace's own guest requests flushes with unsync "
         'shadow pages, so the flush path is certainly exercised',
         'or trace longer (-d SECONDS) while guests run']),
    'only_unjudged': (
        lambda: ev(windows={'total': 2, 'meaningful': 2, 'inconclusive': 2}),
        'inconclusive',
        ['0 meaningful flush windows closed ok; at least one is needed (--min-windows 1)',
         '2 windows could not be judged (trace started inside them, events lost, or the trace '
         'ended before the vCPU ran again)'],
        ["run kvmtrace check --exercise: kvmtrace's own guest requests flushes with unsync "
         'shadow pages, so the flush path is certainly exercised',
         'or trace longer (-d SECONDS) while guests run']),
    'pass_with_guest_and_suspect_note': (
        lambda: ev(windows={'total': 4, 'meaningful': 3, 'ok': 3, 'suspect': 1}, meaningful_ok=3, pattern_kernels='kernels 5.16+', exercise=ExerciseOutcome(flushes_requested=3, reads=24)),
        'pass',
        ['3 flush windows had unsync shadow pages when the guest TLB flush was serviced, and '
         'KVM synced them before the vCPU ran guest code again',
         'no violation in 4 flush windows; no event lost',
         'flush pattern: sync-in-place: kernels 5.16+',
         'the built-in guest requested 3 flushes and read no stale value in 24 reads',
         'note: 1 window stayed suspect (unsync pages of unknown reachability, nothing '
         "synced); the meaningful ok windows show the kernel's flush path syncs"],
        ['nothing to do; run the check again after kernel or KVM updates']),
    'plain_pass': (
        lambda: ev(windows={'total': 1, 'meaningful': 1, 'ok': 1}, meaningful_ok=1),
        'pass',
        ['1 flush window had unsync shadow pages when the guest TLB flush was serviced, and '
         'KVM synced them before the vCPU ran guest code again',
         'no violation in 1 flush window; no event lost',
         'flush pattern: sync-in-place'],
        ['nothing to do; run the check again after kernel or KVM updates']),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reasons_and_next_steps_word_for_word(name):
    make, verdict, reasons, steps = CASES[name]
    v = decide(make())
    assert (v.verdict, v.reasons, v.next_steps) == (verdict, reasons, steps)
