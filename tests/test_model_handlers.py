"""The replay's handlers for flush paths, function probes and shadow-page events, one by one.

Expected values come from the kernel paths the handlers model (docs/design.md §2-§4,
kvmtrace/analysis/flushpaths.py): which event opens a window, which syncs a root, which
switches it, and what a finding then says.  Streams are small and hand-built
(model_scenarios: vCPU1 on root 1 -> 2 -> 3 -> 4, vCPU0 makes SP 4 unsync).
"""
from __future__ import annotations

import pytest

from kvmtrace.analysis import Replayer
from kvmtrace.schema import Kind, TraceMeta

from model_scenarios import HELPER, TGID, V0, V1, Stream, built, one, role, run, unsynced

FN_META = TraceMeta(probes=["kprobe:kvm_mmu_sync_roots", "kprobe:kvm_mmu_load",
                            "kprobe:kvm_mmu_unload"])
CR4_PGE, CR4_PCIDE, CR4_SMEP = 1 << 7, 1 << 17, 1 << 20


def kinds_of(w) -> list[str]:
    return [Kind(int(e.kind)).name for e in w.events]


# ============================================================================ function probes

def test_a_flush_function_entry_opens_a_window_its_syncs_decide():
    s = unsynced()
    s.fn(Kind.FLUSH_GUEST_ENTRY, V1).fn(Kind.SYNC_ROOTS, V1).fn(Kind.SYNC_PREV_ROOTS, V1)
    s.fn(Kind.HW_FLUSH, V1).fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1)
    w, _ = one(s, FN_META)
    assert (w.verdict, w.pattern, w.opener) == ("ok", "sync-in-place", "flush-function")
    assert kinds_of(w)[-6:] == ["FLUSH_GUEST_ENTRY", "SYNC_ROOTS", "SYNC_PREV_ROOTS", "HW_FLUSH",
                                "FLUSH_GUEST_RETURN", "SPTE_INSTALL"]
    assert w.latency_ns == 10              # entry -> kvm_mmu_sync_roots


@pytest.mark.parametrize("before,pattern", [
    ([Kind.SYNC_ROOTS], "sync-in-place"),
    ([Kind.MMU_UNLOAD], "unload-reload"),
    # 5.13-5.15: kvm_mmu_unload(), then kvm_mmu_load() calls kvm_mmu_sync_roots().
    ([Kind.MMU_UNLOAD, Kind.MMU_LOAD_ENTRY, Kind.SYNC_ROOTS, Kind.MMU_LOAD_RETURN],
     "unload-reload"),
    ([], "hardware-flush-only"),
])
def test_a_window_opened_by_its_return_inherits_the_flush_path_seen_before(before, pattern):
    # The entry of kvm_vcpu_flush_tlb_guest() is not in the trace: the trace started
    # inside; the functions it ran before returning still show the kernel's flush path.
    s = unsynced()
    for kind in before:
        s.fn(kind, V1, **({"value": 0} if kind == Kind.MMU_LOAD_RETURN else {}))
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1)
    w, _ = one(s, FN_META)
    assert (w.verdict, w.started_inside, w.pattern) == ("inconclusive", True, pattern)


def test_guest_run_evidence_ends_what_a_late_window_inherits():
    s = unsynced()
    s.fn(Kind.SYNC_ROOTS, V1).fn(Kind.MMU_UNLOAD, V1).run(V1)
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1)
    w, _ = one(s, FN_META)
    assert w.pattern == "hardware-flush-only"


@pytest.mark.parametrize("kind,after", [(Kind.SYNC_ROOTS, "ok"), (Kind.MMU_UNLOAD, "suspect")])
def test_a_root_sync_after_a_silent_switch_syncs_the_root_entered_with(kind, after):
    # Tracepoint mode (no probe list): a CR0 write may switch the root; kvm_mmu_sync_roots
    # (or an unload, whose kvm_mmu_load syncs the new roots) after it covers the root the
    # vCPU then enters with, so SP 4, whose reachability is unknown, is under another root.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.CR_WRITE, V1, level=0).fn(kind, V1).run(V1)
    w, _ = one(s, TraceMeta())
    assert (w.verdict, w.root_switched) == ("ok", False), w.reason
    assert w.latency_ns == 20
    # The switch after the sync: from tracepoints, the root entered with may be another,
    # never synced; a kvm_mmu_sync_roots probe that fired shows the fixed flush path itself.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(kind, V1).add(Kind.CR_WRITE, V1, level=0).run(V1)
    w, _ = one(s, TraceMeta())
    assert (w.verdict, w.root_switched) == (after, True)


def test_the_kvm_mmu_load_after_an_unload_re_establishes_the_vcpu_after_a_loss():
    # kvm_mmu_unload + kvm_mmu_load: kvm_mmu_load() syncs the roots it loads, so what a loss
    # before the window hid no longer matters.  A load with no unload before it since the
    # last guest run re-establishes nothing.
    def stream(fns):
        s = built()
        s.lost(1)
        s.pv(V1, 1, need_flush=1)
        for kind in fns:
            s.fn(kind, V1)
        return s.run(V1)
    w, _ = one(stream([Kind.MMU_UNLOAD, Kind.MMU_LOAD_ENTRY]))
    assert (w.verdict, w.reestablished) == ("ok", True), w.reason
    w, _ = one(stream([Kind.MMU_LOAD_ENTRY]))
    assert (w.verdict, w.reestablished, w.loss_demoted) == ("inconclusive", False, True)
    s = built()
    s.fn(Kind.MMU_UNLOAD, V1).run(V1).lost(1).pv(V1, 1, need_flush=1)
    s.fn(Kind.MMU_LOAD_ENTRY, V1).run(V1)
    w, _ = one(s)
    assert (w.verdict, w.reestablished) == ("inconclusive", False)


def test_the_flush_service_and_load_events_join_the_windows_record():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.FLUSH_SERVICE, V1).fn(Kind.MMU_LOAD_ENTRY, V1)
    s.fn(Kind.MMU_LOAD_RETURN, V1, value=0).run(V1)
    w, _ = one(s)
    assert kinds_of(w)[-5:] == ["FLUSH_REQUEST_PV", "FLUSH_SERVICE", "MMU_LOAD_ENTRY",
                                "MMU_LOAD_RETURN", "SPTE_INSTALL"]


def test_sync_prev_roots_confirms_a_flush_service_window():
    # kvm_service_local_tlb_flush_requests alone may be any flush; kvm_mmu_sync_prev_roots
    # runs only in kvm_vcpu_flush_tlb_guest(): a guest flush, counted.
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1).fn(Kind.SYNC_PREV_ROOTS, V1).run(V1)
    w, res = one(s, FN_META)
    assert res.windows["total"] == 1 and w.verdict == "violation"
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1).fn(Kind.HW_FLUSH, V1).run(V1)
    closed, res = run(s, FN_META)
    assert closed == [] and res.windows["total"] == 0


# ============================================================================ CR3 / CR4 / PVM paths

def cr3(s: Stream, tid: int, value: int, need_flush: int = 1) -> Stream:
    return s.add(Kind.FLUSH_CR3, tid, value=value, need_flush=need_flush)


def test_a_cr3_write_of_the_current_table_keeps_the_root():
    # kvm_set_cr3 with the same pgd skips kvm_mmu_new_pgd: the root stays SP 1.
    s = unsynced()
    cr3(s, V1, 1 << 12).run(V1)
    w, _ = one(s)
    assert (w.opener, w.obligation, w.verdict) == ("cr3", "root", "violation")
    assert [o.reachable for o in w.outstanding] == [True]


def test_a_cr3_write_to_a_known_root_switches_to_it():
    # fast_pgd_switch: the SP of the new CR3's table with the old root's role.  SP 9 was
    # built in the trace with no parent; SP 4's only path up ends at root 1.
    s = unsynced()
    s.get(V0, 9, 4).run(V0)
    cr3(s, V1, (9 << 12) | 0x18).run(V1)
    w, _ = one(s)
    assert (w.root_switched, [o.reachable for o in w.outstanding]) == (False, [False])
    assert w.verdict == "suspect"


@pytest.mark.parametrize("value", [0x77000, -1])
def test_a_cr3_write_to_an_unknown_table_forgets_the_root(value):
    s = unsynced()
    s.get(V0, 0xFFFFFFFFFF, 4).run(V0)     # the table -1 & PTE_ADDR would name
    cr3(s, V1, value).run(V1)
    w, _ = one(s)
    # (forgotten before the window opens: no switch inside it)
    assert (w.verdict, [o.reachable for o in w.outstanding]) == ("suspect", [None])


def test_a_cr3_write_with_the_no_flush_bit_switches_the_root_but_opens_nothing():
    s = unsynced()
    cr3(s, V1, 0x77000, need_flush=0).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.opener == "steal-time" and [o.reachable for o in w.outstanding] == [None]


def cr4(s: Stream, tid: int, value: int, need_flush: int = -1) -> Stream:
    return s.add(Kind.FLUSH_CR4, tid, value=value, need_flush=need_flush)


@pytest.mark.parametrize("old,new,flush", [
    (CR4_PGE, 0, True), (0, CR4_PGE, True),                       # PGE toggled
    (CR4_PCIDE | CR4_PGE, CR4_PGE, True),                          # PCIDE 1 -> 0
    (CR4_PGE, CR4_PGE | CR4_PCIDE, False),                         # PCIDE 0 -> 1
    (CR4_PGE, CR4_PGE, False), (0, 0, False),
])
def test_a_cr4_write_flushes_only_when_it_toggles_pge_or_clears_pcide(old, new, flush):
    # kvm_post_set_cr4: a PGE toggle or PCIDE 1 -> 0 is a full guest flush; the event has
    # only the new value, the thread's previous write gives the old one.
    s = unsynced()
    cr4(s, V1, old).run(V1)
    s.get(V1, 1, 4, created=0).run(V1)       # the reload after the first write's reset
    cr4(s, V1, new).run(V1)
    closed, _ = run(s)
    # The first write (old value unknown) opens a window of unknown need_flush.
    assert [(w.need_flush, w.verdict) for w in closed][1:] == (
        [(1, "violation")] if flush else [])
    assert closed[0].need_flush == -1 and closed[0].verdict == "suspect"


def test_a_cr4_write_that_changes_a_role_bit_resets_the_root():
    s = unsynced()
    cr4(s, V1, CR4_PGE).run(V1).get(V1, 1, 4, created=0).run(V1)
    cr4(s, V1, CR4_SMEP).run(V1)            # PGE off and SMEP on: kvm_mmu_reset_context
    closed, _ = run(s)
    assert [o.reachable for o in closed[-1].outstanding] == [None]
    assert (closed[-1].need_flush, closed[-1].verdict) == (1, "suspect")


def test_each_thread_has_its_own_previous_cr4():
    s = unsynced()
    cr4(s, V0, CR4_PGE).run(V0)
    cr4(s, V1, 0).run(V1)                   # vCPU1's first write: old value unknown
    closed, _ = run(s)
    w = [w for w in closed if w.tid == V1][0]
    assert (w.need_flush, w.verdict) == (-1, "suspect")


def test_a_pvm_load_pgtbl_switches_the_root_and_flushes_when_asked():
    s = unsynced()
    s.add(Kind.FLUSH_PVM_LOAD_PGTBL, V1, value=1, need_flush=1).run(V1)
    w, _ = one(s)
    assert (w.opener, w.verdict) == ("pvm-load-pgtbl", "suspect")
    assert [o.reachable for o in w.outstanding] == [None]
    s = unsynced()
    s.add(Kind.FLUSH_PVM_LOAD_PGTBL, V1, value=0, need_flush=0).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [o.reachable for o in w.outstanding] == [None]


def test_a_pvm_flush_hypercall_opens_a_full_flush_window_on_the_same_root():
    s = unsynced()
    s.add(Kind.FLUSH_PVM_HYPERCALL, V1, value=0x1007, need_flush=1).run(V1)
    w, _ = one(s)
    assert (w.opener, w.obligation, w.verdict) == ("pvm-hypercall", "full", "violation")


# ============================================================================ shadow-page events

def test_a_level_missing_from_the_event_comes_from_the_role():
    # The role word's bits 0-3 are the level (KVM_MMU_PAGE_PRINTK prints both).
    s = Stream()
    s.pv(V1, 1)
    for gfn, level in ((1, 4), (2, 3), (3, 2), (4, 1)):
        s.add(Kind.SP_GET, V1, gfn=gfn, role=role(level), level=-1, created=1)
    s.run(V1)
    s.add(Kind.SP_UNSYNC, V0, gfn=4, role=role(1), level=-1).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "violation" and [(o.level, o.reachable) for o in w.outstanding] == [
        (1, True)]


def test_a_sync_outside_any_window_is_counted_unexplained():
    s = unsynced()
    s.sync(V1, 4).unsync(V0, 4).sync(V0, 4).sync(V0, 4)    # the last: nothing unsync
    r = Replayer()
    r.feed(s.frame())
    assert r.counters.unexplained_syncs == 2


def test_a_sync_inside_the_window_counts_for_every_window_open():
    # kvm_sync_page on another thread still syncs the VM-wide SP: both windows see it,
    # only the own-thread one records it as its event.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).pv(V0, 0, need_flush=1).sync(HELPER, 4).run(V1).run(V0)
    closed, _ = run(s)
    assert [(w.tid, w.synced, w.verdict, w.latency_ns) for w in closed] == [
        (V1, 1, "ok", 20), (V0, 1, "ok", 10)]
    s = unsynced()
    s.pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)
    w, _ = one(s)
    assert kinds_of(w)[-3:] == ["FLUSH_REQUEST_PV", "SP_SYNC", "SPTE_INSTALL"]
    assert (w.synced, w.synced_here) == (1, True)


def test_a_sync_of_a_page_unsynced_after_the_open_does_not_count():
    s = built()
    s.pv(V1, 1, need_flush=1).unsync(V0, 4).sync(V0, 4).run(V1)
    w, _ = one(s)
    assert (w.synced, w.meaningful, w.verdict) == (0, False, "ok")


def test_an_own_thread_sync_re_establishes_a_window_tainted_by_a_loss():
    # kvm_sync_page on the flushed vCPU's thread between the flush and the next run is
    # kvm_mmu_sync_roots at work: every unsync SP under its root is synced, seen or not.
    s = unsynced()
    s.lost(1).pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)
    w, _ = one(s)
    assert (w.reestablished, w.verdict) == (True, "ok")
    s = unsynced()
    s.lost(1).pv(V1, 1, need_flush=1).sync(V0, 4).run(V1)     # another thread's sync
    w, _ = one(s)
    assert (w.reestablished, w.verdict) == (False, "inconclusive")


def test_zaps_count_only_pages_unsync_before_the_window():
    s = built()
    s.unsync(V0, 4).unsync(V0, 5).run(V0)
    s.pv(V1, 1, need_flush=1).unsync(V0, 6).zap(HELPER, 4).zap(HELPER, 5).zap(HELPER, 6)
    s.run(V1)
    w, _ = one(s)
    assert (w.zapped, w.verdict) == (2, "ok")


def test_a_zap_of_another_threads_root_forgets_it():
    s = unsynced()
    s.zap(HELPER, 1, level=4).pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [o.reachable for o in w.outstanding] == [None]
    s = unsynced()
    s.zap(HELPER, 2, level=3).pv(V1, 1, need_flush=1).run(V1)     # not a root
    w, _ = one(s)
    assert [o.reachable for o in w.outstanding] == [None] and w.verdict == "suspect"


def test_a_root_reload_in_the_window_is_a_sync_of_the_root():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.CR_WRITE, V1, level=0).get(V1, 1, 4, created=0)
    s.run(V1)
    w, _ = one(s)
    # kvm_mmu_load syncs the root it loads: SP 4 under it would be synced; it is not, so
    # the reload shows the unload-reload path left it (reachable again through root 1).
    assert (w.saw_reload_root, w.root_switched, w.latency_ns) == (True, False, 20)
    assert w.pattern == "unload-reload"


# ============================================================================ guest walks

def walk(s: Stream, tid: int, entries: list[tuple[int, int]]) -> Stream:
    """A guest walk: (level, pte) per element, top first."""
    s.add(Kind.WALK_START, tid, value=0x1000)
    for level, pte in entries:
        s.add(Kind.WALK_ELEMENT, tid, level=level, value=pte)
    return s


def table(gfn: int, flags: int = 0x27) -> int:
    return (gfn << 12) | flags


@pytest.mark.parametrize("per_event", [False, True])
def test_a_page_first_seen_unsync_takes_the_parent_a_walk_showed(per_event):
    # The walk shows guest table 3 (level 2) pointing at table 16 before any SP shadows 16;
    # kvm_mmu_unsync_page then names SP 16: it hangs under SP 3, so under vCPU1's root.
    s = built()
    walk(s, V0, [(4, table(2)), (3, table(3)), (2, table(16)), (1, table(0x50))])
    s.unsync(V0, 16).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s, per_event=per_event)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]


@pytest.mark.parametrize("per_event", [False, True])
def test_a_table_first_fetched_after_the_walk_takes_the_children_it_showed(per_event):
    # SP 15 exists (unsync) before its parent table 13 has an SP; the walk records 13 -> 15;
    # get_page of 13 links it under 2 and over 15.
    s = built()
    s.unsync(V0, 15).run(V0)
    walk(s, V0, [(4, table(2)), (3, table(13)), (2, table(15)), (1, table(0x50))])
    s.get(V0, 13, 2).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s, per_event=per_event)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]


@pytest.mark.parametrize("level,per_event", [(2, False), (2, True), (3, False), (3, True)])
def test_a_huge_page_entry_names_no_table(level, per_event):
    # PSE (bit 7) at level 2 (2M) or 3 (1G) maps a data page: no table edge.  Frame 16 is
    # then shadowed as a level-1 table elsewhere: the huge mapping is no link to it.
    s = built()
    entries = [(4, table(2)), (3, table(3)), (2, table(16, 0xA7))] if level == 2 else \
        [(4, table(2)), (3, table(16, 0xA7))]
    walk(s, V0, entries)
    s.add(Kind.SP_UNSYNC, V0, gfn=16, role=role(level - 1), level=level - 1).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s, per_event=per_event)
    assert [o.reachable for o in w.outstanding] == [None] and w.verdict == "suspect"


@pytest.mark.parametrize("per_event", [False, True])
def test_a_top_level_entry_with_bit_7_still_names_a_table(per_event):
    # Bit 7 is no page size at level 4: the entry points at the level-3 table.  vCPU0 runs on
    # a fresh root 20 whose walk names table 2: SP 2 (and 3, 4 under it) hang under 20.
    s = built()
    s.pv(V0, 0).get(V0, 20, 4).run(V0)
    walk(s, V0, [(4, table(2, 0xA7)), (3, table(3)), (2, table(4)), (1, table(0x50))])
    s.unsync(V1, 4).run(V1)
    s.pv(V0, 0, need_flush=1).run(V0)
    w, _ = one(s, per_event=per_event)
    assert [o.reachable for o in w.outstanding] == [True]


def test_the_flush_path_table_names_what_each_backend_shows():
    from kvmtrace.analysis.flushpaths import BY_NAME
    assert BY_NAME["steal-time"].revealed_on("pvm") == "kvm:kvm_pv_tlb_flush need_flush_tlb=1"
    assert BY_NAME["hyperv"].revealed_on("pvm") == ""
    assert BY_NAME["invpcid"].revealed_on("svm") == "kvm:kvm_exit invpcid"


# ============================================================================ more handler details

def test_a_sync_roots_before_the_flush_function_is_not_its_sync():
    # kvm_mmu_sync_roots ran before kvm_vcpu_flush_tlb_guest() was entered (a fault's
    # KVM_REQ_MMU_SYNC): the flush itself then synced nothing, the pre-5.13 path.
    s = unsynced()
    s.fn(Kind.SYNC_ROOTS, V1).fn(Kind.FLUSH_GUEST_ENTRY, V1).fn(Kind.FLUSH_GUEST_RETURN, V1)
    s.run(V1)
    w, _ = one(s, FN_META)
    assert (w.verdict, w.started_inside, w.pattern) == ("violation", False, "hardware-flush-only")


def test_two_syncs_in_a_window_count_two():
    s = built()
    s.unsync(V0, 4).unsync(V0, 5).run(V0)
    s.pv(V1, 1, need_flush=1).sync(HELPER, 4).sync(HELPER, 5).run(V1)
    w, _ = one(s)
    assert (w.synced, w.verdict) == (2, "ok")


def test_an_own_thread_sync_of_a_page_unsynced_inside_the_window_times_the_sync():
    s = built()
    s.pv(V1, 1, need_flush=1).unsync(V0, 5).sync(V1, 5).run(V1)
    w, _ = one(s)
    assert (w.synced, w.synced_here, w.latency_ns) == (0, True, 20)


def test_a_zap_of_an_unrelated_sp_keeps_every_root():
    s = unsynced()
    s.get(V0, 9, 3).run(V0).zap(HELPER, 9, level=3).pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]


def test_a_cr3_switch_to_a_known_root_takes_its_level_for_later_faults():
    # After the switch to SP 9 (fast_pgd_switch), the fault path's get_page chain hangs
    # under root 9: SP 32 is reachable from the root vCPU1 runs on.
    s = unsynced()
    s.get(V0, 9, 4).run(V0)
    cr3(s, V1, 9 << 12, need_flush=0)
    s.get(V1, 30, 3).get(V1, 31, 2).get(V1, 32, 1).run(V1)
    s.unsync(V0, 32).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [(o.gfn, o.reachable) for o in w.outstanding] == [(4, False), (32, True)]
    assert w.verdict == "violation"


def test_a_cr3_switch_inside_a_window_is_in_its_record():
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    cr3(s, V1, 0x77000, need_flush=0).run(V1)
    w, res = one(s)
    assert w.root_switched and kinds_of(w)[-2:] == ["FLUSH_CR3", "SPTE_INSTALL"]
    assert res.findings[0]["events"][-2]["event"] == "flush_cr3"


def test_a_level4_sp_under_a_level5_root_is_no_root_even_for_a_later_fault():
    # 5-level paging: root 9 (level 5); a later fault fetches another level-4 SP (8): a
    # child of the root, not a root.  SP 4 stays reachable from root 9.
    s = Stream()
    s.pv(V1, 1).get(V1, 9, 5).get(V1, 1, 4).get(V1, 2, 3).get(V1, 3, 2).get(V1, 4, 1).run(V1)
    s.get(V1, 8, 4).run(V1)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]


def test_a_vm_first_seen_in_a_chunk_after_an_unplaced_loss_is_tainted():
    s = Stream()
    s.lost(4)
    s.pv(V1, 1).get(V1, 2, 3).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    frame = s.frame()
    r = Replayer()
    r.feed(frame.iloc[:1])              # the loss, before any event of the VM
    (w,) = r.feed(frame.iloc[1:])
    assert w.lost_before_ts == s.rows[0]["ts"] and w.verdict == "inconclusive"


def test_a_top_walk_edge_teaches_a_thread_whose_root_is_unknown():
    # vCPU1 (root 1 known) walks: its top entry points at table 20, which no SP shadows
    # yet.  vCPU0, whose root a CR0 write made unknown, then fetches SPs 20 -> 21 -> 22:
    # 20 hangs under root 1 by the walk, so 22 is reachable from vCPU1's root.
    s = built()
    walk(s, V1, [(4, table(20)), (3, table(21)), (2, table(22)), (1, table(0x50))])
    s.add(Kind.CR_WRITE, V0, level=0).get(V0, 20, 3).get(V0, 21, 2).get(V0, 22, 1).run(V0)
    s.unsync(V0, 22).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [(o.gfn, o.reachable) for o in w.outstanding] == [(22, True)]


# ============================================================================ exact rows and window bookkeeping

def root_read(s: Stream, tid: int, children: int, gfn: int = 1) -> Stream:
    """vcpu->arch.mmu->root read by the exact probes (one slot)."""
    return s.add(Kind.ROOT_STATE, tid, gfn=gfn, role=role(4) if gfn >= 0 else -1, value=0,
                 unsync=0, unsync_children=children)


def sp_link(s: Stream, tid: int, child: int, parent: int, present: int = 1) -> Stream:
    return s.add(Kind.SP_LINK, tid, gfn=child, role=role(1), parent_gfn=parent,
                 parent_role=role(2), value=present)


def test_a_cr2_write_after_the_root_read_leaves_the_read_deciding():
    # CR2/CR8 switch nothing: the clean root read still decides, exactly.
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    root_read(s, V1, 0).add(Kind.CR_WRITE, V1, level=2).run(V1)
    w, _ = one(s)
    assert (w.verdict, w.evidence) == ("ok", "exact")


def test_a_parent_link_read_after_the_root_read_leaves_the_read_deciding():
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    root_read(s, V1, 0)
    sp_link(s, V1, 4, 3).run(V1)
    w, _ = one(s)
    assert (w.verdict, w.evidence) == ("ok", "exact")


def test_a_link_row_alone_shows_the_shadow_mmu_tracepoints_were_there():
    s = Stream()
    s.pv(V1, 1).run(V1)
    sp_link(s, V0, 4, 3)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "ok" and "nothing was unsync" in w.reason
    r = Replayer()
    r.feed(s.frame())
    pages = r.vms[TGID].shadow.pages
    assert (pages[(4, role(1))].level, pages[(3, role(2))].level) == (1, 2)


@pytest.mark.parametrize("children,gfn,clean", [(0, 1, True), (2, 1, False), (-1, 1, False),
                                                (0, -1, True), (3, -1, True)])
def test_a_root_read_re_establishes_the_vcpu_when_nothing_is_unsync_below(children, gfn, clean):
    # unsync_children 0 (or no valid root at all): nothing unsync below, whatever a loss hid.
    s = built()
    s.lost(1).pv(V1, 1, need_flush=1)
    root_read(s, V1, children, gfn=gfn).run(V1)
    w, _ = one(s)
    assert w.reestablished is clean


def test_a_root_read_names_the_root_and_its_level():
    s = built()
    root_read(s, V0, 0, gfn=0)
    r = Replayer()
    r.feed(s.frame())
    th = r.vms[TGID].threads[V0]
    assert (th.root, th.root_level) == ((0, role(4)), 4)


def test_a_second_opener_joins_the_window_and_confirms_a_tentative_one():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.FLUSH_REQUEST_GUEST, V1).run(V1)
    w, _ = one(s)
    assert (w.opened_ts, w.opener) == (s.rows[-3]["ts"], "steal-time")
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1).pv(V1, 1, need_flush=1).run(V1)
    w, res = one(s)
    assert res.windows["total"] == 1 and w.opener == "flush-function"


def test_a_loss_before_a_re_established_vcpu_does_not_taint_its_later_windows():
    s = built()
    s.lost(1).get(V1, 1, 4, created=0).run(V1)       # kvm_mmu_load: a full sync
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert (w.lost_before_ts, w.verdict) == (None, "ok")


def test_a_window_the_trace_began_inside_names_no_pattern_from_inferred_links():
    s = unsynced()
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1)
    w, _ = one(s)
    assert (w.verdict, w.pattern) == ("inconclusive", "unknown")
    assert [o.reachable for o in w.outstanding] == [None]


def test_a_cr4_write_of_unknown_value_resets_the_root():
    s = unsynced()
    cr4(s, V1, -1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [o.reachable for o in w.outstanding] == [None] and w.verdict == "suspect"


def test_a_get_page_level_column_wins_over_the_role_bits():
    s = Stream()
    s.add(Kind.SP_GET, V1, gfn=5, role=0x3700, level=1, created=1)
    s.add(Kind.SP_UNSYNC, V1, gfn=6, role=0x3700, level=1)
    r = Replayer()
    r.feed(s.frame())
    pages = r.vms[TGID].shadow.pages
    assert (pages[(5, 0x3700)].level, pages[(6, 0x3700)].level) == (1, 1)


def test_a_direct_sp_fetched_later_does_not_replace_the_root():
    s = unsynced()
    s.get(V1, 7, 4, r=role(4) | 0x80).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert w.verdict == "violation" and [o.reachable for o in w.outstanding] == [True]


def test_an_unsync_seen_again_after_a_loss_replaces_the_old_record():
    # The loss may have hidden its sync: the new unsync line is a fresh record, not a second
    # SP printing alike, and it is not in doubt.
    s = built()
    s.unsync(V0, 4).lost(1).get(V1, 1, 4, created=0).unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = one(s)
    assert [(o.ambiguous, o.doubtful) for o in w.outstanding] == [(False, False)]
    assert w.verdict == "violation"


def test_open_rows_count_confirmed_open_windows_per_vcpu():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.FLUSH_SERVICE, V0)
    r = Replayer()
    r.feed(s.frame())
    assert r.open_rows() == {(TGID, 1, -1): 1}
    r.feed(Stream().run(V1).frame().assign(ts=10_000))
    assert r.open_rows() == {}
