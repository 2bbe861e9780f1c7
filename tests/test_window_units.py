"""window.decide() and exact.py details the branch tests leave open: the loss demotion's
reasons (when, which page), exact readings passed on to the function-probe decision, the
CR-write softening, and the vCPU-thread helpers.  Expected texts are what a user reads in
a finding (docs/design.md §4)."""
from __future__ import annotations

from kvmtrace.analysis.exact import Reading, RootSlot, Snapshot, counts_for
from kvmtrace.analysis.vcpu import VcpuState, vcpu_from_comm
from kvmtrace.analysis.window import FlushWindow, Outstanding, decide, decide_address_refault


def win(unsync_at_open: int = 1, **kw) -> FlushWindow:
    return FlushWindow(tgid=1, tid=11, vcpu=1, opened_ts=100, opener="steal-time",
                       open_seq=5, unsync_at_open=unsync_at_open, **kw)


def page(reachable, gfn: int = 4, doubtful: bool = False, ts: int = 2_500_000_000) -> Outstanding:
    return Outstanding(gfn, 0x3701, 1, ts, 10, reachable, doubtful=doubtful)


def judge(w, outstanding=(), *, fn_mode=False, reading=None, unchecked=0):
    decide(w, list(outstanding), tdp=None, shadow_vm=True, fn_mode=fn_mode,
           sp_observed=True, unchecked=unchecked, reading=reading)
    return w


def snap(*slots: tuple, tick: int = 9) -> Snapshot:
    s = Snapshot(ts=500, tick=tick)
    for i, (gfn, unsync, children) in enumerate(slots):
        s.add(RootSlot(i, gfn, 0x3704 if gfn >= 0 else -1, unsync, children))
    return s


# ----------------------------------------------------------------------------- losses

def test_a_violation_after_an_unplaced_loss_names_the_loss_and_the_page():
    w = judge(win(lost_before_ts=1_000_000_000), [page(True, gfn=0x4a)])
    assert (w.verdict, w.loss_demoted) == ("inconclusive", True)
    assert w.reason == ("events lost at 1.000000 could have synced gfn 0x4a (unsync since "
                        "2.500000) or unlinked it from this vCPU's root (without the loss: "
                        "violation, " + w.reason.split("violation, ", 1)[1])


def test_a_violation_stands_when_a_page_unsync_after_the_loss_is_reachable():
    w = judge(win(last_loss_ts=7), [page(True, gfn=5, doubtful=True), page(True, gfn=6)])
    assert (w.verdict, w.loss_demoted) == ("violation", False)
    # ... and falls when every reachable one is doubtful; the first doubtful one is named.
    w = judge(win(last_loss_ts=3_000_000_000), [page(True, gfn=5, doubtful=True),
                                                 page(True, gfn=6, doubtful=True)])
    assert w.verdict == "inconclusive"
    assert w.reason.startswith("events lost at 3.000000 could have synced gfn 0x5 ")


def test_a_tainted_violation_with_fresh_pages_is_still_demoted():
    w = judge(win(lost_before_ts=2_000_000_000), [page(True, gfn=5), page(True, gfn=6)])
    assert w.verdict == "inconclusive" and "could have synced gfn 0x5 " in w.reason


def test_a_re_established_window_keeps_its_ok_and_a_tainted_one_loses_it():
    w = judge(win(unsync_at_open=0, lost_before_ts=1_500_000_000, reestablished=True))
    assert (w.verdict, w.loss_demoted) == ("ok", False)
    w = judge(win(unsync_at_open=0, lost_before_ts=1_500_000_000))
    assert w.verdict == "inconclusive" and w.loss_demoted and w.evidence == "none"
    assert w.reason == ("events lost at 1.500000 could have unsynced a page reachable from "
                        "this vCPU's root, and no full sync of this vCPU was seen since "
                        "(without the loss: ok, nothing was unsync when the flush was serviced)")


def test_a_tainted_suspect_names_the_pages_it_depends_on():
    w = judge(win(lost_before_ts=4_000_000_000), [page(None)])
    assert w.verdict == "inconclusive"
    assert w.reason.startswith("events lost at 4.000000 could have synced or unsynced the "
                               "pages this window depends on (without the loss: suspect, ")
    w = judge(win(last_loss_ts=4_000_000_000), [page(None)])       # not tainted
    assert w.verdict == "suspect" and not w.loss_demoted


# ----------------------------------------------------------------------------- function probes / exact

def test_a_clean_reading_makes_a_no_sync_violation_harmless():
    clean = Reading(snap((1, 0, 0)), explained=True)
    w = judge(win(), [page(None)], fn_mode=True, reading=clean)
    assert (w.verdict, w.harmless) == ("violation", True)
    assert w.reason.endswith("harmless this time: " + clean.describe())
    dirty = Reading(snap((1, 0, 2)), explained=False)
    w = judge(win(), [page(None)], fn_mode=True, reading=dirty)
    assert (w.verdict, w.harmless) == ("violation", False)
    assert w.reason.endswith("1 shadow page left unsync")


def test_function_mode_with_an_unload_only_is_not_the_no_sync_path():
    w = judge(win(saw_unload=True), [page(None)], fn_mode=True)
    assert w.verdict == "ok" and w.reason.startswith("kvm_mmu_unload dropped the roots")


def test_an_exact_dirty_reading_names_the_pages_seen_unsync():
    reading = Reading(snap((1, 0, 1)), explained=True)
    w = judge(win(), [page(True), page(False, gfn=7)], reading=reading)
    assert (w.verdict, w.evidence) == ("violation", "exact")
    assert w.reason.endswith("; 1 shadow page unsync since before the flush")
    w = judge(win(), [page(False, gfn=7)], reading=reading)
    assert w.reason.endswith("; the unsync SPs beneath were not seen in this trace")


def test_an_unknown_cr_write_softens_only_cr_openers():
    w = win(opener_event="flush_cr3", need_flush=-1)
    judge(w, [page(True)])
    assert w.verdict == "suspect"
    assert w.reason.startswith("the vCPU ran guest code with 1 unsync shadow page")
    assert w.reason.endswith("; but whether this CR write asked for a flush is unknown (no new "
                             "value in the event)")
    w = judge(win(opener_event="flush_request_pv", need_flush=-1), [page(True)])
    assert w.verdict == "violation"


def test_an_address_refault_decides_by_inferred_evidence():
    w = judge(win(obligation="address", address=0x5000), [page(True)])
    assert w.verdict == "suspect" and w.evidence == "none"
    assert decide_address_refault(w, 0x5ff0) and (w.verdict, w.evidence) == ("ok", "inferred")


def test_a_snapshot_counts_only_after_the_open_and_the_last_state_event():
    s = snap((1, 0, 0), tick=9)
    assert counts_for(s, 8, 8) and not counts_for(s, 9, 8) and not counts_for(s, 8, 9)
    assert not counts_for(snap((-1, 0, 0), tick=9), 8, 8)         # no valid root in slot 0
    assert not counts_for(None, 0, 0)


def test_a_reading_describes_root_and_previous_roots():
    clean = Reading(snap((1, 0, 0), (2, 0, 0), (-1, 0, 0)), explained=True)
    assert clean.describe() == ("KVM's own state at re-entry: root gfn 0x1 role 0x3704 and 1 "
                                "previous root, none unsync and none with unsync children")
    none = Reading(snap((-1, 0, 0)), explained=True)
    assert none.describe().startswith("KVM's own state at re-entry: no root and 0 previous roots")
    dirty = Reading(snap((1, 1, 3), (2, 0, 1)), explained=True)
    assert dirty.describe() == ("KVM's own state at re-entry: root gfn 0x1 role 0x3704 "
                                "unsync_children 3 (unsync); prev root 1 gfn 0x2 role 0x3704 "
                                "unsync_children 1")
    assert RootSlot(2, 5, 0x3704, 1, 0).to_dict() == {"slot": 2, "gfn": 5, "role": 0x3704,
                                                      "unsync": 1, "unsync_children": 0}


# ----------------------------------------------------------------------------- vCPU threads

def test_the_vcpu_id_of_a_qemu_thread_name():
    assert [vcpu_from_comm(c) for c in ("CPU 0/KVM", "CPU 12/KVM", "qemu-system-x86", "",
                                        "CPU 1/KVM ")] == [0, 12, -1, -1, -1]


def test_a_thread_learns_its_vcpu_once_and_reports_contradictions():
    th = VcpuState(1, 10)
    assert th.learn_vcpu(-1) and th.vcpu == -1
    assert th.learn_vcpu(0) and th.vcpu == 0
    assert th.learn_vcpu(0) and not th.learn_vcpu(1) and th.vcpu == 0


def test_a_thread_name_teaches_the_vcpu_only_when_none_is_known():
    th = VcpuState(1, 10)
    th.learn_comm("CPU 0/KVM")
    assert (th.comm, th.vcpu) == ("CPU 0/KVM", 0)
    th.learn_comm("CPU 5/KVM")                  # the first name stays
    assert (th.comm, th.vcpu) == ("CPU 0/KVM", 0)
    th = VcpuState(1, 11, vcpu=0)
    th.learn_comm("CPU 3/KVM")
    assert (th.comm, th.vcpu) == ("CPU 3/KVM", 0)
    th = VcpuState(1, 12)
    th.learn_comm("")
    assert (th.comm, th.vcpu) == ("", -1)


def test_dropping_the_root_forgets_its_level_and_path():
    th = VcpuState(1, 10)
    th.set_root((1, 0x3704), 4)
    th.path[3] = (2, 0x3703)
    th.drop_root()
    assert (th.root, th.root_level, th.path) == (None, 0, {})


def test_a_clean_reading_decides_a_synced_function_probe_window_exactly():
    # kvm_mmu_sync_roots seen and KVM's own roots read clean: the exact evidence decides.
    clean = Reading(snap((1, 0, 0)), explained=True)
    w = judge(win(saw_sync_roots=True), [page(None)], fn_mode=True, reading=clean)
    assert (w.verdict, w.evidence) == ("ok", "exact")
    w = judge(win(saw_unload=True), [page(None)], fn_mode=True, reading=clean)
    assert (w.verdict, w.evidence) == ("ok", "exact")


def test_losses_are_discounted_on_a_shadow_host_and_not_under_tdp():
    w = win(unsync_at_open=0, lost_before_ts=1_000_000_000)
    decide(w, [], tdp=False, shadow_vm=True, fn_mode=False)
    assert (w.verdict, w.loss_demoted) == ("inconclusive", True)
    w = win(unsync_at_open=0, lost_before_ts=1_000_000_000)
    decide(w, [], tdp=True, shadow_vm=False, fn_mode=False)
    assert (w.verdict, w.loss_demoted) == ("ok", False)


def test_loss_times_are_seconds_with_six_decimals():
    w = judge(win(unsync_at_open=0, lost_before_ts=10_800_123_456_789))    # 3 h after boot
    assert w.reason.startswith("events lost at 10800.123457 could have unsynced")
