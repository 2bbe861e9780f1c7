"""Which rows the vectorised selection hands to the replay (kvmtrace/analysis/selection.py).

The module docstring is the specification: every shadow-page / state row and every gate
(a flush request with need_flush set, a flush-path function), of the evidence only the
first row of each thread after a gate and each thread's first in the chunk, rows where a
thread's vCPU id changes, and each distinct guest page-table edge once.  The chunks here
interleave several threads over more than 16 rows, so an unstable sort (numpy sorts up to
16 elements stably by insertion) would show.  And whatever it keeps, the result must equal
the per-event reference's.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from kvmtrace.analysis import Replayer
from kvmtrace.analysis.selection import (NEEDED, ChunkSelector, _first_occurrences,
                                         _first_per_code, gate_mask, thread_keys)
from kvmtrace.schema import Chunk, Kind, SchemaError, as_chunk
from kvmtrace.sources.frame import from_rows

from model_scenarios import role

A, B, C = 10, 11, 12          # three vCPU threads of VM 1


def rows_of(spec) -> list[dict]:
    """(tid, kind, fields) triples -> rows 10 ns apart."""
    return [{"ts": 1000 + 10 * i, "tgid": 1, "tid": tid, "kind": int(kind), **kw}
            for i, (tid, kind, kw) in enumerate(spec)]


def select(rows, selector=None):
    selector = selector or ChunkSelector()
    return selector.select(as_chunk(from_rows(rows), NEEDED))


def interleaved():
    """Three threads; each runs, is flushed (A, C) or only loaded (B: need_flush 0), runs."""
    spec = []
    for t in range(6):
        for tid in (A, B, C):
            spec.append((tid, Kind.SPTE_INSTALL, {}))
        if t == 2:
            spec += [(A, Kind.FLUSH_REQUEST_PV, {"vcpu": 0, "need_flush": 1}),
                     (B, Kind.FLUSH_REQUEST_PV, {"vcpu": 1, "need_flush": 0}),
                     (C, Kind.FLUSH_REQUEST_GUEST, {}),
                     (B, Kind.SP_UNSYNC, {"gfn": 4, "role": role(1), "level": 1})]
    return rows_of(spec)


def test_evidence_kept_is_each_threads_first_and_the_first_after_a_gate():
    rows = interleaved()
    sel = select(rows)
    kept = sel.rows.tolist()
    first = {tid: min(i for i, r in enumerate(rows) if r["tid"] == tid) for tid in (A, B, C)}
    gates = [i for i, r in enumerate(rows) if r["kind"] in (Kind.FLUSH_REQUEST_GUEST,)
             or (r["kind"] == Kind.FLUSH_REQUEST_PV and r.get("need_flush") == 1)]
    after = [min(j for j in range(g + 1, len(rows)) if rows[j]["tid"] == rows[g]["tid"]
                 and rows[j]["kind"] == Kind.SPTE_INSTALL) for g in gates]
    unsync = [i for i, r in enumerate(rows) if r["kind"] == Kind.SP_UNSYNC]
    # B's need_flush 0 request names vCPU 1 for the first time: kept for its id, no gate.
    named = [i for i, r in enumerate(rows) if r.get("vcpu", -1) >= 0]
    assert kept == sorted(set(first.values()) | set(gates) | set(after) | set(unsync)
                          | set(named))
    assert len(rows) > 16


def test_rows_naming_a_new_vcpu_on_a_thread_are_kept():
    spec = [(A, Kind.SPTE_INSTALL, {})] * 3
    spec += [(A, Kind.GUEST_ENTRY, {"vcpu": 0}), (A, Kind.GUEST_ENTRY, {"vcpu": 0}),
             (A, Kind.GUEST_ENTRY, {"vcpu": 1}), (A, Kind.GUEST_ENTRY, {"vcpu": 1}),
             (A, Kind.GUEST_ENTRY, {"vcpu": 0})]
    sel = select(rows_of(spec))
    assert sel.rows.tolist() == [0, 3, 5, 7]


def test_a_pv_request_without_need_flush_is_no_gate():
    kind = np.array([Kind.FLUSH_REQUEST_PV] * 3 + [Kind.FLUSH_REQUEST_GUEST], dtype=np.uint8)
    assert gate_mask(kind, np.array([1, 0, -1, -1])).tolist() == [True, False, False, True]


def test_thread_keys_stand_in_for_missing_tids_by_vcpu():
    tid = np.array([5, -1, -1, 0])
    vcpu = np.array([0, 0, 3, 1])
    assert thread_keys(tid, vcpu).tolist() == [5, -2, -5, 0]
    assert thread_keys(np.array([0, 7]), np.array([1, 2])).tolist() == [0, 7]


def test_incomplete_rows_are_counted_per_missing_field():
    rows = rows_of([(A, Kind.SP_UNSYNC, {"gfn": -1, "role": role(1)}),
                    (A, Kind.SP_SYNC, {"gfn": 0, "role": -1}),
                    (A, Kind.SP_GET, {"gfn": 0, "role": 0, "level": 4}),   # gfn 0 is a gfn
                    (A, Kind.FLUSH_REQUEST_PV, {"vcpu": 0, "need_flush": -1}),
                    (A, Kind.FLUSH_REQUEST_PV, {"vcpu": 0, "need_flush": 0})])
    assert select(rows).incomplete == 3


def test_first_occurrence_helpers():
    assert _first_occurrences(np.array([7, 7, 3, 7, 3, 9])).tolist() == [0, 2, 5]
    codes = np.array([2, 1, 2, 0, 1, 0])
    mask = np.array([False, True, True, False, True, True])
    assert _first_per_code(codes, mask) == {1: 1, 2: 2, 0: 5}
    assert _first_per_code(codes, np.zeros(6, dtype=bool)) == {}


def test_unknown_and_out_of_range_kinds_are_schema_errors():
    rows = rows_of([(A, Kind.SPTE_INSTALL, {})])
    rows[0]["kind"] = 19                               # unassigned code
    with pytest.raises(SchemaError, match="unknown event kind code 19"):
        select(rows)
    chunk = as_chunk(from_rows(rows_of([(A, Kind.SPTE_INSTALL, {})] * 2)), NEEDED)
    cols = dict(chunk.cols)
    cols["kind"] = np.array([32, 300], dtype=np.int64)
    with pytest.raises(SchemaError, match="unknown event kind code 300"):
        ChunkSelector().select(Chunk(cols))


def test_order_counters_of_a_chunk():
    rows = rows_of([(A, Kind.SPTE_INSTALL, {})] * 5)
    rows[1]["ts"], rows[3]["ts"] = 1100, 1000         # two inversions, one tie after sorting
    sel = select(rows)
    assert (sel.reordered, sel.ambiguous, sel.late) == (2, 1, 0)
    assert sel.cols["ts"].tolist() == sorted(r["ts"] for r in rows)
    selector = ChunkSelector()
    select(rows_of([(A, Kind.SPTE_INSTALL, {})] * 3), selector)     # up to ts 1020
    late = rows_of([(A, Kind.SPTE_INSTALL, {})] * 4)                 # 1000 .. 1030
    assert select(late, selector).late == 2


# ----------------------------------------------------------------------------- walks

def walk(tid: int, tables: list[int], leaf: int, top: int = 4) -> list:
    spec = [(tid, Kind.WALK_START, {"value": 0x1000})]
    for level, nxt in zip(range(top, 0, -1), list(tables) + [leaf]):
        spec.append((tid, Kind.WALK_ELEMENT, {"level": level, "value": (nxt << 12) | 0x27}))
    return spec


def test_each_walk_edge_is_handed_on_once_with_its_parent_table():
    spec = walk(A, [2, 3, 4], 0x50) + walk(B, [2, 3, 4], 0x51) + walk(A, [2, 3, 5], 0x52)
    rows = rows_of(spec)
    sel = select(rows)
    edges = {i: int(sel.cols["aux"][i]) for i in sel.rows.tolist()
             if rows[i]["kind"] == Kind.WALK_ELEMENT}
    # A's first walk: root -> 2 (top, parent -1), 2 -> 3, 3 -> 4; the L1 entry names a
    # data page (a leaf).  B repeats A's walk: only its top edge is new (it depends on B's
    # root).  A's second walk adds 3 -> 5 only.
    assert edges == {1: -1, 2: 2, 3: 3, 6: -1, 13: 3}


def test_leaf_entries_name_no_table():
    # Not present; a 2M page (PSE at level 2); a 1G page (PSE at level 3); any level-1 entry.
    spec = [(A, Kind.WALK_START, {"value": 0}),
            (A, Kind.WALK_ELEMENT, {"level": 4, "value": (2 << 12) | 0x27}),
            (A, Kind.WALK_ELEMENT, {"level": 3, "value": (3 << 12) | 0xA7}),       # 1G
            (A, Kind.WALK_START, {"value": 0}),
            (A, Kind.WALK_ELEMENT, {"level": 4, "value": (2 << 12) | 0x27}),
            (A, Kind.WALK_ELEMENT, {"level": 3, "value": (6 << 12) | 0x27}),
            (A, Kind.WALK_ELEMENT, {"level": 2, "value": (7 << 12) | 0xA7}),       # 2M
            (A, Kind.WALK_START, {"value": 0}),
            (A, Kind.WALK_ELEMENT, {"level": 4, "value": (8 << 12) | 0x26}),       # absent
            (A, Kind.WALK_ELEMENT, {"level": 4, "value": (9 << 12) | 0xA7})]       # L4: table
    rows = rows_of(spec)
    sel = select(rows)
    walked = [i for i in sel.rows.tolist() if rows[i]["kind"] == Kind.WALK_ELEMENT]
    assert walked == [1, 5, 9]


def test_a_walk_cut_by_a_chunk_boundary_keeps_its_parent():
    spec = walk(A, [2, 3, 4], 0x50)
    rows = rows_of(spec)
    selector = ChunkSelector()
    first = select(rows[:3], selector)           # start, L4 -> 2, L3 -> 3
    second = select(rows[3:], selector)           # L2 -> 4, L1 (leaf)
    assert first.cols["aux"][2] == 2 and second.cols["aux"][0] == 3
    assert second.rows.tolist() == [0]


def test_walks_of_two_vms_are_kept_apart():
    spec = walk(A, [2, 3, 4], 0x50)
    rows = rows_of(spec) + [{**r, "tgid": 2, "ts": r["ts"] + 1000} for r in rows_of(spec)]
    sel = select(rows)
    walked = [i for i in sel.rows.tolist() if rows[i]["kind"] == Kind.WALK_ELEMENT]
    assert walked == [1, 2, 3, 6, 7, 8]


# ----------------------------------------------------------------------------- vs. the reference

def random_stream(seed: int, n: int = 160) -> list[dict]:
    """A fixed pseudo-random mix of everything the model reads, over three threads (one
    without a tid, as sources without tids give), with chunk-sized runs of evidence."""
    rnd = random.Random(seed)
    spec = [(A, Kind.FLUSH_REQUEST_PV, {"vcpu": 0, "need_flush": 0}), (A, Kind.SP_GET, {"gfn": 1, "role": role(4), "level": 4, "created": 1}),
            (B, Kind.FLUSH_REQUEST_PV, {"vcpu": 1, "need_flush": 0}), (B, Kind.SP_GET, {"gfn": 1, "role": role(4), "level": 4, "created": 0})]
    for _ in range(n):
        tid = rnd.choice((A, B, -1))
        extra = {"vcpu": 2} if tid == -1 else {}
        r = rnd.random()
        if r < 0.35:
            spec.append((tid, rnd.choice((Kind.SPTE_INSTALL, Kind.GUEST_ENTRY, Kind.PIO)), extra))
        elif r < 0.45:
            spec.append((tid, Kind.FLUSH_REQUEST_PV, {"vcpu": extra.get("vcpu", 0 if tid == A else 1),
                                                      "need_flush": rnd.choice((0, 1))}))
        elif r < 0.55:
            g = rnd.choice((4, 5))
            spec.append((tid, rnd.choice((Kind.SP_UNSYNC, Kind.SP_SYNC)), {"gfn": g, "role": role(1), "level": 1, **extra}))
        elif r < 0.65:
            spec += [(tid, Kind.SP_GET, {"gfn": 2, "role": role(3), "level": 3, "created": 0, **extra}),
                     (tid, Kind.SP_GET, {"gfn": 3, "role": role(2), "level": 2, "created": 0, **extra}),
                     (tid, Kind.SP_GET, {"gfn": rnd.choice((4, 5)), "role": role(1), "level": 1, "created": 0, **extra})]
        elif r < 0.8:
            spec += [(t, k, {**kw, **extra}) for t, k, kw in walk(tid, [2, 3, rnd.choice((4, 5))], 0x50)]
        elif r < 0.85:
            spec.append((tid, Kind.SYNC_ROOTS, extra))
        elif r < 0.9:
            spec.append((tid, Kind.GUEST_ENTRY, {"vcpu": rnd.choice((0, 1, 3))}))
        else:
            spec.append((tid, Kind.CR_WRITE, {"level": 3, **extra}))
    return rows_of(spec)


@pytest.mark.parametrize("seed", range(4))
def test_the_selection_gives_the_per_event_result_in_any_chunking(seed):
    rows = random_stream(seed)
    frame = from_rows(rows)
    ref = Replayer(per_event=True)
    ref.feed(frame)
    expected = ref.finish().to_dict()
    rnd = random.Random(seed)
    for cuts in ([], sorted(rnd.sample(range(1, len(rows)), 5))):
        r = Replayer()
        for a, b in zip([0, *cuts], [*cuts, len(rows)]):
            r.feed(frame.iloc[a:b])
        assert r.finish().to_dict() == expected
        assert r.counters.handled < ref.counters.handled


# ----------------------------------------------------------------------------- chunk plumbing

def test_columns_an_older_file_lacks_are_filled_with_their_missing_value():
    from kvmtrace.schema import COLUMN_BY_NAME, columns_added_after
    old = columns_added_after(1)
    chunk = as_chunk(from_rows(rows_of([(A, Kind.SPTE_INSTALL, {})] * 3)), NEEDED)
    cols = {k: v for k, v in chunk.cols.items() if k not in old}
    sel = ChunkSelector().select(Chunk(cols))
    for name in old & set(NEEDED):
        col = COLUMN_BY_NAME[name]
        assert sel.cols[name].dtype == col.dtype and sel.cols[name].tolist() == [col.missing] * 3


def test_kind_codes_in_a_wide_integer_column():
    chunk = as_chunk(from_rows(rows_of([(A, Kind.SPTE_INSTALL, {})] * 2)), NEEDED)
    for codes, bad in (([0, 32], None), ([32, 256], 256), ([-1, 32], -1), ([255, 32], 255)):
        cols = dict(chunk.cols)
        cols["kind"] = np.array(codes, dtype=np.int64)
        if bad is None:
            sel = ChunkSelector().select(Chunk(cols))
            assert sel.cols["kind"].dtype == np.uint8 and sel.cols["kind"].tolist() == codes
        else:
            with pytest.raises(SchemaError, match=f"unknown event kind code {bad}$"):
                ChunkSelector().select(Chunk(cols))


def test_two_rows_out_of_order_are_sorted_with_their_thread_names():
    from kvmtrace.schema import CommColumn
    rows = rows_of([(A, Kind.GUEST_ENTRY, {}), (B, Kind.GUEST_ENTRY, {})])
    rows[0]["ts"], rows[1]["ts"] = 2000, 1000
    chunk = as_chunk(from_rows(rows), NEEDED)
    sel = ChunkSelector().select(Chunk(chunk.cols, CommColumn(np.array(["CPU 3/KVM", "CPU 1/KVM"],
                                                                       dtype=object))))
    assert sel.reordered == 1 and sel.cols["tid"].tolist() == [B, A]
    assert sorted(sel.threads) == [(1, A, -1, "CPU 3/KVM"), (1, B, -1, "CPU 1/KVM")]


def test_late_rows_are_those_before_the_latest_time_seen_so_far():
    selector = ChunkSelector()
    select(rows_of([(A, Kind.SPTE_INSTALL, {})] * 11), selector)             # up to 1100
    early = [{**r, "ts": r["ts"] - 150} for r in rows_of([(A, Kind.SPTE_INSTALL, {})] * 6)]
    assert select(early, selector).late == 6                                  # 850 .. 900
    assert selector.last_ts == 1100
    again = [{**r, "ts": r["ts"] + 90} for r in rows_of([(A, Kind.SPTE_INSTALL, {})] * 2)]
    assert select(again, selector).late == 1                                  # 1090, 1100


def test_an_empty_chunk_selects_nothing_and_has_an_empty_aux():
    chunk = as_chunk(from_rows([]), NEEDED)
    sel = ChunkSelector().select(chunk)
    assert sel.rows.tolist() == [] and sel.threads == []
    assert sel.cols["aux"].dtype == np.int64 and len(sel.cols["aux"]) == 0


def test_more_than_65536_threads_in_one_chunk_keep_their_own_first_evidence():
    # Thread codes fit 16 bits for a radix sort only below 65536 threads.
    n = 70_000
    cols = {k: np.full(n, -1, dtype=np.int64) for k in NEEDED}
    cols.update(ts=np.arange(n, dtype=np.int64), tgid=np.ones(n, dtype=np.int64),
                tid=np.arange(100, 100 + n, dtype=np.int64),
                kind=np.full(n, int(Kind.SPTE_INSTALL), dtype=np.uint8))
    sel = ChunkSelector().select(Chunk(cols))
    assert len(sel.rows) == n


def test_a_source_without_tids_keys_threads_by_negative_vcpu_keys():
    # thread_keys: -2 - vcpu; the 32-bit packing must give the negative key back.
    rows = rows_of([(-1, Kind.GUEST_ENTRY, {"vcpu": 3}), (-1, Kind.GUEST_ENTRY, {"vcpu": 0})])
    sel = select(rows)
    assert sorted(sel.threads) == [(1, -5, 3, ""), (1, -2, 0, "")]


def test_walks_of_two_threads_cut_by_a_chunk_boundary_chain_on_per_thread():
    # Each thread's last walker row of a chunk is where its walk goes on in the next.
    spec = [(A, Kind.WALK_START, {"value": 0}),
            (A, Kind.WALK_ELEMENT, {"level": 4, "value": table_pte(20)}),
            (A, Kind.WALK_ELEMENT, {"level": 3, "value": table_pte(30)}),
            (B, Kind.WALK_START, {"value": 0}),
            (B, Kind.WALK_ELEMENT, {"level": 4, "value": table_pte(21)}),
            (A, Kind.WALK_ELEMENT, {"level": 2, "value": table_pte(40)}),     # next chunk
            (B, Kind.WALK_ELEMENT, {"level": 3, "value": table_pte(31)})]
    rows = rows_of(spec)
    selector = ChunkSelector()
    select(rows[:5], selector)
    second = select(rows[5:], selector)
    assert {int(second.cols["tid"][i]): int(second.cols["aux"][i]) for i in second.rows} == {
        A: 30, B: 21}


def test_an_edge_already_handed_on_in_an_earlier_chunk_is_not_handed_on_again():
    spec = walk(A, [2, 3, 4], 0x50)
    selector = ChunkSelector()
    first = select(rows_of(spec), selector)
    again = [{**r, "ts": r["ts"] + 1000} for r in rows_of(spec)]
    second = select(again, selector)
    walked = lambda sel, rows: [i for i in sel.rows.tolist() if rows[i]["kind"] == Kind.WALK_ELEMENT]
    assert len(walked(first, rows_of(spec))) == 3 and walked(second, again) == []


def test_the_same_tables_at_another_level_are_another_edge():
    # A guest table that maps itself one level down (a recursive entry) gives the pair
    # (5 -> 6) at level 3 and at level 2: two edges.
    spec = [(A, Kind.WALK_START, {"value": 0}),
            (A, Kind.WALK_ELEMENT, {"level": 4, "value": table_pte(5)}),
            (A, Kind.WALK_ELEMENT, {"level": 3, "value": table_pte(6)})]
    selector = ChunkSelector()
    select(rows_of(spec), selector)
    later = rows_of([(A, Kind.WALK_START, {"value": 0}),
                     (A, Kind.WALK_ELEMENT, {"level": 3, "value": table_pte(5)}),
                     (A, Kind.WALK_ELEMENT, {"level": 2, "value": table_pte(6)})])
    later = [{**r, "ts": r["ts"] + 1000} for r in later]
    sel = select(later, selector)
    assert [int(sel.cols["aux"][i]) for i in sel.rows if later[i]["kind"] == Kind.WALK_ELEMENT] == [-1, 5]


def table_pte(gfn: int) -> int:
    return (gfn << 12) | 0x27
