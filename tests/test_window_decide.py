"""window.decide(), branch by branch: the verdict, the reason that names its evidence (the
text a user reads), and the flush pattern, for one closed window at a time (docs/design.md §4)."""
from __future__ import annotations

import pytest

from kvmtrace.analysis.window import (MAX_WINDOW_EVENTS, FlushWindow, Outstanding, decide,
                                      observed_pattern)


def win(unsync_at_open: int = 1, **kw) -> FlushWindow:
    return FlushWindow(tgid=1, tid=11, vcpu=1, opened_ts=100, opener="flush_request_pv",
                       open_seq=5, unsync_at_open=unsync_at_open, **kw)


def page(reachable, gfn: int = 4) -> Outstanding:
    return Outstanding(gfn, 0x3701, 1, 50, 10, reachable)


def judge(w: FlushWindow, outstanding=(), *, tdp=None, shadow_vm=True, fn_mode=False,
          sp_observed=True, unchecked=0) -> FlushWindow:
    decide(w, list(outstanding), tdp=tdp, shadow_vm=shadow_vm, fn_mode=fn_mode,
           sp_observed=sp_observed, unchecked=unchecked)
    return w


def test_started_inside_comes_first():
    w = judge(win(started_inside=True, lost=True), [page(True)], fn_mode=True)
    assert (w.verdict, w.reason) == ("inconclusive", "the trace started inside this flush window")
    assert w.outstanding == [page(True)] and w.function_probes


def test_lost_events_in_the_window():
    w = judge(win(lost=True), [page(True)])
    assert (w.verdict, w.reason) == ("inconclusive", "events were lost while this window was open")


def test_tdp_needs_no_sync_and_shows_no_pattern():
    w = judge(win(synced=1), [page(True)], tdp=True, fn_mode=True)
    assert (w.verdict, w.reason, w.pattern) == (
        "ok", "TDP (EPT/NPT) is in use: a guest flush needs no shadow sync", "unknown")


def test_function_probes_sync_roots():
    w = judge(win(saw_sync_roots=True), [page(None)], fn_mode=True)
    assert (w.verdict, w.reason, w.pattern) == (
        "ok", "kvm_mmu_sync_roots ran before the guest ran again", "sync-in-place")
    assert not w.harmless


def test_function_probes_unload():
    w = judge(win(saw_unload=True), [page(None)], fn_mode=True)
    assert (w.verdict, w.pattern) == ("ok", "unload-reload")
    assert w.reason == ("kvm_mmu_unload dropped the roots; kvm_mmu_load synced them before the "
                        "guest ran again")


@pytest.mark.parametrize("pages,left", [
    (1, "1 shadow page left unsync"), (2, "2 shadow pages left unsync"),
])
def test_function_probes_without_a_sync(pages, left):
    w = judge(win(), [page(None, g) for g in range(pages)], fn_mode=True)
    assert (w.verdict, w.harmless, w.pattern) == ("violation", False, "hardware-flush-only")
    assert w.reason == ("guest flush completed with no shadow sync (no kvm_mmu_sync_roots, no "
                        f"kvm_mmu_unload+load), the pre-5.13 path; {left}")


def test_function_probes_without_a_sync_and_nothing_unsync_is_harmless():
    w = judge(win(unsync_at_open=0), [], fn_mode=True)
    assert (w.verdict, w.harmless) == ("violation", True)
    assert w.reason.endswith("the pre-5.13 path; harmless this time: nothing was unsync")


@pytest.mark.parametrize("kw", [{"shadow_vm": False}, {"tdp": True}])
def test_function_probes_need_a_shadow_paging_vm(kw):
    # Silence of kvm_mmu_sync_roots means a missing sync only on the shadow MMU.
    w = judge(win(unsync_at_open=0), [], fn_mode=True, **kw)
    assert w.verdict == "ok" and not w.harmless and w.pattern != "hardware-flush-only"


def test_no_shadow_page_events_is_inconclusive():
    w = judge(win(), [], sp_observed=False)
    assert (w.verdict, w.reason) == (
        "inconclusive", "no kvmmmu shadow-page event was recorded for this VM, so whether "
        "anything was unsync is unknown")


def test_everything_synced_or_zapped():
    w = judge(win(synced=1), [])
    assert (w.verdict, w.reason, w.pattern) == (
        "ok", "every SP unsync at the flush was synced or zapped", "sync-in-place")


def test_nothing_unsync():
    w = judge(win(unsync_at_open=0), [])
    assert (w.verdict, w.reason, w.pattern) == (
        "ok", "nothing was unsync when the flush was serviced", "unknown")


@pytest.mark.parametrize("n,text", [(1, "1 unsync shadow page"), (2, "2 unsync shadow pages")])
def test_reachable_unsync_pages_are_a_violation(n, text):
    w = judge(win(), [page(True, g) for g in range(n)] + [page(None, 9)])
    assert (w.verdict, w.pattern) == ("violation", "hardware-flush-only")
    assert w.reason == (f"the vCPU ran guest code with {text} reachable from its root (through "
                        "links seen in the trace), neither synced nor zapped after the flush")
    assert w.evidence == "inferred"


def test_unchecked_pages_are_suspect_even_after_a_sync():
    w = judge(win(synced=1), [page(None)], unchecked=2)
    assert w.verdict == "suspect"
    assert w.reason == ("3 shadow pages stayed unsync; 2 of them were not checked for "
                        "reachability from this vCPU's root")
    w = judge(win(), [], unchecked=1)
    assert (w.verdict, w.reason) == ("suspect", "1 shadow page stayed unsync; 1 of them were not "
                                     "checked for reachability from this vCPU's root")


@pytest.mark.parametrize("n,text", [(1, "1 shadow page"), (2, "2 shadow pages")])
def test_unknown_reachability_and_no_sync_is_suspect(n, text):
    w = judge(win(), [page(None, g) for g in range(n)])
    assert (w.verdict, w.pattern) == ("suspect", "unknown")
    assert w.reason == (f"{text} stayed unsync and nothing synced this vCPU's root; links "
                        "inferred from the trace cannot show they are unreachable from its real "
                        "root")
    assert w.evidence == "none"


def test_known_unreachable_pages_and_no_sync_are_suspect_not_ok():
    w = judge(win(), [page(False)])
    assert (w.verdict, w.evidence) == ("suspect", "none")


def test_a_sync_of_this_vcpus_root_leaves_the_rest_under_other_roots():
    for kw in ({"synced_here": True}, {"saw_reload_root": True}, {"saw_sync_roots": True},
               {"saw_unload": True}):
        w = judge(win(**kw), [page(False), page(None, 5)])
        assert (w.verdict, w.evidence) == ("ok", "inferred"), kw
        assert w.reason == ("the kernel synced this vCPU's root in the window (kvm_mmu_sync_roots "
                            "leaves nothing unsync under it); the 2 SPs still unsync are under "
                            "other roots")
    # Another vCPU's syncs (synced without synced_here) say nothing of this vCPU's root.
    assert judge(win(synced=1), [page(None)]).verdict == "suspect"


def test_a_root_switch_after_the_sync_is_suspect():
    w = judge(win(synced_here=True, root_switched=True), [page(None)])
    assert (w.verdict, w.evidence) == ("suspect", "none")
    assert w.reason == ("1 shadow page stayed unsync; the kernel synced a root in this window, "
                        "but the vCPU's root may have switched after it (a CR, nested, SMM or "
                        "EFER event, or another vCPU on this thread)")


def _reading(*slots, explained=True):
    from kvmtrace.analysis.exact import Reading, RootSlot, Snapshot
    snap = Snapshot(ts=130, tick=9)
    for i, (gfn, unsync, children) in enumerate(slots):
        snap.add(RootSlot(i, gfn, 0x3704, unsync, children))
    return Reading(snap, explained)


def test_exact_clean_roots_are_ok_whatever_the_links_say():
    w = win()
    decide(w, [page(True)], tdp=None, shadow_vm=True, fn_mode=False,
           reading=_reading((1, 0, 0), (9, 0, 0)))
    assert (w.verdict, w.evidence) == ("ok", "exact")
    assert w.reason == ("KVM's own state at re-entry: root gfn 0x1 role 0x3704 and 1 previous "
                        "root, none unsync and none with unsync children")
    assert [r.gfn for r in w.root_state] == [1, 9]


def test_exact_dirty_root_is_a_violation_when_only_old_pages_explain_it():
    w = win()
    decide(w, [page(True)], tdp=None, shadow_vm=True, fn_mode=False,
           reading=_reading((1, 0, 0), (9, 0, 2)))
    assert (w.verdict, w.evidence) == ("violation", "exact")
    assert w.reason == ("KVM's own state at re-entry: prev root 1 gfn 0x9 role 0x3704 "
                        "unsync_children 2: the vCPU ran guest code with shadow pages left "
                        "unsync under its roots by this flush; 1 shadow page unsync since "
                        "before the flush")
    w = win()
    decide(w, [page(None)], tdp=None, shadow_vm=True, fn_mode=False,
           reading=_reading((1, 0, 1), explained=False))
    assert (w.verdict, w.evidence) == ("suspect", "none")      # the event stream decides


def test_exact_unidentified_slot_is_never_clean():
    w = win()
    decide(w, [page(None)], tdp=None, shadow_vm=True, fn_mode=False,
           reading=_reading((1, 0, 0), (-1, -1, 0)))
    assert w.evidence != "exact" and w.verdict == "suspect"


def test_function_probes_without_a_sync_but_clean_roots_are_harmless():
    w = win()
    decide(w, [page(None)], tdp=None, shadow_vm=True, fn_mode=True,
           reading=_reading((1, 0, 0)))
    assert (w.verdict, w.harmless, w.evidence) == ("violation", True, "inferred")
    assert w.reason.endswith("harmless this time: KVM's own state at re-entry: root gfn 0x1 "
                             "role 0x3704 and 0 previous roots, none unsync and none with "
                             "unsync children")


def test_a_sync_in_the_window_is_no_pass_for_a_reachable_page():
    # kvm_mmu_sync_roots syncs every reachable unsync SP: one left reachable is a violation
    # whatever else was synced.
    for kw in ({"synced": 1}, {"saw_reload_root": True}, {"saw_unload": True}):
        assert judge(win(**kw), [page(True)]).verdict == "violation"


@pytest.mark.parametrize("fn_mode,kw,pattern", [
    (True, {"saw_unload": True, "saw_sync_roots": True}, "unload-reload"),
    (True, {"saw_sync_roots": True}, "sync-in-place"),
    (True, {}, "hardware-flush-only"),
    (False, {"saw_reload_root": True, "synced": 1}, "unload-reload"),
    (False, {"synced": 1}, "sync-in-place"),
    (False, {}, "unknown"),
])
def test_observed_pattern(fn_mode, kw, pattern):
    assert observed_pattern(win(**kw), fn_mode) == pattern


def test_observed_pattern_from_a_reachable_page_left_unsync():
    w = win()
    w.outstanding = [page(False), page(None)]
    assert observed_pattern(w, False) == "unknown"
    w.outstanding.append(page(True))
    assert observed_pattern(w, False) == "hardware-flush-only"


def test_window_keeps_its_first_events_only():
    w = win()
    for i in range(MAX_WINDOW_EVENTS + 3):
        w.add_event(("event", i))
    assert w.events == [("event", i) for i in range(MAX_WINDOW_EVENTS)]


def test_latency_is_the_first_sync_after_the_flush():
    w = win()
    assert w.latency_ns is None
    w.note_sync(130)
    w.note_sync(170)
    assert w.latency_ns == 30
    early = win()
    early.note_sync(90)                      # inherited from before the window opened
    assert early.latency_ns == 0


def test_meaningful_means_something_was_unsync_at_the_flush():
    assert win(unsync_at_open=1).meaningful and not win(unsync_at_open=0).meaningful


def test_window_to_dict_carries_the_window():
    w = judge(win(synced=1, opener_event="kvm_pv_tlb_flush"), [page(True)])
    w.closed_ts, w.closer = 140, "guest_entry"
    w.note_sync(120)
    assert w.to_dict() == {
        "ts": 100, "closed_ts": 140, "tgid": 1, "tid": 11, "vcpu": 1, "verdict": "violation",
        "reason": w.reason, "pattern": "sync-in-place", "meaningful": True, "harmless": False,
        "opener": "flush_request_pv", "opener_event": "kvm_pv_tlb_flush",
        "obligation": w.obligation, "closer": "guest_entry", "unsync_at_open": 1,
        "latency_ns": 20,
        "outstanding": [{"gfn": 4, "role": 0x3701, "level": 1, "unsync_ts": 50,
                         "unsync_tid": 10, "reachable": True, "ambiguous": False}],
        "evidence": "inferred", "root_state": []}


# ----------------------------------------------------------------------------- flush obligations

def test_an_invlpg_window_with_a_reachable_page_left_is_suspect_not_violation():
    # INVLPG needs only the SPTEs of one address synced (mmu->sync_spte(), no tracepoint).
    w = judge(win(obligation="address", address=0x5000), [page(True)])
    assert w.verdict == "suspect"
    assert w.reason == ("INVLPG needs only the SPTEs mapping its address synced "
                        "(mmu->sync_spte(), no tracepoint); unsync SPs stayed and the guest did "
                        "not re-fault on the flushed address before running on")
    ok = judge(win(obligation="address", address=0x5000, synced=1), [])
    assert ok.verdict == "ok"


@pytest.mark.parametrize("event,need,verdict", [
    ("flush_cr3", -1, "suspect"), ("flush_cr4", -1, "suspect"), ("flush_cr3", 1, "violation"),
    ("kvm_pv_tlb_flush", -1, "violation"),
])
def test_a_cr_write_of_unknown_value_softens_a_violation(event, need, verdict):
    w = judge(win(opener_event=event, need_flush=need), [page(True)])
    assert w.verdict == verdict
    assert w.reason.endswith("; but whether this CR write asked for a flush is unknown (no new "
                             "value in the event)") == (verdict == "suspect")


def test_softening_never_touches_other_verdicts():
    w = judge(win(obligation="address", address=0x5000), [page(None)])
    assert w.verdict == "suspect" and "INVLPG" not in w.reason
    w = judge(win(opener_event="flush_cr3"), [page(None)])
    assert w.verdict == "suspect" and "CR write" not in w.reason


@pytest.mark.parametrize("obligation,address,fault,done", [
    ("address", 0x5000, 0x5123, True), ("address", 0x5FFF, 0x6000, False),
    ("address", -1, 0x5000, False), ("address", 0x5000, -1, False),
    ("full", 0x5000, 0x5000, False), ("address", 0, 0xFFF, True),
])
def test_an_invlpg_window_closed_by_a_refault_on_its_page_is_ok(obligation, address, fault, done):
    w = win(obligation=obligation, address=address)
    w.verdict, w.reason = "suspect", "before"
    from kvmtrace.analysis.window import decide_address_refault
    assert decide_address_refault(w, fault) is done
    if done:
        assert w.verdict == "ok" and w.reason == (
            f"the guest's next access to the flushed address {address:#x} faulted into KVM: no "
            "stale SPTE mapped it")
    else:
        assert (w.verdict, w.reason) == ("suspect", "before")


def test_an_invlpg_window_shows_a_pattern_only_through_a_sync():
    w = win(obligation="address", synced=1)
    assert observed_pattern(w, False) == "sync-in-place"
    w = win(obligation="address", saw_reload_root=True)
    w.outstanding = [page(True)]
    assert observed_pattern(w, False) == "unknown"
    assert observed_pattern(win(obligation="address", saw_unload=True), True) == "unload-reload"


def test_a_cr_write_that_asked_no_flush_is_not_softened():
    w = judge(win(opener_event="flush_cr3", need_flush=0), [page(True)])
    assert w.verdict == "violation"


def test_a_refault_at_address_0_counts():
    from kvmtrace.analysis.window import decide_address_refault
    w = win(obligation="address", address=0)
    assert decide_address_refault(w, 0) and w.verdict == "ok"
