"""Replayer transitions one handler at a time: root switches, losses, the window's own record
(its events, vCPU, outstanding pages), and the Replayer's API (counters, listener, filters).

Expected values come from what KVM does (docs/design.md §2-§4 and the handlers' kernel
citations), on streams small enough to follow by hand: the standard story of
model_scenarios (vCPU1 on root 1 -> 2 -> 3 -> 4, vCPU0 makes SP 4 unsync).  Each test is
fast (one or two replays of a few dozen rows).
"""
from __future__ import annotations

import numpy as np
import pytest

from kvmtrace.analysis import Replayer, replay_frame
from kvmtrace.analysis import replay as replay_mod
from kvmtrace.analysis.selection import NEEDED
from kvmtrace.schema import KVM_EXIT_INTR, Chunk, CommColumn, Kind, TraceMeta, as_chunk
from kvmtrace.sources.frame import from_rows

from model_scenarios import TGID, V0, V1, Stream, built, one, role, run, unsynced

FN_META = TraceMeta(probes=["kprobe:kvm_mmu_sync_roots", "kprobe:kvm_mmu_load",
                            "kprobe:kvm_mmu_unload"])


def kinds_of(events) -> list[str]:
    return [Kind(int(e.kind)).name for e in events]


# ============================================================================ root switches

# Events after which vcpu->arch.mmu->root may be another SP with no kvmmmu event: CR0/CR3/
# CR4 writes (kvm_set_cr3 -> kvm_mmu_new_pgd -> fast_pgd_switch; kvm_post_set_cr0/cr4 ->
# kvm_mmu_reset_context), EFER writes (kvm_set_efer), nested entry/exit (nested_vmx_load_cr3)
# and SMM transitions (kvm_smm_changed).
SWITCHES = [(Kind.CR_WRITE, {"level": 0}), (Kind.CR_WRITE, {"level": 3}),
            (Kind.CR_WRITE, {"level": 4}), (Kind.EFER_WRITE, {}), (Kind.NESTED_ENTER, {}),
            (Kind.NESTED_EXIT, {}), (Kind.SMM_TRANSITION, {})]


@pytest.mark.parametrize("kind,kw", SWITCHES, ids=lambda x: getattr(x, "name", str(x)))
def test_a_silent_root_switch_in_the_window_makes_a_reachable_page_unprovable(kind, kw):
    # Without the switch SP 4 is reachable from the root vCPU1 runs on: a violation.  After
    # it, the root vCPU1 enters with is unknown, so the same stream proves nothing either
    # way: suspect, and the switch event is in the window's record.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(kind, V1, **kw).run(V1)
    w, res = one(s)
    assert (w.verdict, w.root_switched, res.verdict) == ("suspect", True, "suspect")
    assert [o.reachable for o in w.outstanding] == [None]
    assert kinds_of(w.events)[-2:] == [kind.name, "SPTE_INSTALL"]


@pytest.mark.parametrize("cr", [2, 8])
def test_cr2_and_cr8_writes_switch_no_root(cr):
    # CR2 (the fault address) and CR8 (TPR) are not part of the MMU state.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.CR_WRITE, V1, level=cr).run(V1)
    w, _ = one(s)
    assert (w.verdict, w.root_switched) == ("violation", False)
    assert [o.reachable for o in w.outstanding] == [True]


def test_a_switch_before_the_flush_leaves_the_root_unknown_until_reloaded():
    # The root is forgotten outside a window too: SP 4 cannot be shown reachable ...
    s = unsynced()
    s.add(Kind.NESTED_EXIT, V1).pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert (w.verdict, w.root_switched) == ("suspect", False)
    # ... until a root-level get_page on the thread names it again (mmu_alloc_root).
    s = unsynced()
    s.add(Kind.NESTED_EXIT, V1).get(V1, 1, 4, created=0).pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "violation"


def test_another_vcpu_on_the_thread_forgets_the_root_and_is_counted():
    # A VMM may run several vCPUs on one thread: a row naming vCPU 2 on vCPU1's thread
    # means the root known for that thread belonged to vCPU 1.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).pv(V1, 2, need_flush=0).run(V1)
    r = Replayer(per_event=True)
    (w,) = r.feed(s.frame())
    res = r.finish()
    # The window was vCPU 1's flush; the thread now runs vCPU 2.
    assert (w.verdict, w.root_switched, w.vcpu) == ("suspect", True, 1)
    assert r.vms[TGID].threads[V1].vcpu == 2
    assert "1 events named a different vCPU id" in " ".join(res.notes)
    assert r.counters.vcpu_conflicts == 1
    # Two switches count twice; a row naming the thread's own vCPU again counts nothing.
    s = unsynced()
    s.pv(V1, 2, need_flush=0).pv(V1, 2, need_flush=0).pv(V1, 1, need_flush=0).run(V1)
    r = Replayer(per_event=True)
    r.feed(s.frame())
    assert r.counters.vcpu_conflicts == 2


def test_a_vcpu_switch_on_a_thread_with_a_window_names_the_new_vcpu_in_the_record():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).pv(V1, 3, need_flush=0).run(V1)
    w, _ = one(s)
    assert kinds_of(w.events)[-2:] == ["FLUSH_REQUEST_PV", "SPTE_INSTALL"]
    assert [int(e.vcpu) for e in w.events[-2:]] == [3, -1]


# ============================================================================ five-level paging

def five_level_stream() -> Stream:
    """vCPU1's first get_page is a level-4 SP (taken as its root), then a level-5 SP: the
    guest uses 5-level paging, so the level-4 SP was a child of the real root."""
    s = Stream()
    s.pv(V1, 1).get(V1, 1, 4).run(V1)
    return s


def test_a_level5_sp_drops_roots_taken_from_level4_sps():
    s = five_level_stream()
    s.get(V0, 7, 5).get(V0, 1, 4, created=0).get(V0, 2, 3).get(V0, 3, 2).get(V0, 4, 1)
    s.unsync(V0, 4).run(V0)
    # vCPU1's root (level-4 SP 1) was no root: reachability from it proves nothing.
    s.pv(V1, 1, need_flush=1).run(V1)
    closed, res = run(s)
    (w,) = [w for w in closed if w.tid == V1]
    assert w.verdict == "suspect" and [o.reachable for o in w.outstanding] == [None]


def test_under_five_level_paging_a_level4_sp_hangs_under_the_level5_root():
    s = Stream()
    s.pv(V1, 1).get(V1, 9, 5).get(V1, 1, 4).get(V1, 2, 3).get(V1, 3, 2).get(V1, 4, 1).run(V1)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]


def test_a_direct_sp_is_never_a_root():
    # role.direct (bit 7): an SP for a guest range without a guest table (huge page
    # split, real mode), fetched under a root, never allocated as one.
    s = Stream()
    s.pv(V1, 1).get(V1, 1, 4).run(V1)
    s.get(V1, 2, 4, r=role(4) | 0x80).get(V1, 2, 3).get(V1, 3, 2).get(V1, 4, 1).run(V1)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    # The direct level-4 SP is no reload: the window saw no root reload, and the root is
    # still SP 1 (2 -> 3 -> 4 hang under it).
    assert (w.saw_reload_root, w.verdict) == (False, "violation")


# ============================================================================ losses

def test_an_invalid_event_counts_and_taints_like_a_loss_of_its_vm():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.INVALID, V1, value=1).run(V1)
    r = Replayer()
    (w,) = r.feed(s.frame())
    res = r.finish()
    assert (w.verdict, w.lost) == ("inconclusive", True)
    assert r.counters.invalid_markers == 1 and r.counters.lost_markers == 0
    s.add(Kind.INVALID, V1, value=1).add(Kind.INVALID, V0, value=1)
    r = Replayer()
    r.feed(s.frame())
    assert r.counters.invalid_markers == 3
    assert res.verdict == "inconclusive"


def test_lost_markers_add_up_and_count_at_least_one():
    s = Stream().lost(5).lost(0).lost(3)
    r = Replayer()
    r.feed(s.frame())
    assert r.counters.lost_markers == 5 + 1 + 3


def test_a_loss_of_one_vm_leaves_another_vms_window_alone():
    a, b = Stream(tgid=1), Stream(tgid=0)
    unsynced(a)
    a.pv(V1, 1, need_flush=1)
    a.ts += 5
    a.rows.append({"ts": a.ts, "kind": int(Kind.LOST), "tgid": 0, "value": 2})
    a.run(V1)
    w, _ = one(a)
    assert (w.verdict, w.lost) == ("violation", False)


def test_a_vm_first_seen_after_an_unplaced_loss_is_tainted_from_the_start():
    # A loss naming no VM (tgid -1) may have held this VM's events, an unsync_page among
    # them: "nothing was unsync" is no ok until the vCPU is re-established (no root
    # reload, sync or exact read here).
    s = Stream()
    s.lost(4)
    s.pv(V1, 1).get(V1, 2, 3).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.lost_before_ts == s.rows[0]["ts"]
    assert (w.verdict, w.loss_demoted) == ("inconclusive", True)
    assert "nothing was unsync" in w.reason
    # The same without the loss: ok.
    s.rows.pop(0)
    w, _ = one(s)
    assert (w.verdict, w.lost_before_ts) == ("ok", None)


def test_a_loss_marks_every_open_window_of_its_vm():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).pv(V0, 0, need_flush=1).lost(1).run(V1).run(V0)
    closed, _ = run(s)
    assert sorted((w.tid, w.lost, w.verdict) for w in closed) == [
        (V0, True, "inconclusive"), (V1, True, "inconclusive")]


def test_reestablished_only_for_a_confirmed_window():
    # kvm_service_local_tlb_flush_requests alone opens a tentative window; a root reload
    # in it re-establishes the vCPU but the window stays unconfirmed (never counted).
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1).get(V1, 1, 4, created=0).run(V1)
    closed, res = run(s, FN_META)
    assert closed == [] and res.windows["total"] == 0


# ============================================================================ the window's record

def test_a_finding_names_the_events_around_the_flush():
    # The two events before the opener on the thread, the opener, then the closer.
    s = unsynced()
    s.get(V1, 3, 2, created=0).get(V1, 4, 1, created=0)
    s.pv(V1, 1, need_flush=1).run(V1, Kind.PIO, value=0x3f8)
    res = replay_frame(s.frame())
    (f,) = res.findings
    ts = [r["ts"] for r in s.rows[-4:]]
    assert f["events"] == [
        {"ts": ts[0], "tid": V1, "event": "sp_get", "gfn": 3, "role": role(2), "level": 2,
         "created": 0},
        {"ts": ts[1], "tid": V1, "event": "sp_get", "gfn": 4, "role": role(1), "level": 1,
         "created": 0},
        {"ts": ts[2], "tid": V1, "vcpu": 1, "event": "flush_request_pv", "need_flush": 1},
        {"ts": ts[3], "tid": V1, "event": "pio", "value": 0x3f8}]
    assert (f["vcpu"], f["tid"], f["tgid"], f["closed_ts"]) == (1, V1, TGID, ts[3])
    assert f["outstanding"] == [{"gfn": 4, "role": role(1), "level": 1,
                                 "unsync_ts": s.rows[-6]["ts"], "unsync_tid": V0,
                                 "reachable": True, "ambiguous": False}]


def test_a_window_opened_before_its_vcpu_id_is_known_takes_it_at_the_close():
    s = Stream()
    s.add(Kind.SP_GET, V1, gfn=1, role=role(4), level=4, created=1)
    s.add(Kind.FLUSH_REQUEST_GUEST, V1).add(Kind.GUEST_ENTRY, V1, vcpu=0)
    w, _ = one(s)
    assert w.vcpu == 0
    s = Stream()
    s.add(Kind.SP_GET, V1, gfn=1, role=role(4), level=4, created=1)
    s.add(Kind.FLUSH_REQUEST_GUEST, V1).add(Kind.GUEST_ENTRY, V1, vcpu=3)
    w, _ = one(s)
    assert w.vcpu == 3


def test_an_sp_without_a_page_reports_the_level_of_its_role():
    # Two SPs that print alike went unsync (count 2); a zap removes the page, one record
    # stays: its level comes from the role word (bits 0-3).
    s = built()
    s.unsync(V0, 4).unsync(V0, 4).zap(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [(o.gfn, o.level, o.ambiguous, o.reachable) for o in w.outstanding] == [
        (4, 1, True, None)]
    assert w.verdict == "suspect"


def test_an_outstanding_page_unsync_before_a_later_loss_is_doubtful():
    s = unsynced()
    s.lost(1).get(V1, 1, 4, created=0)      # a reload re-establishes vCPU1 (kvm_mmu_load)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [o.doubtful for o in w.outstanding] == [True]
    assert w.verdict == "inconclusive" and w.loss_demoted
    assert w.last_loss_ts == s.rows[-4]["ts"]


def test_the_scan_cap_leaves_pages_unchecked_and_never_ok(monkeypatch):
    monkeypatch.setattr(replay_mod, "MAX_OUTSTANDING_SCAN", 1)
    s = built()
    s.unsync(V0, 4).unsync(V0, 5).unsync(V0, 6).unsync(V0, 7).run(V0)
    s.pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)
    w, _ = one(s)
    # SP 4 synced; 5, 6 and 7 stay; one is scanned, the other two counted unchecked.
    assert len(w.outstanding) == 1 and w.verdict == "suspect"
    assert "3 shadow pages stayed unsync; 2 of them were not checked" in w.reason


def test_a_settled_window_skips_reachability():
    # With function probes a sync_roots settles the window (ok); reachability is not
    # computed (None) even though SP 4 hangs under the root.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.SYNC_ROOTS, V1).run(V1)
    w, _ = one(s, FN_META)
    assert w.verdict == "ok" and [o.reachable for o in w.outstanding] == [None]
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.HW_FLUSH, V1).run(V1)
    w, _ = one(s, FN_META)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.MMU_UNLOAD, V1).run(V1)
    w, _ = one(s, FN_META)
    assert w.verdict == "ok" and [o.reachable for o in w.outstanding] == [None]
    s = unsynced()
    s.pv(V1, 1, need_flush=1).lost(1).run(V1)
    w, _ = one(s)
    assert [o.reachable for o in w.outstanding] == [None]


# ============================================================================ the Replayer's API

def test_feed_and_distrust_after_finish_are_errors():
    r = Replayer()
    r.feed(unsynced().frame())
    r.distrust("undecodable rows were skipped")
    res = r.finish()
    assert res.verdict == "inconclusive"
    assert "undecodable rows were skipped; every window is inconclusive" in res.notes
    with pytest.raises(RuntimeError, match=r"feed\(\) after finish\(\)"):
        r.feed(unsynced().frame())
    with pytest.raises(RuntimeError, match=r"distrust\(\) after finish\(\)"):
        r.distrust("x")


def test_counters_accumulate_over_chunks():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1)
    frame = s.frame()
    r = Replayer()
    for _ in range(3):
        r.feed(frame)
    c = r.counters
    n = len(frame)
    assert c.events == 3 * n
    assert c.late == 2 * (n - 1)       # chunks 2 and 3 start back at the first ts
    one_pass = Replayer()
    one_pass.feed(frame)
    assert c.handled == 3 * one_pass.counters.handled


def test_reordered_ambiguous_and_incomplete_rows_accumulate():
    def chunk():
        s = Stream()
        s.add(Kind.SP_UNSYNC, V0, gfn=-1, role=-1)          # no gfn: incomplete
        s.add(Kind.FLUSH_REQUEST_PV, V1, vcpu=1, need_flush=-1)   # no need_flush_tlb
        s.rows[0]["ts"], s.rows[1]["ts"] = 50, 50
        s.add(Kind.SPTE_INSTALL, V1)
        s.rows[2]["ts"] = 40                                 # out of order
        return s.frame()
    r = Replayer()
    r.feed(chunk())
    first = (r.counters.reordered, r.counters.ambiguous, r.counters.incomplete)
    assert first[0] == 1 and first[1] >= 1 and first[2] == 2
    r.feed(chunk())
    assert (r.counters.reordered, r.counters.ambiguous, r.counters.incomplete) == tuple(
        2 * x for x in first)


class Listener:
    kinds = frozenset({Kind.SP_UNSYNC, Kind.FLUSH_REQUEST_PV})

    def __init__(self) -> None:
        self.events, self.windows = [], []

    def event(self, ev) -> None:
        self.events.append(ev)

    def window(self, w) -> None:
        self.windows.append(w)


def test_a_listener_hears_its_kinds_after_handling_and_every_counted_window():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1).pv(V0, 0, need_flush=1)
    li = Listener()
    r = Replayer(listener=li, per_event=True)
    closed = r.feed(s.frame())
    res = r.finish()
    assert [(Kind(e.kind).name, e.tid, e.ts) for e in li.events] == [
        (Kind(row["kind"]).name, row["tid"], row["ts"]) for row in s.rows
        if row["kind"] in (Kind.SP_UNSYNC, Kind.FLUSH_REQUEST_PV)]
    # The closed window, then the one the trace ended inside.
    assert [w.verdict for w in li.windows] == ["violation", "open"]
    assert li.windows[0] is closed[0] and res.windows["total"] == 2
    # The model still handled the tapped kinds (the unsync made the violation).
    assert closed[0].verdict == "violation"


def test_the_vm_filter_keeps_thread_names_and_reports_an_absent_vm():
    # VM 2's rows go; VM 1's thread names stay with their rows, so vCPU1's id is learnt
    # from "CPU 1/KVM" (QEMU's name) although no row of it names a vCPU.
    other = Stream(tgid=2)
    other.pv(V0, 0).run(V0)
    s = unsynced()
    s.pv(V1, -1, need_flush=1).run(V1)
    rows = other.rows + s.rows
    for i, row in enumerate(rows):
        row["ts"] = 1000 + 10 * i
        if row.get("tid") == V1:
            row.pop("vcpu", None)
    frame = from_rows(rows)
    names = ["x" if r.get("tgid") == 2 else ("CPU 1/KVM" if r.get("tid") == V1 else "CPU 0/KVM")
             for r in rows]
    chunk = Chunk(as_chunk(frame, NEEDED).cols, CommColumn(np.asarray(names, dtype=object)))
    r = Replayer(vm=TGID)
    (w,) = r.feed(chunk)
    r.finish()
    assert r.tgids_seen == {1, 2} and r.counters.vms_seen == [TGID]
    assert w.vcpu == 1 and r.counters.absent_vm is None
    r = Replayer(vm=7)
    r.feed(frame)
    res = r.finish()
    assert r.counters.absent_vm == 7 and "no event of VM tgid 7 is in this trace" in res.notes


def test_the_vcpu_filter_counts_only_that_vcpus_windows():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1).pv(V0, 0, need_flush=1).run(V0)
    assert replay_frame(s.frame()).windows["total"] == 2
    res = replay_frame(s.frame(), vcpu=0)
    assert res.windows["total"] == 1 and res.verdict == "violation"
    res = replay_frame(s.frame(), vcpu=1)
    assert res.windows["total"] == 1 and res.verdict == "violation"


def test_per_event_replay_hands_every_row_to_a_handler():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1).run(V1).run(V1)
    r = Replayer(per_event=True)
    r.feed(s.frame())
    assert r.counters.handled == len(s.rows)
    r = Replayer()
    r.feed(s.frame())
    assert r.counters.handled < len(s.rows)       # repeated evidence is not handed on


def test_a_userspace_exit_with_an_errno_or_intr_keeps_the_window_open():
    for value in (KVM_EXIT_INTR, -4):
        s = unsynced()
        s.pv(V1, 1, need_flush=1).add(Kind.USERSPACE_EXIT, V1, value=value)
        closed, res = run(s, per_event=True)
        assert closed == [] and res.windows["open"] == 1
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.USERSPACE_EXIT, V1, value=0)   # KVM_EXIT_UNKNOWN
    closed, _ = run(s, per_event=True)
    assert [w.closer for w in closed] == ["userspace_exit"]


def test_a_window_keeps_the_vcpu_that_was_flushed_even_vcpu_0():
    # The flush was vCPU 0's; the thread runs vCPU 2 by the time it closes.
    s = unsynced()
    s.pv(V0, 0, need_flush=1).pv(V0, 2, need_flush=0).run(V0)
    w, _ = one(s)
    assert w.vcpu == 0


def test_the_page_level_is_the_events_level_column_when_it_has_one():
    # The level column wins over the role's level bits (a source that prints both).
    s = built()
    s.add(Kind.SP_UNSYNC, V0, gfn=9, role=0x3700, level=1).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [(o.gfn, o.level) for o in w.outstanding] == [(9, 1)]


def invlpg(s: Stream, tid: int, address: int) -> Stream:
    return s.add(Kind.FLUSH_INVLPG, tid, value=address, need_flush=1)


@pytest.mark.parametrize("closer", [Kind.PAGE_FAULT, Kind.WALK_START])
def test_an_invlpg_window_closed_by_a_refault_on_its_page_is_ok(closer):
    # kvm_mmu_invlpg needs only the flushed address's SPTEs gone; the guest faulting on
    # that page again shows they are (exact: the fault is KVM's own walk).
    s = unsynced()
    invlpg(s, V1, 0x7000_1234).run(V1, closer, value=0x7000_1ff8)
    w, _ = one(s)
    assert (w.obligation, w.verdict) == ("address", "ok") and "faulted into KVM" in w.reason
    s = unsynced()
    invlpg(s, V1, 0x7000_1234).run(V1, closer, value=0x7000_2000)     # another page
    w, _ = one(s)
    assert w.verdict == "suspect"


def test_an_invlpg_window_closed_otherwise_keeps_its_verdict_and_reason():
    s = unsynced()
    invlpg(s, V1, 0x7000_1234).run(V1, Kind.SPTE_INSTALL, value=0x7000_1000)
    w, _ = one(s)
    assert w.verdict == "suspect" and "INVLPG needs only" in w.reason
    s = built()
    invlpg(s, V1, 0x7000_1234).run(V1, Kind.PAGE_FAULT, value=0x7000_1000)
    w, _ = one(s)
    assert (w.verdict, w.reason) == ("ok", "nothing was unsync when the flush was serviced")
