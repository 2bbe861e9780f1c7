"""Verdicts fixed by kernel semantics and docs/design.md §4, each on a stream where only the
behaviour under test decides the answer (kvmmmu events present, an unsync page reachable
from the vCPU's root), so the test fails when that behaviour breaks.

Every expected verdict here is derived from what KVM does, not from a second run of the
model: these hold whatever evidence the model gains later (exact probes can turn a suspect
into ok, never an inconclusive or a violation into ok).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kvmtrace.analysis import Replayer, replay_frame
from kvmtrace.analysis.report import merge, trace_pattern, verdict_of, empty_counts
from kvmtrace.analysis.selection import evidence_mask
from kvmtrace.analysis.shadow import ShadowMMU
from kvmtrace.exitcodes import for_verdict
from kvmtrace.schema import KVM_EXIT_INTR, Kind, TraceMeta
from kvmtrace.sources.stream import load

from model_scenarios import HELPER, V0, V1, Stream, flush_without_sync, unsynced

FN_META = TraceMeta(probes=["kprobe:kvm_mmu_sync_roots", "kprobe:kvm_mmu_load",
                            "kprobe:kvm_mmu_unload"])


def replay(stream: Stream, meta=None, per_event: bool = False):
    r = Replayer(meta, per_event=per_event)
    closed = r.feed(stream.frame())
    return closed, r.finish()


def both_paths(stream: Stream, meta=None):
    """The vectorised selection and the per-event reference: each must give the answer."""
    return [replay(stream, meta, per_event=p) for p in (False, True)]


# ----------------------------------------------------------------------------- trace began inside

@pytest.mark.parametrize("meta", [None, FN_META], ids=["tracepoints", "function-probes"])
def test_a_window_the_trace_began_inside_is_inconclusive_even_with_evidence(meta):
    # kvm_vcpu_flush_tlb_guest() returns with no entry in the trace: the flush started
    # before the trace did, so what happened first (a sync?) is unknown.  The stream has
    # kvmmmu events and a reachable unsync page, so nothing else makes it inconclusive:
    # without the started-inside rule it would be a violation.
    s = unsynced()
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1, Kind.GUEST_ENTRY)
    for closed, res in both_paths(s, meta):
        (w,) = closed
        assert w.started_inside and w.verdict == "inconclusive", w.reason
        assert "started inside" in w.reason
        assert res.verdict == "inconclusive" and for_verdict(res.verdict) == 3


# ----------------------------------------------------------------------------- syncs and zaps

def test_a_sync_by_another_thread_inside_the_window_counts():
    # kvm_sync_page acts on the VM-wide struct kvm_mmu_page: whichever thread syncs it (here
    # vCPU0 faulting on the same table), it is in sync when vCPU1 runs again.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).sync(V0, 4).run(V1)
    for closed, res in both_paths(s):
        (w,) = closed
        assert (w.verdict, w.synced, w.meaningful) == ("ok", 1, True)
        assert res.verdict == "ok" and res.pattern == "sync-in-place"


def test_a_sync_before_the_window_opened_does_not_count_for_it():
    s = unsynced()
    s.sync(V0, 4).unsync(V0, 4).run(V0)        # synced, then unsync again before the flush
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,), _ = replay(s)
    assert w.verdict == "violation" and w.synced == 0


def test_a_zap_removes_the_shadow_page_and_its_links():
    # kvm_mmu_prepare_zap_page: kvm_mmu_unlink_parents() and kvm_mmu_page_unlink_children()
    # drop every SPTE pointing at / from the SP, and it leaves the hash.
    mmu = ShadowMMU()
    root, mid, leaf = mmu.page(1, 0x3704, 4), mmu.page(2, 0x3703, 3), mmu.page(3, 0x3702, 2)
    mmu.link(root, mid)
    mmu.link(mid, leaf)
    mmu.mark_unsync(2, 0x3703, 3, 1, 0, 0)
    assert mmu.zap(mid.key) is True
    assert mid.key not in mmu.pages and mid.key not in mmu.unsync
    assert mid.key not in root.children and mid.key not in leaf.parents
    assert mmu.find(2, 3) is None
    assert mmu.zap(mid.key) is False            # gone: zapping again changes nothing


def test_a_page_whose_only_parent_was_zapped_is_no_longer_known_reachable():
    # The helper thread zaps the L2 table above the unsync L1 page before the flush: the
    # SPTE that linked them is gone, so the model must not call the L1 page reachable.
    s = unsynced()
    s.zap(HELPER, 3, level=2)
    s.pv(V1, 1, need_flush=1).run(V1)
    for closed, _ in both_paths(s):
        (w,) = closed
        assert [(o.gfn, o.reachable) for o in w.outstanding] == [(4, None)]
        assert w.verdict != "violation"
    (w,), _ = replay(flush_without_sync())      # the same stream without the zap
    assert w.verdict == "violation"


def test_a_zap_inside_the_window_resolves_the_page_without_a_sync_event():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).zap(HELPER, 4).run(V1)
    for closed, _ in both_paths(s):
        (w,) = closed
        assert (w.verdict, w.zapped, w.outstanding) == ("ok", 1, [])


# ----------------------------------------------------------------------------- guest-run evidence

@pytest.mark.parametrize("value", [KVM_EXIT_INTR, -4, -14], ids=["KVM_EXIT_INTR", "EINTR", "EFAULT"])
def test_intr_and_errno_exits_do_not_close_a_window(value):
    # KVM_RUN returning KVM_EXIT_INTR (a signal before entry) or an errno proves no guest
    # code ran: the sync that follows is still in time.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1, Kind.USERSPACE_EXIT, value=value)
    s.sync(V1, 4).run(V1, Kind.GUEST_ENTRY)
    for closed, res in both_paths(s):
        (w,) = closed
        assert (w.verdict, w.closer) == ("ok", "guest_entry")
        assert res.windows["total"] == 1


def test_a_real_userspace_exit_closes_the_window():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1, Kind.USERSPACE_EXIT, value=2)   # KVM_EXIT_IO
    s.sync(V1, 4).run(V1, Kind.GUEST_ENTRY)
    for closed, _ in both_paths(s):
        (w,) = closed
        assert (w.verdict, w.closer) == ("violation", "userspace_exit")


def test_evidence_mask_rejects_intr_and_errno_userspace_exits():
    kind = np.array([Kind.USERSPACE_EXIT] * 4 + [Kind.GUEST_ENTRY, Kind.SP_SYNC], dtype=np.uint8)
    value = np.array([KVM_EXIT_INTR, -4, 2, 0, KVM_EXIT_INTR, 0], dtype=np.int64)
    assert evidence_mask(kind, value).tolist() == [False, False, True, True, True, False]


# ----------------------------------------------------------------------------- ranking

def test_violation_outranks_suspect_in_the_trace_verdict():
    # docs/design.md §4: a violation anywhere is the answer (exit 1), whatever else was unsure.
    s = flush_without_sync()                 # vCPU1: violation
    s.pv(13, 3).unsync(13, 40).run(13)       # vCPU3 (no root seen): its unsync page ...
    s.pv(13, 3, need_flush=1).run(13)        # ... stays unsync across its flush: suspect
    _, res = replay(s)
    assert res.windows["violation"] == 1 and res.windows["suspect"] >= 1
    assert res.verdict == "violation" and for_verdict(res.verdict) == 1
    (vm,) = res.vms
    assert vm["verdict"] == "violation"


@pytest.mark.parametrize("counts,verdict", [
    ({"violation": 1, "suspect": 5, "ok": 9, "inconclusive": 2}, "violation"),
    ({"suspect": 1, "ok": 9, "inconclusive": 2}, "suspect"),
    ({"ok": 1, "inconclusive": 9, "open": 1}, "ok"),
    ({"inconclusive": 1}, "inconclusive"),
    ({"open": 1}, "inconclusive"),
    ({}, "no-flushes"),
])
def test_verdict_precedence(counts, verdict):
    assert verdict_of({**empty_counts(), **counts}) == verdict


def test_merged_traces_keep_the_worst_verdict():
    bad = replay_frame(flush_without_sync().frame())
    s = Stream()
    s.pv(V0, 0).unsync(V0, 4).run(V0).pv(V1, 1, need_flush=1).run(V1)
    unsure = replay_frame(s.frame())
    assert (bad.verdict, unsure.verdict) == ("violation", "suspect")
    assert merge([unsure, bad]).verdict == merge([bad, unsure]).verdict == "violation"


def test_pattern_ties_name_the_buggy_generation_first():
    # One window showed the buggy path, one a fixed one: the report must not call the
    # kernel fixed on a coin toss.  Between the two fixed paths, the older one.
    assert trace_pattern(Counter({"sync-in-place": 1, "hardware-flush-only": 1}), Counter()) \
        == "hardware-flush-only"
    assert trace_pattern(Counter({"unload-reload": 2, "hardware-flush-only": 2}), Counter()) \
        == "hardware-flush-only"
    assert trace_pattern(Counter({"sync-in-place": 3, "unload-reload": 3}), Counter()) \
        == "unload-reload"
    assert trace_pattern(Counter({"sync-in-place": 3, "hardware-flush-only": 2}), Counter()) \
        == "sync-in-place"                   # no tie: the majority
    # Meaningful windows decide before function-probe observations; unknown is no pattern.
    assert trace_pattern(Counter({"sync-in-place": 1}), Counter({"hardware-flush-only": 5})) \
        == "sync-in-place"
    assert trace_pattern(Counter({"unknown": 4}), Counter({"unload-reload": 1})) == "unload-reload"
    assert trace_pattern(Counter(), Counter()) == "unknown"


# ----------------------------------------------------------------------------- flush-service windows

def test_an_unconfirmed_flush_service_window_is_not_reported_open():
    # kvm_service_local_tlb_flush_requests() runs for any pending flush request, not only a
    # guest flush: at the end of the trace nothing says it was one.
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1)
    for _, res in both_paths(s, FN_META):
        assert res.windows["total"] == res.windows["open"] == 0
        assert res.verdict == "no-flushes"


def test_a_confirmed_flush_service_window_left_open_is_open():
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1).fn(Kind.SYNC_ROOTS, V1)
    for _, res in both_paths(s, FN_META):
        assert res.windows["open"] == 1 and res.verdict == "inconclusive"


# ----------------------------------------------------------------------------- function probes

def test_function_probe_window_without_shadow_mmu_evidence_is_no_violation():
    # Function probes saw a guest flush with no kvm_mmu_sync_roots, but nothing shows the
    # VM runs on the shadow MMU (TDP unknown, no kvmmmu event): with EPT/NPT the
    # hardware flush alone is correct, so this is not a violation.
    s = Stream()
    s.pv(V1, 1).run(V1, Kind.GUEST_ENTRY)
    s.pv(V1, 1, need_flush=1).fn(Kind.FLUSH_GUEST_ENTRY, V1).fn(Kind.HW_FLUSH, V1)
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1, Kind.GUEST_ENTRY)
    for closed, res in both_paths(s, FN_META):
        (w,) = closed
        assert w.verdict == "inconclusive" and res.verdict != "violation"
    (w,), _ = replay(s, TraceMeta(probes=FN_META.probes, tdp=False))   # shadow MMU known
    assert w.verdict == "violation" and w.harmless


def test_function_probes_on_a_tdp_host_are_ok():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.HW_FLUSH, V1).run(V1, Kind.GUEST_ENTRY)
    (w,), _ = replay(s, TraceMeta(probes=FN_META.probes, tdp=True))
    assert w.verdict == "ok"


# ----------------------------------------------------------------------------- importers

def test_printed_need_flush_tlb_1_and_0_decode_as_1_and_0(tmp_path):
    # Kernels print need_flush_tlb as %d (1/0) or, since 5.x, as true/false.
    lines = [f"        pvmvcpu1-100   [001] .....  10.{i:06d}: kvm_pv_tlb_flush: vcpu 1 "
             f"need_flush_tlb {word}\n" for i, word in enumerate(["1", "0", "true", "false"])]
    path = tmp_path / "pv.ftrace.txt"
    path.write_text("# tracer: nop\n#\n" + "".join(lines))
    ev = load(path).events
    assert ev[ev.kind == Kind.FLUSH_REQUEST_PV].need_flush.tolist() == [1, 0, 1, 0]


def test_pv_flush_with_need_flush_0_opens_no_window():
    s = unsynced()
    s.pv(V1, 1, need_flush=0).run(V1)
    for _, res in both_paths(s):
        assert res.windows["total"] == 0
