"""Exact evidence, and the silent root switches that make inferred links unable to say ok.

Each trace below is hand-made from what the kernel does (file, function, version cited per
test).  The expected verdicts come from those kernel semantics: what a buggy kernel (one that
completes the guest flush without syncing) would have left the guest to run with, and what a
fixed one would have recorded instead.  A trace both kernels could have produced is never ok.
"""
from __future__ import annotations

import pytest

from kvmtrace.analysis import Replayer, replay_frame
from kvmtrace.outputs.text import render
from kvmtrace.schema import ROLE_GUEST_MODE, Kind

from model_scenarios import HELPER, V0, V1, Stream, built, role, unsynced


def windows(stream: Stream, meta=None) -> tuple[list, object]:
    r = Replayer(meta)
    closed = r.feed(stream.frame())
    return closed, r.finish()


def only(stream: Stream, meta=None):
    closed, res = windows(stream, meta)
    assert len(closed) == 1, [(w.opener, w.verdict) for w in closed]
    return closed[0], res


def snapshot(s: Stream, tid: int, *slots: tuple) -> Stream:
    """One ROOT_STATE read: slots (gfn, level, unsync_children[, unsync]) at one ts; the
    first is vcpu->arch.mmu->root, the rest prev_roots[]."""
    s.ts += 10
    for i, (gfn, level, children, *unsync) in enumerate(slots):
        s.rows.append({"ts": s.ts, "kind": int(Kind.ROOT_STATE), "tgid": s.tgid, "tid": tid,
                       "gfn": gfn, "role": role(level) if gfn >= 0 else -1, "value": i,
                       "unsync": unsync[0] if unsync else 0, "unsync_children": children})
    return s


def link(s: Stream, tid: int, child: int, child_level: int, parent: int, present: int = 1) -> Stream:
    return s.add(Kind.SP_LINK, tid, gfn=child, role=role(child_level), parent_gfn=parent,
                 parent_role=role(child_level + 1), value=present)


def cr_write(s: Stream, tid: int, cr: int, value: int = 0) -> Stream:
    """A CR write as the decoders give it: CR3 -> FLUSH_CR3 (need_flush 0 with the PCID
    no-flush bit 63), CR0 -> CR_WRITE."""
    if cr == 3:
        return s.add(Kind.FLUSH_CR3, tid, value=value, need_flush=0 if value < 0 else 1)
    return s.add(Kind.CR_WRITE, tid, level=cr, value=value)


# ============================================================================ exact path

def test_dirty_root_at_reentry_is_a_violation_for_exactly_that_window():
    """Two flushes on vCPU1.  The first is serviced with a sync (kvm_mmu_sync_roots syncs
    gfn 4) and KVM's root reads clean; the second is not, and the root it re-enters with
    still has unsync_children 1 (kvm_mmu_mark_parents_unsync set it, nothing cleared it)."""
    s = unsynced()
    s.pv(V1, 1, need_flush=1).sync(V1, 4)
    snapshot(s, V1, (1, 4, 0)).run(V1)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1)
    snapshot(s, V1, (1, 4, 1)).run(V1)
    closed, res = windows(s)
    assert [(w.verdict, w.evidence) for w in closed] == [("ok", "exact"), ("violation", "exact")]
    bad = closed[1]
    assert [o.gfn for o in bad.outstanding] == [4]
    (finding,) = res.findings
    assert finding["evidence"] == "exact" and finding["ts"] == bad.opened_ts
    assert finding["root_state"] == [{"slot": 0, "gfn": 1, "role": role(4), "unsync": 0,
                                      "unsync_children": 1}]
    assert res.evidence == {"exact": 2, "inferred": 0, "none": 0}
    assert res.to_dict()["evidence"]["exact"] == 2
    assert "evidence: 2 exact" in render(res) and "[evidence exact]" in render(res)


def test_clean_root_is_ok_exact_even_where_inferred_links_said_reachable():
    """KVM's own state wins over the replay's guesses: the root reads clean, so the link
    1 -> 2 -> 3 -> 4 the replay inferred from event order no longer exists (the SPTE was
    dropped without an event: drop_parent_pte)."""
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    snapshot(s, V1, (1, 4, 0), (7, 4, 0)).run(V1)
    w, res = only(s)
    assert (w.verdict, w.evidence) == ("ok", "exact")
    assert "none unsync" in w.reason and res.verdict == "ok"


def test_dirty_prev_root_is_a_violation():
    """5.16+ kvm_vcpu_flush_tlb_guest -> kvm_mmu_sync_prev_roots frees every prev root with
    unsync children (arch/x86/kvm/mmu/mmu.c); one still cached at re-entry can be switched
    back to by a PCID-NOFLUSH CR3 load without any sync (kvm_set_cr3 skips
    kvm_invalidate_pcid, fast_pgd_switch reuses it)."""
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    snapshot(s, V1, (9, 4, 0), (1, 4, 1)).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("violation", "exact")
    assert "prev root 1" in w.reason


def test_snapshot_taken_before_the_sync_finished_does_not_count():
    """A snapshot followed by a kvm_mmu_sync_page on the same thread was read while the
    flush was still being serviced: the sync decides (ok, inferred), not the stale read."""
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    snapshot(s, V1, (1, 4, 1))
    s.sync(V1, 4).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("ok", "inferred")


@pytest.mark.parametrize("where", ["other-thread", "before-flush", "no-root"])
def test_snapshots_that_do_not_describe_the_reentry_decide_nothing(where):
    s = unsynced()
    if where == "before-flush":
        snapshot(s, V1, (1, 4, 0))
    s.pv(V1, 1, need_flush=1)
    if where == "other-thread":
        snapshot(s, V0, (1, 4, 0))
    if where == "no-root":                  # between kvm_mmu_unload and kvm_mmu_load
        snapshot(s, V1, (-1, 4, 0))
    s.run(V1)
    w, _ = only(s)
    # The event stream decides: the inferred path from root 1, or, after a read showing no
    # root at all, an unknown root (kvm_mmu_load will allocate one): suspect.
    assert w.evidence != "exact"
    assert w.verdict == ("suspect" if where == "no-root" else "violation")


def test_dirt_that_another_vcpu_may_have_made_after_the_flush_is_not_exact():
    """vCPU0 writes a guest page table after vCPU1's flush was serviced: that SP goes unsync
    legally and marks the shared root (kvm_mmu_mark_parents_unsync), so the dirty root does
    not prove the flush left anything.  Here the SP unsync at the flush was synced: ok."""
    s = built()
    s.get(V1, 5, 1).run(V1)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).sync(V1, 4)
    s.unsync(V0, 5)                          # after the flush: legal
    snapshot(s, V1, (1, 4, 1)).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("ok", "inferred")


def test_snapshot_split_across_chunks_gives_the_same_result():
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    snapshot(s, V1, (9, 4, 0), (1, 4, 1), (8, 4, 0)).run(V1)
    frame = s.frame()
    whole = replay_frame(frame).to_dict()
    assert whole["verdict"] == "violation" and whole["evidence"]["exact"] == 1
    for cut in range(1, len(frame)):
        r = Replayer()
        r.feed(frame.iloc[:cut])
        r.feed(frame.iloc[cut:])
        assert r.finish().to_dict() == whole, cut


def test_exact_links_give_a_violation_its_named_pages():
    """sp_link rows (read from the child's parent_ptes) link gfn 40 under the real root."""
    s = Stream()
    s.pv(V1, 1)
    snapshot(s, V1, (1, 4, 0))
    link(s, V1, 20, 3, 1)
    link(s, V1, 30, 2, 20)
    link(s, V1, 40, 1, 30)
    s.run(V1)
    s.unsync(V0, 40).run(V0)
    s.pv(V1, 1, need_flush=1)
    snapshot(s, V1, (1, 4, 1)).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("violation", "exact")
    assert [(o.gfn, o.reachable) for o in w.outstanding] == [(40, True)]


# ============================================================================ silent root switches

def test_cr3_load_served_from_prev_roots():
    """arch/x86/kvm/x86.c kvm_set_cr3 -> arch/x86/kvm/mmu/mmu.c kvm_mmu_new_pgd ->
    fast_pgd_switch -> cached_root_find_and_keep_current (v6.6): the root becomes the cached
    prev root 1 with no kvmmmu event.  Before the CR3 write vCPU1 ran on root 9 (gfn 4 is
    not below it); after it, on root 1, whose gfn 4 is unsync.  Nothing syncs: a buggy
    kernel leaves the guest on stale gfn 4, a fixed one would have synced it (sync_page)."""
    def story(cr3: int | None) -> Stream:
        s = unsynced()
        s.pv(V1, 1).get(V1, 9, 4).run(V1)    # a second address space: root 9, root 1 cached
        if cr3 is not None:                  # PCID-NOFLUSH load of CR3 -> root 1, no get_page
            s.add(Kind.FLUSH_CR3, V1, value=cr3, need_flush=0)
        s.pv(V1, 1, need_flush=1).run(V1)
        return s
    # The CR3 value names the frame: is_root_usable() matches pgd and role, so the new root
    # is the SP of frame 1 with the old root's role.
    w, _ = only(story(0x1000 - (1 << 63)))
    assert (w.verdict, w.evidence) == ("violation", "inferred")
    # Emulated mov cr3 (PVM): the value is not in the event; the root is unknown.
    w, _ = only(story(-1))
    assert (w.verdict, w.evidence) == ("suspect", "none")
    # No CR event recorded: the replay believes root 9, where gfn 4 is not: never ok.
    w, _ = only(story(None))
    assert w.verdict == "suspect" and w.outstanding[0].reachable is False
    # With exact evidence KVM's own root slots say it.
    s = story(-1)
    s.rows.pop()                             # the run: re-enter with a snapshot first
    snapshot(s, V1, (1, 4, 1), (9, 4, 0)).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("violation", "exact")


def test_cr3_write_of_the_current_cr3_keeps_the_root():
    """kvm_set_cr3: a CR3 equal to the current one skips kvm_mmu_new_pgd (the root stays)."""
    s = unsynced()
    s.add(Kind.FLUSH_CR3, V1, value=0x1000, need_flush=1).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    closed, _ = windows(s)
    assert [(w.verdict, w.evidence) for w in closed] == [("violation", "inferred")] * 2


def test_unsync_page_only_under_a_cached_prev_root():
    """The SP is only under root 1, cached in prev_roots while the vCPU runs on root 9
    (mmu_alloc_root for CR3 9 after a CR3 write).  At the flush 5.16+ frees the prev root
    (kvm_mmu_sync_prev_roots, no event); a buggy kernel keeps it, and a later PCID-NOFLUSH
    CR3 load returns to it unsynced.  Tracepoints cannot tell the two apart: suspect."""
    s = unsynced()
    cr_write(s, V1, 3, 0x9000 - (1 << 63))    # no-flush load of a new CR3
    s.get(V1, 9, 4).run(V1)                   # new root 9; root 1 goes to prev_roots
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect" and w.outstanding[0].reachable is False


def test_nested_vmexit_back_to_l1s_cached_root():
    """arch/x86/kvm/vmx/nested.c nested_vmx_vmexit -> nested_vmx_load_cr3 -> kvm_mmu_new_pgd
    (v6.6): L1's root comes back from prev_roots with no kvmmmu event.  The flush is
    serviced while L2 runs (its root 9 has nothing unsync); KVM then reflects an exit to L1
    (kvm_check_nested_events, after the requests were serviced) and L1 runs on root 1, whose
    gfn 4 is unsync."""
    s = unsynced()
    s.add(Kind.NESTED_ENTER, V1, value=0x9000)
    s.get(V1, 9, 4, r=role(4) | ROLE_GUEST_MODE).run(V1)
    s.pv(V1, 1, need_flush=1)
    s.add(Kind.NESTED_EXIT, V1)
    s.run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect" and w.root_switched


def test_smm_sps_print_like_the_others():
    """arch/x86/kvm/smm.c kvm_smm_changed -> kvm_mmu_reset_context: SMM runs on SPs with
    role.smm set, which KVM_MMU_PAGE_PRINTK (arch/x86/kvm/mmu/mmutrace.h) does not print.
    vCPU1 is in SMM on a root printing like root 1; vCPU0 writes guest table gfn 4, and
    mmu_try_to_unsync_pages unsyncs both SPs of that gfn (two kvm_mmu_unsync_page lines that
    print alike).  vCPU0 syncs its own; vCPU1's flush syncs nothing: its SMM copy stays
    unsync under the root it re-enters with - yet every unsync line got a sync line."""
    s = built()
    s.add(Kind.SMM_TRANSITION, V1, value=1)
    s.get(V1, 1, 4, created=1).run(V1)        # the SMM root, printed like root 1
    s.get(V1, 2, 3).get(V1, 3, 2).get(V1, 4, 1).run(V1)
    s.unsync(V0, 4).unsync(V0, 4).run(V0)     # both SPs of gfn 4 go unsync
    s.pv(V0, 0, need_flush=1).sync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    closed, _ = windows(s)
    assert closed[-1].verdict == "suspect" and closed[-1].outstanding[0].ambiguous


def test_two_sps_printing_identically_are_not_one():
    """Same as above with cr0_wp: a vCPU running with CR0.WP clear shadows gfn 4 with a
    role differing only in cr0_wp (not printed).  Before this, a sync of either took the one
    printed key off the unsync set and the window read ok."""
    s = unsynced()
    s.unsync(V0, 4).run(V0)                   # the second SP of gfn 4 (kernel: only if not unsync)
    s.pv(V1, 1, need_flush=1).sync(HELPER, 4).run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect" and w.outstanding[0].ambiguous


def test_fetch_emits_get_page_only_for_absent_sptes():
    """arch/x86/kvm/mmu/mmu.c kvm_mmu_get_child_sp (v6.1): a present SPTE returns -EEXIST and
    FNAME(fetch) (paging_tmpl.h) goes on without kvm_mmu_get_page.  vCPU1 (root 1, fresh)
    faults where its level-3 and level-2 SPTEs are present: only the level-1 SP gfn 40 is
    fetched, and the replay has no parent for it on this thread; the one link it knows
    hangs gfn 40 under vCPU0's tree.  gfn 40 is below vCPU1's real root all the same."""
    s = Stream()
    s.pv(V0, 0).get(V0, 50, 4).get(V0, 51, 3).get(V0, 52, 2).get(V0, 40, 1).run(V0)
    s.pv(V1, 1).get(V1, 1, 4).run(V1)
    s.get(V1, 40, 1, created=0).run(V1)       # only the absent level
    s.unsync(V0, 40).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect" and w.outstanding[0].reachable is False


def test_one_thread_running_two_vcpus():
    """KVM runs a vCPU on whichever thread calls KVM_RUN on its fd (virt/kvm/kvm_main.c
    kvm_vcpu_ioctl): thread 11 runs vCPU1 (root 1, gfn 4 below it), then vCPU2 (its own
    root 9), then vCPU1 again, whose flush syncs nothing.  The thread's latest root (9) is
    not vCPU1's."""
    s = unsynced()
    s.pv(V1, 2).get(V1, 9, 4).run(V1)         # vCPU2 loaded on the same thread
    s.pv(V1, 1, need_flush=1).run(V1)         # vCPU1 again
    w, res = only(s)
    assert w.verdict == "suspect" and w.vcpu == 1 and w.outstanding[0].reachable is None
    assert any("different vCPU id" in n for n in res.notes)


def test_level_4_sp_is_no_root_under_5_level_paging():
    """Under 5-level paging mmu_alloc_root allocates a level-5 root and FNAME(fetch) fetches
    level-4 SPs mid-life like any table.  vCPU1's root is unknown (the trace started after
    it was loaded); it fetches level-4 SP 60.  That is not its root."""
    s = Stream()
    s.pv(V0, 0).get(V0, 70, 5).get(V0, 71, 4).get(V0, 72, 3).get(V0, 73, 2).get(V0, 4, 1).run(V0)
    s.pv(V1, 1).get(V1, 60, 4, created=0).run(V1)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect"


def test_pae_guest_has_four_level_2_roots():
    """A 32-bit PAE guest: mmu_alloc_shadow_roots allocates four level-2 roots (one per
    PDPTE, mmu->pae_root[i]) - no level-4 root.  vCPU1 left long mode (EFER write) and its
    old level-4 root 1 is gone; gfn 4 sits under its third PAE root."""
    s = unsynced()
    s.add(Kind.EFER_WRITE, V1, value=0)
    for gfn in (80, 81, 82, 83):
        s.get(V1, gfn, 2)
    s.get(V1, 4, 1, created=0).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect"


def test_cr8_writes_switch_nothing():
    s = unsynced()
    cr_write(s, V1, 8, 2)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("violation", "inferred")


def test_sync_on_the_vcpus_thread_covers_its_root_unless_it_switched_after():
    """kvm_mmu_sync_roots' mmu_sync_children loops until mmu_unsync_walk finds nothing under
    the root: with its syncs seen on vCPU1's thread, the SPs still unsync are under other
    roots (ok).  A nested exit after the sync puts the vCPU on another root: suspect."""
    s = unsynced()
    s.pv(12, 2).get(12, 9, 4).get(12, 20, 3).get(12, 21, 2).get(12, 22, 1).run(12)
    s.unsync(12, 22).run(12)
    s.pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)
    w, _ = only(s)
    assert (w.verdict, w.evidence) == ("ok", "inferred") and "other roots" in w.reason
    s = unsynced()
    s.pv(12, 2).get(12, 9, 4).get(12, 20, 3).get(12, 21, 2).get(12, 22, 1).run(12)
    s.unsync(12, 22).run(12)
    s.pv(V1, 1, need_flush=1).sync(V1, 4).add(Kind.NESTED_EXIT, V1).run(V1)
    w, _ = only(s)
    assert w.verdict == "suspect"


# ============================================================================ real fixtures

def test_real_multi_address_space_run_is_ok_on_exact_evidence_alone():
    """fixtures/real/exercise_3space: three page-table trees per vCPU, CR3 switches hitting
    prev_roots, recorded with the exact probes; its no-sync copy has one window's syncs
    moved after the guest ran (the root's unsync_children says so)."""
    from pathlib import Path
    from kvmtrace.pipeline.offline import analyze_path
    real = Path(__file__).resolve().parent.parent / "fixtures" / "real"
    ok = analyze_path(real / "exercise_3space.parquet")
    assert ok.verdict == "ok" and ok.windows["meaningful"] > 0
    assert ok.evidence == {"exact": ok.windows["total"], "inferred": 0, "none": 0}
    bad = analyze_path(real / "exercise_3space_nosync.parquet")
    assert bad.verdict == "violation" and bad.windows["violation"] == 1
    assert bad.windows["ok"] == ok.windows["total"] - 1
    (finding,) = bad.findings
    assert finding["evidence"] == "exact" and finding["root_state"][0]["unsync_children"] >= 1
    # The same runs as tracefs text (no exact evidence): never ok where the sync is missing,
    # and no violation claimed from guessed links.
    for name in ("exercise_3space.ftrace.txt.gz", "exercise_3space_nosync.ftrace.txt.gz"):
        text = analyze_path(real / name)
        assert text.windows["total"] == ok.windows["total"] and text.evidence["exact"] == 0
        assert text.verdict != "ok" and text.windows["violation"] == 0, name
    nosync_text = analyze_path(real / "exercise_3space_nosync.ftrace.txt.gz")
    assert nosync_text.windows["ok"] < analyze_path(real / "exercise_3space.ftrace.txt.gz").windows["ok"]
