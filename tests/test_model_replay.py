"""The replay model, transition by transition, on hand-built event streams."""
import pytest

from kvmtrace.exitcodes import for_verdict
from kvmtrace.analysis import Replayer, replay_frame
from kvmtrace.sources.frame import concat
from kvmtrace.schema import KVM_EXIT_INTR, Kind, SchemaError, TraceMeta

from model_scenarios import (HELPER, V0, V1, Stream, built, flush_with_sync,
                             flush_without_sync, unsynced)

FN_META = TraceMeta(probes=["kprobe:kvm_mmu_sync_roots", "kprobe:kvm_mmu_load",
                            "kprobe:kvm_mmu_unload"])


def result(stream: Stream, meta=None, **kw):
    return replay_frame(stream.frame(), meta, **kw)


def only_window(stream: Stream, meta=None):
    r = Replayer(meta)
    closed = r.feed(stream.frame())
    res = r.finish()
    assert res.windows["total"] == 1, res.windows
    return closed[0] if closed else None, res


# ----------------------------------------------------------------------------- openers

def test_pv_flush_without_need_flush_opens_nothing():
    s = unsynced()
    s.pv(V1, 1, need_flush=0).run(V1)
    res = result(s)
    assert res.windows["total"] == 0 and res.verdict == "no-flushes"


def test_guest_and_hyperv_requests_open_windows():
    for kind in (Kind.FLUSH_REQUEST_GUEST, Kind.FLUSH_REQUEST_HYPERV):
        s = unsynced()
        s.add(kind, V1).run(V1)
        w, res = only_window(s)
        assert w.opener_event == kind.name.lower() and w.verdict == "violation"
        assert w.opener == {Kind.FLUSH_REQUEST_GUEST: "exit-requests", Kind.FLUSH_REQUEST_HYPERV: "hyperv"}[kind]


def test_two_requests_before_the_run_are_one_window():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).add(Kind.FLUSH_REQUEST_GUEST, V1).sync(V1, 4).run(V1)
    w, res = only_window(s)
    assert w.verdict == "ok"


# ----------------------------------------------------------------------------- closing

def test_window_closes_at_first_guest_evidence_only():
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    s.add(Kind.USERSPACE_EXIT, V1, value=KVM_EXIT_INTR)     # signal: guest did not run
    s.add(Kind.USERSPACE_EXIT, V1, value=-4)                # errno: guest did not run
    s.sync(V1, 4)
    s.add(Kind.USERSPACE_EXIT, V1, value=2)                 # KVM_EXIT_IO: it ran
    w, res = only_window(s)
    assert w.verdict == "ok" and w.closer == "userspace_exit"


@pytest.mark.parametrize("kind", [Kind.GUEST_ENTRY, Kind.GUEST_EXIT, Kind.SPTE_INSTALL,
                                  Kind.EMULATE, Kind.PIO, Kind.MMIO, Kind.HYPERCALL,
                                  Kind.PAGE_FAULT, Kind.WALK_START])
def test_every_evidence_kind_closes(kind):
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1, kind)
    w, _ = only_window(s)
    assert w.closer == kind.name.lower() and w.verdict == "violation"


def test_evidence_on_another_vcpu_does_not_close():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V0).sync(V1, 4).run(V1)
    w, _ = only_window(s)
    assert w.verdict == "ok"


def test_feed_returns_windows_closed_by_that_chunk():
    s = flush_with_sync()
    frame = s.frame()
    cut = len(frame) - 1                    # the closing evidence comes in chunk 2
    r = Replayer()
    assert r.feed(frame.iloc[:cut]) == []
    closed = r.feed(frame.iloc[cut:])
    assert [w.verdict for w in closed] == ["ok"]
    assert r.finish().verdict == "ok"


# ----------------------------------------------------------------------------- verdicts

def test_ok_when_the_unsync_page_is_synced():
    w, res = only_window(flush_with_sync())
    assert (w.verdict, w.pattern, w.meaningful) == ("ok", "sync-in-place", True)
    assert w.latency_ns == 10 and for_verdict(res.verdict) == 0


def test_violation_names_the_reachable_unsync_page():
    w, res = only_window(flush_without_sync())
    assert w.verdict == "violation" and w.vcpu == 1 and for_verdict(res.verdict) == 1
    assert [(o.gfn, o.reachable) for o in w.outstanding] == [(4, True)]
    assert res.findings[0]["outstanding"][0]["gfn"] == 4
    assert res.pattern == "hardware-flush-only"


def test_zap_inside_the_window_resolves_the_page():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).zap(HELPER, 4).sync(HELPER, 4).run(V1)
    w, _ = only_window(s)
    assert w.verdict == "ok" and w.zapped == 1


def test_nothing_unsync_is_ok_but_not_meaningful():
    s = built()
    s.pv(V1, 1, need_flush=1).run(V1)
    w, res = only_window(s)
    assert w.verdict == "ok" and not w.meaningful and res.windows["meaningful"] == 0


def test_page_unsynced_during_the_window_does_not_count():
    s = built()
    s.pv(V1, 1, need_flush=1).unsync(V0, 4).run(V1)
    w, _ = only_window(s)
    assert w.verdict == "ok" and not w.meaningful


def test_suspect_when_the_vcpu_root_is_unknown():
    s = Stream()                             # trace starts after the MMU was loaded
    s.pv(V0, 0).unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)
    w, res = only_window(s)
    assert w.verdict == "suspect" and for_verdict(res.verdict) == 3
    assert w.outstanding[0].reachable is None


def test_inferred_unreachability_is_never_ok():
    # Every link the trace shows says gfn 4 hangs only under root 1, not under vCPU2's root
    # 9.  But nothing synced vCPU2's root, and the trace cannot show its real root or its
    # prev_roots (a CR3 load served from prev_roots emits no kvmmmu event): suspect.
    s = unsynced()
    s.pv(12, 2).get(12, 9, 4).run(12)        # vCPU2, a different guest CR3: its own root
    s.pv(12, 2, need_flush=1).run(12)
    w, res = only_window(s)
    assert w.verdict == "suspect" and w.outstanding[0].reachable is False
    assert w.evidence == "none" and res.findings[0]["evidence"] == "none"


def test_root_zap_makes_reachability_unknown():
    s = unsynced()
    s.zap(HELPER, 1, level=4)                # kvm-nx-lpage-recovery zaps the shared root
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only_window(s)
    assert w.verdict == "suspect"


def test_reload_in_the_window_is_the_unload_reload_pattern():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).get(V1, 1, 4, created=0).sync(V1, 4).run(V1)
    w, _ = only_window(s)
    assert (w.verdict, w.pattern) == ("ok", "unload-reload")


def test_lost_events_inside_the_window_are_inconclusive():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).lost().run(V1)
    w, res = only_window(s)
    assert w.verdict == "inconclusive" and res.lost_events == 5 and for_verdict(res.verdict) == 3


def test_trace_ending_inside_the_window_is_open():
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    _, res = only_window(s)
    assert res.windows["open"] == 1 and res.verdict == "inconclusive"


def test_tdp_host_needs_no_sync():
    w, res = only_window(flush_without_sync(), TraceMeta(tdp=True))
    assert w.verdict == "ok"


# ----------------------------------------------------------------------------- function probes

def test_function_probes_without_any_sync_are_a_violation_even_if_harmless():
    s = built()
    s.pv(V1, 1, need_flush=1).fn(Kind.FLUSH_GUEST_ENTRY, V1).fn(Kind.HW_FLUSH, V1)
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1, Kind.GUEST_ENTRY)
    w, res = only_window(s, FN_META)
    assert w.verdict == "violation" and w.harmless and not w.meaningful
    assert res.findings[0]["harmless"] is True


def test_function_probes_sync_roots_is_ok():
    s = built()
    s.pv(V1, 1, need_flush=1).fn(Kind.SYNC_ROOTS, V1).fn(Kind.SYNC_PREV_ROOTS, V1)
    s.fn(Kind.HW_FLUSH, V1).run(V1, Kind.GUEST_ENTRY)
    w, _ = only_window(s, FN_META)
    assert (w.verdict, w.pattern) == ("ok", "sync-in-place")


def test_function_probes_unload_is_ok():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).fn(Kind.MMU_UNLOAD, V1).fn(Kind.MMU_LOAD_ENTRY, V1)
    s.get(V1, 1, 4, created=0).fn(Kind.SYNC_ROOTS, V1).sync(V1, 4)
    s.fn(Kind.MMU_LOAD_RETURN, V1, value=0).run(V1, Kind.GUEST_ENTRY)
    w, _ = only_window(s, FN_META)
    assert (w.verdict, w.pattern) == ("ok", "unload-reload")


def test_sync_probe_seen_in_the_trace_enables_function_mode():
    s = built()
    s.fn(Kind.SYNC_ROOTS, V0)                # seen once: kvm_mmu_sync_roots is probed
    s.pv(V1, 1, need_flush=1).fn(Kind.HW_FLUSH, V1).run(V1, Kind.GUEST_ENTRY)
    w, _ = only_window(s)
    assert w.verdict == "violation" and w.function_probes


def test_flush_service_alone_is_not_a_guest_flush():
    s = built()
    s.fn(Kind.FLUSH_SERVICE, V1).fn(Kind.HW_FLUSH, V1).run(V1, Kind.GUEST_ENTRY)
    res = result(s, FN_META)
    assert res.windows["total"] == 0


def test_flush_service_confirmed_by_sync_roots():
    s = unsynced()
    s.fn(Kind.FLUSH_SERVICE, V1).fn(Kind.SYNC_ROOTS, V1).sync(V1, 4).run(V1, Kind.GUEST_ENTRY)
    w, _ = only_window(s, FN_META)
    assert w.verdict == "ok" and w.opener_event == "flush_service" and w.opener == "flush-function"


def test_return_without_entry_means_the_trace_started_inside():
    s = Stream()
    s.fn(Kind.FLUSH_GUEST_RETURN, V1).run(V1, Kind.GUEST_ENTRY)
    w, _ = only_window(s, FN_META)
    assert w.verdict == "inconclusive" and w.started_inside


# ----------------------------------------------------------------------------- tree links

def test_walker_links_pages_created_before_the_trace():
    s = Stream()
    s.get(V0, 2, 3, created=0).get(V0, 3, 2, created=0)  # vCPU0's root is unknown: no root link
    s.unsync(V0, 4).run(V0)                             # gfn 4 known only as unsync
    s.pv(V1, 1).get(V1, 1, 4, created=0).run(V1)
    s.pv(V1, 1, need_flush=1).run(V1)
    assert only_window(s)[0].verdict == "suspect"       # without the walk: no chain known
    s = Stream()
    s.get(V0, 2, 3, created=0).get(V0, 3, 2, created=0)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1).get(V1, 1, 4, created=0).run(V1)
    s.walk(V1, [2, 3, 4], leaf=0x50)                    # guest tables 1 -> 2 -> 3 -> 4
    s.pv(V1, 1, need_flush=1).run(V1)
    w, _ = only_window(s)
    assert w.verdict == "violation" and w.outstanding[0].reachable is True


def test_root_first_child_in_a_later_fault():
    s = Stream()
    s.pv(V1, 1).get(V1, 1, 4).run(V1).run(V1, Kind.EMULATE)   # root, then guest runs
    s.get(V1, 2, 3).get(V1, 3, 2).get(V1, 4, 1).run(V1)        # first child later
    s.unsync(V0, 4).pv(V1, 1, need_flush=1).run(V1)
    w, _ = only_window(s)
    assert w.outstanding[0].reachable is True


def test_vcpu_learnt_from_qemu_thread_name():
    s = unsynced()
    for row in s.rows:
        row.pop("vcpu", None)
        row["comm"] = {V0: "CPU 0/KVM", V1: "CPU 1/KVM"}.get(row["tid"], "")
    s.add(Kind.FLUSH_REQUEST_GUEST, V1, comm="CPU 1/KVM").run(V1, comm="CPU 1/KVM")
    w, res = only_window(s)
    assert w.vcpu == 1 and res.vms[0]["vcpus"][0]["vcpu"] == 1


# ----------------------------------------------------------------------------- robustness

def test_every_split_into_two_chunks_gives_the_same_result():
    frame = flush_without_sync().frame()
    whole = replay_frame(frame).to_dict()
    for cut in range(1, len(frame)):
        r = Replayer()
        r.feed(frame.iloc[:cut])
        r.feed(frame.iloc[cut:])
        assert r.finish().to_dict() == whole, cut


def test_rows_out_of_order_inside_a_chunk_are_sorted():
    frame = flush_without_sync().frame()
    shuffled = frame.sample(frac=1.0, random_state=3)
    res = replay_frame(shuffled)
    assert res.verdict == "violation"
    assert any("re-sorted" in n for n in res.notes)


def test_late_rows_across_chunks_never_leave_an_ok():
    frame = flush_with_sync().frame()
    r = Replayer()
    r.feed(frame.iloc[-3:])                 # the end first
    r.feed(frame.iloc[:-3])
    res = r.finish()
    assert res.verdict != "ok" and res.windows["ok"] == 0
    assert any("out of time order" in n for n in res.notes)


def test_unlocated_losses_make_every_window_inconclusive():
    res = result(flush_with_sync(), TraceMeta(lost_events=3))
    assert res.verdict == "inconclusive" and res.lost_events == 3


def test_unknown_kind_code_is_a_schema_error():
    frame = flush_with_sync().frame()
    frame.loc[3, "kind"] = 99
    with pytest.raises(SchemaError, match="unknown event kind code 99"):
        replay_frame(frame)


def test_missing_column_is_a_schema_error():
    frame = flush_with_sync().frame().drop(columns=["need_flush"])
    with pytest.raises(SchemaError, match="need_flush"):
        replay_frame(frame)


def test_vm_filter_and_vcpu_filter():
    a = flush_without_sync()
    b = flush_with_sync()
    for row in b.rows:
        row["tgid"] = 2
        row["ts"] += 100_000
    frame = concat([a.frame(), b.frame()])
    both = replay_frame(frame)
    assert both.verdict == "violation" and [vm["tgid"] for vm in both.vms] == [1, 2]
    assert replay_frame(frame, vm=2).verdict == "ok"
    assert replay_frame(frame, vcpu=0).verdict == "no-flushes"


def test_empty_chunk_is_harmless():
    r = Replayer()
    assert r.feed(flush_with_sync().frame().iloc[:0]) == []
    assert r.finish().verdict == "no-flushes"


# ----------------------------------------------------------------------------- input that cannot be trusted

def test_resorted_chunk_with_simultaneous_events_is_never_ok():
    # In file order the vCPU runs (same ns as the flush) before anything syncs: a violation.
    s = unsynced()
    s.pv(V1, 1, need_flush=1)
    s.rows.append({**s.rows[-1], "kind": int(Kind.SPTE_INSTALL), "need_flush": -1, "vcpu": -1})
    s.sync(V1, 4).run(V1)
    frame = s.frame()
    assert replay_frame(frame).verdict == "violation"
    # The same events out of order, the run first among the two simultaneous ones: sorting
    # cannot recover their order, and reading the run before the flush would say "ok".
    n = len(frame)
    swapped = frame.iloc[[*range(n - 4), n - 3, n - 4, n - 1, n - 2]].reset_index(drop=True)
    res = replay_frame(swapped)
    assert res.verdict == "inconclusive" and res.windows["ok"] == 0
    assert any("share a timestamp" in n for n in res.notes)


def test_shadow_pages_without_gfn_make_every_window_inconclusive():
    s = flush_with_sync()
    for row in s.rows:
        if row["kind"] in (Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP):
            row["gfn"] = -1                  # libtraceevent's kvm plugin omits it
    res = result(s)
    assert res.verdict == "inconclusive" and res.windows["ok"] == 0 and for_verdict(res.verdict) == 3
    assert any("lack a field" in n for n in res.notes)


def test_pv_flush_without_need_flush_is_never_no_flushes():
    s = unsynced()
    s.add(Kind.FLUSH_REQUEST_PV, V1, vcpu=1).run(V1)          # need_flush_tlb missing
    res = result(s)
    assert res.verdict == "inconclusive" and for_verdict(res.verdict) == 3


def test_losses_without_any_window_are_inconclusive_not_no_flushes():
    s = unsynced()
    s.lost(4).run(V1)
    res = result(s)
    assert res.windows["total"] == 0
    assert res.verdict == "inconclusive" and for_verdict(res.verdict) == 3 and res.lost_events == 4
    assert result(unsynced()).verdict == "no-flushes"        # the same trace without the loss


def test_window_without_any_shadow_page_event_is_not_ok():
    s = Stream()                             # kvm_pv_tlb_flush and evidence, no kvmmmu events
    s.pv(V1, 1).run(V1).pv(V1, 1, need_flush=1).run(V1)
    w, res = only_window(s)
    assert w.verdict == "inconclusive" and res.verdict == "inconclusive"
    attached = TraceMeta(probes=["tracepoint:kvmmmu:kvm_mmu_unsync_page"])
    assert only_window(s, attached)[0].verdict == "ok"      # attached, and none fired
    assert only_window(s, TraceMeta(tdp=True))[0].verdict == "ok"


def test_unsync_pages_past_the_scan_cap_are_never_ok(monkeypatch):
    from kvmtrace.analysis import replay
    s = built()
    s.pv(12, 2).get(12, 9, 4).get(12, 20, 3).get(12, 21, 2).get(12, 22, 1).run(12)
    s.unsync(12, 22).run(12)                 # unsync first, known unreachable from vCPU1
    s.unsync(V0, 4).run(V0)                  # reachable from vCPU1's root
    s.pv(V1, 1, need_flush=1).run(V1)
    assert only_window(s)[0].verdict == "violation"
    monkeypatch.setattr(replay, "MAX_OUTSTANDING_SCAN", 1)
    w, _ = only_window(s)
    assert w.verdict == "suspect" and [o.gfn for o in w.outstanding] == [22]
    assert "not checked" in w.reason


def test_no_sync_violation_needs_kvm_mmu_sync_roots_probed():
    # 5.16+: kvm_mmu_sync_roots syncs the page in place; only kvm_mmu_load/unload are probed,
    # so the sync call itself is invisible and its absence proves nothing.
    s = unsynced()
    s.pv(V1, 1, need_flush=1).sync(V1, 4).fn(Kind.HW_FLUSH, V1).run(V1, Kind.GUEST_ENTRY)
    load_only = TraceMeta(probes=["kprobe:kvm_mmu_load", "kprobe:kvm_mmu_unload"])
    w, _ = only_window(s, load_only)
    assert (w.verdict, w.function_probes) == ("ok", False)
    w, _ = only_window(s, FN_META)           # sync_roots probed and silent: the pre-5.13 path
    assert w.verdict == "violation" and w.function_probes


def test_a_walk_cut_by_a_chunk_boundary_still_links():
    # The walk 1 -> 2 -> 3 -> 4 is what makes gfn 4 reachable; every cut gives the same.
    s = Stream()
    s.get(V0, 2, 3, created=0).get(V0, 3, 2, created=0)
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1).get(V1, 1, 4, created=0).run(V1)
    s.walk(V1, [2, 3, 4], leaf=0x50)
    s.pv(V1, 1, need_flush=1).run(V1)
    frame = s.frame()
    whole = replay_frame(frame).to_dict()
    assert whole["verdict"] == "violation"
    for cut in range(1, len(frame)):
        r = Replayer()
        r.feed(frame.iloc[:cut])
        r.feed(frame.iloc[cut:])
        assert r.finish().to_dict() == whole, cut
