"""``kvmtrace exercise --address-spaces N``: several page-table trees per vCPU, shared
last-level tables, CR3 switches between passes."""
from __future__ import annotations

import struct

import pytest

from kvmtrace.exercise import ExerciseConfig, unavailable_reason
from kvmtrace.exercise.layout import ENTRIES, FRAME_MASK, Layout, shared_table

REASON = unavailable_reason()


def entries(layout: Layout, gpa: int) -> list[int]:
    pages = dict(layout.page_table_pages(user=True))
    return pages[gpa]


def test_one_space_keeps_the_old_layout():
    a, b = Layout.build(3, 8), Layout.build(3, 8, 1)
    assert a == b and a.address_spaces == 1 and a.spaces == tuple(t[0] for t in a.trees)


def test_trees_share_even_tables_and_copy_odd_ones():
    lay = Layout.build(3, 8, 3)
    for v in range(3):
        trees = lay.trees[v]
        assert len({t.pml4 for t in trees}) == 3 and len({t.pd for t in trees}) == 3
        for t in range(8):
            pts = {tree.window_pts[t] for tree in trees}
            assert len(pts) == (1 if shared_table(t, 3) else 3)
            # every tree's PD points at its copy of table t (shared: one PT, three parents)
            for tree in trees:
                pde = entries(lay, tree.pd)[lay.sys_pts + t]
                assert pde & FRAME_MASK == tree.window_pts[t]
        assert len(lay.pte_addresses(v, 0, 1)) == 1 and len(lay.pte_addresses(v, 1, 1)) == 3
    # No page is used twice across vCPUs, and the tables live in the system region.
    pages = [p for tr in lay.trees for t in tr for p in (t.pml4, t.pdpt, t.pd, *t.window_pts)]
    assert len(set(pages)) == 3 * (3 * 3 + 4 + 4 * 3)
    assert max(pages) < lay.window_base


def test_every_tree_maps_the_same_frames():
    lay = Layout.build(2, 4, 4)
    mem = bytearray(lay.memory_size)
    lay.write_page_tables(mem, user=True)
    for tree in lay.trees[1]:
        for t, pt in enumerate(tree.window_pts):
            got = struct.unpack_from(f"<{ENTRIES}Q", mem, pt)
            assert got[3] & FRAME_MASK == lay.frame(t, 1, 1)


@pytest.mark.parametrize("n", [0, 17])
def test_bad_address_space_counts(n):
    with pytest.raises(ValueError, match="address"):
        ExerciseConfig(address_spaces=n).validate()


def test_stores_bound_counts_every_copy():
    with pytest.raises(ValueError, match="address spaces"):
        ExerciseConfig(vcpus=9, pages=8, address_spaces=3).validate()


@pytest.mark.live
@pytest.mark.skipif(REASON is not None, reason=f"exercise: {REASON}")
@pytest.mark.parametrize("flush", [True, False])
def test_switching_trees_keeps_the_stale_read_check(flush):
    from kvmtrace.exercise import run_exercise
    r = run_exercise(ExerciseConfig(vcpus=3, rounds=12, pages=3, seed=5, flush=flush,
                                    address_spaces=3))
    assert r.extra["address_spaces"] == 3
    # every post-flush pass switches; the control switches every second round only
    assert r.extra["cr3_loads"] >= (12 if flush else 5)
    if flush:
        assert r.stale_reads == [] and r.flushes_requested == 24
    elif r.exposed:
        # the control still sees staleness: it switches before the remap only
        assert any(s.after_flush for s in r.stale_reads)
    if not r.extra["pcid"]:
        assert r.extra["cr3_noflush_loads"] == 0
