"""ShadowMMU's bookkeeping in detail: pages and their level, the gfn/level index, links both
ways, zaps of SPs printing alike, unsync records (aliases, refresh after a loss, partial
syncs), and reachability's "unknown" cases.  What KVM does for each is in shadow.py's
docstrings (struct kvm_mmu_page, kvm_mmu_unsync_page, kvm_sync_page, kvm_mmu_prepare_zap_page)."""
from __future__ import annotations

from kvmtrace.analysis.shadow import ShadowMMU, role_family

from test_model_shadow import L1, L2, L3, ROOT, tree   # a four-level chain of linked SPs


def test_a_page_takes_its_level_or_the_roles_and_is_indexed_by_it():
    s = ShadowMMU()
    a = s.page(7, 0x3702, -1)                # level unknown: the role's bits 0-3
    b = s.page(8, 0x3702, 3)
    assert (a.level, b.level, a.key, a.direct) == (2, 3, (7, 0x3702), False)
    assert s.page(9, 0x3782, 2).direct is True        # role.direct is bit 7
    assert s.find(7, 2) is a and s.find(8, 3) is b and s.find(7, 3) is None
    assert s.page(7, 0x3702, 2) is a and a.created_in_trace is False


def test_the_role_family_ignores_level_quadrant_and_access_only():
    assert role_family(0x3701) == role_family(0x3704) == role_family(0x3704 | 0x60 | 0x700)
    assert role_family(0x3704) != role_family(0x3704 | (1 << 17))     # guest_mode
    assert role_family(0x3704) != role_family(0x3704 | (1 << 7))      # direct


def test_find_with_a_role_keeps_only_the_family_and_needs_exactly_one():
    s = ShadowMMU()
    s.page(2, 0x3703, 3)
    s.page(2, 0x3703 | (1 << 17), 3)
    assert s.find(2, 3, like_role=0x3704 | (1 << 17)).role == 0x3703 | (1 << 17)
    assert s.find(2, 3, like_role=0x3704 | (1 << 16)) is None        # neither fits
    s.page(5, 0x3703, 3)
    # The role only chooses among several SPs of the table; a lone one is the one.
    assert s.find(5, 3, like_role=0x3704 | (1 << 17)).gfn == 5
    assert s.find(5, 3).gfn == 5


def test_links_go_both_ways_and_unlink_removes_both():
    s = ShadowMMU()
    p, c = s.page(*ROOT, 4), s.page(*L3, 3)
    s.link(p, c)
    assert (p.children, c.parents) == ({L3}, {ROOT})
    s.link(p, p)                              # an SP is never its own child
    assert p.parents == set() and p.children == {L3}
    s.unlink(p, c)
    assert (p.children, c.parents) == (set(), set())


def test_a_recreated_page_loses_its_links_both_ways():
    s = tree()
    s.page(*L2, 2, created=True)              # the old SP was freed unseen
    assert s.pages[L3].children == set() and s.pages[L1].parents == set()
    assert s.pages[L2].created_in_trace is True
    t = tree(created=False)
    t.page(*L2, 2, created=True)
    assert t.pages[L2].created_in_trace is True and t.pages[L3].created_in_trace is False


def test_a_zap_drops_the_page_from_the_index_and_its_neighbours():
    s = tree()
    assert s.zap(L2) is False                 # it was not unsync
    assert L2 not in s.pages and s.find(3, 2) is None
    assert s.pages[L3].children == set() and s.pages[L1].parents == set()
    s.page(3, 0x3702 | (1 << 17), 2)
    s.page(3, 0x3702, 2)
    s.zap((3, 0x3702))
    assert s.find(3, 2).role == 0x3702 | (1 << 17)     # the other SP of that table stays
    assert s.zap((99, 0x3701)) is False                # unknown key: nothing to do


def test_a_zap_of_one_of_two_sps_printing_alike_leaves_the_record():
    # kvm_mmu_prepare_zap_page fires sync_page for an unsync SP (kvm_unlink_unsync_page):
    # that event, not the zap, takes one SP off a key shared by two.
    s = tree()
    s.mark_unsync(*L1, 1, seq=1, ts=10, tid=5)
    s.mark_unsync(*L1, 1, seq=2, ts=20, tid=5)
    assert s.zap(L1) is True and s.unsync[L1].count == 2
    s.mark_sync(L1)
    assert s.unsync[L1].count == 1 and s.unsync[L1].partial


def test_unsync_records_count_aliases_and_stay_ordered():
    s = ShadowMMU()
    s.mark_unsync(*L1, 1, seq=3, ts=30, tid=7)
    rec = s.unsync[L1]
    assert (rec.seq, rec.ts, rec.tid, rec.count, rec.ambiguous, rec.partial, rec.last_seq) == (
        3, 30, 7, 1, False, False, 3)
    assert s.alias_seq == -1 and L1 in s.pages
    s.mark_unsync(*L1, 1, seq=5, ts=50, tid=8)         # a second SP printing alike
    assert (rec.seq, rec.count, rec.ambiguous, rec.last_seq, s.alias_seq) == (3, 2, True, 5, 5)
    assert s.fresh_since(5) and s.fresh_since(4) and not s.fresh_since(6)
    assert s.mark_sync(L1) is rec and rec.count == 1 and rec.partial
    assert s.mark_sync(L1) is rec and L1 not in s.unsync
    assert s.mark_sync(L1) is None


def test_a_record_older_than_a_loss_is_refreshed_not_counted_twice():
    s = ShadowMMU()
    s.mark_unsync(*L1, 1, seq=3, ts=30, tid=7)
    s.mark_unsync(9, 0x3701, 1, seq=4, ts=40, tid=7)
    s.mark_unsync(*L1, 1, seq=6, ts=60, tid=8, refresh_before=5)
    rec = s.unsync[L1]
    assert (rec.seq, rec.ts, rec.tid, rec.count, rec.ambiguous) == (6, 60, 8, 1, False)
    assert list(s.unsync) == [(9, 0x3701), L1]          # re-inserted at the end
    s.mark_unsync(*L1, 1, seq=7, ts=70, tid=8, refresh_before=6)
    assert s.unsync[L1].count == 2                       # seq 6 is not older than 6


def test_fresh_since_looks_at_the_newest_record_only():
    s = ShadowMMU()
    assert not s.fresh_since(0)
    s.mark_unsync(*L1, 1, seq=3, ts=30, tid=7)
    s.mark_unsync(9, 0x3701, 1, seq=8, ts=80, tid=7)
    assert s.fresh_since(8) and not s.fresh_since(9)
    assert [k for k, _ in s.unsync_before(8)] == [L1]
    assert [k for k, _ in s.unsync_before(3)] == []


def test_reachability_is_unknown_through_a_page_that_predates_the_trace():
    s = tree()
    s.pages[L2].created_in_trace = False      # its parents may predate the trace
    other = s.page(9, 0x3704, 4, created=True)
    assert s.reachable(L1, other.key) is None
    assert s.reachable(L1, ROOT) is True


def test_reachability_is_unknown_for_a_page_the_model_never_saw():
    s = tree()
    other = s.page(9, 0x3704, 4, created=True)
    assert s.reachable((77, 0x3701), other.key) is None
    s.pages[L2].parents.add((55, 0x3703))     # a parent zapped since: gone from pages
    assert s.reachable(L1, other.key) is None


def test_reachability_through_a_second_parent_and_around_cycles():
    s = tree()
    alt = s.page(6, 0x3703, 3, created=True)
    s.link(alt, s.pages[L2])
    s.link(s.pages[L2], alt)                   # a bogus cycle must not loop
    root2 = s.page(8, 0x3704, 4, created=True)
    s.link(root2, alt)
    assert s.reachable(L1, root2.key) is True
    other = s.page(9, 0x3704, 4, created=True)
    assert s.reachable(L1, other.key) is False
