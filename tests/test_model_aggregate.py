"""The aggregation of windows into the report: per-vCPU rows, per-VM and trace verdicts, the
JSON keys `analyze --json` documents, demotion, and merging several traces.

The expected values are the report's contract (README "analyze --json", docs/design.md §4):
verdict order, "seeing nothing is never a pass", windows counted by deciding evidence.
"""
from __future__ import annotations

from kvmtrace.analysis import Replayer, replay_frame
from kvmtrace.analysis.report import (Aggregate, AnalysisResult, ReplayCounters, VcpuRow, merge,
                                      merge_skipped)
from kvmtrace.analysis.window import FlushWindow
from kvmtrace.schema import SALVAGED_NOTE, Kind, TraceMeta

from model_scenarios import TGID, V0, V1, Stream, flush_with_sync, flush_without_sync, unsynced

RESULT_KEYS = {"verdict", "pattern", "pattern_kernels", "windows", "evidence", "vms", "findings",
               "findings_total", "lost_events", "events", "patterns", "notes", "traces",
               "windows_by_path", "skipped_lines"}
FINDING_KEYS = {"ts", "closed_ts", "tgid", "vcpu", "tid", "verdict", "reason", "evidence",
                "pattern", "harmless", "meaningful", "opener", "obligation", "root_state",
                "outstanding", "events"}


def window(verdict: str, *, unsync: int = 1, lost: bool = False, evidence: str = "inferred",
           vcpu: int = 0, tid: int = 10, tgid: int = TGID, ts: int = 100) -> FlushWindow:
    w = FlushWindow(tgid=tgid, tid=tid, vcpu=vcpu, opened_ts=ts, opener="steal-time",
                    open_seq=1, unsync_at_open=unsync)
    w.verdict, w.lost, w.evidence, w.closed_ts = verdict, lost, evidence, ts + 50
    return w


def test_the_json_report_has_its_documented_keys():
    d = replay_frame(flush_without_sync().frame()).to_dict()
    assert set(d) == RESULT_KEYS
    assert d["skipped_lines"] == {"total": 0, "decisive": 0, "by_reason": []}
    assert d["evidence"] == {"exact": 0, "inferred": 1, "none": 0}
    (vm,) = d["vms"]
    assert set(vm) == {"tgid", "verdict", "windows", "evidence", "vcpus"}
    assert vm["evidence"] == {"exact": 0, "inferred": 1, "none": 0}
    assert {v["vcpu"]: v["evidence"] for v in vm["vcpus"]} == {
        1: {"exact": 0, "inferred": 1, "none": 0}}
    (f,) = d["findings"]
    assert set(f) == FINDING_KEYS and f["root_state"] == []


def test_vcpu_rows_count_losses_evidence_and_meaningful_oks():
    row = VcpuRow(TGID, 0)
    for w in (window("ok"), window("ok", unsync=0), window("violation"),
              window("inconclusive", lost=True, evidence="none"),
              window("inconclusive", lost=True, evidence="none"), window("ok", evidence="exact")):
        row.add(w)
    assert (row.lost, row.meaningful_ok) == (2, 2)
    assert row.evidence == {"exact": 1, "inferred": 3, "none": 2}
    assert row.counts["meaningful"] == 5 and row.counts["total"] == 6


def test_rows_are_ordered_by_vcpu_with_unknown_threads_last():
    agg = Aggregate()
    for vcpu, tid in ((2, 12), (-1, 15), (0, 10)):
        agg.add(window("ok", vcpu=vcpu, tid=tid))
    res = agg.result(ReplayCounters(vms_seen=[TGID]), TraceMeta())
    assert [v["vcpu"] for v in res.vms[0]["vcpus"]] == [0, 2, None]


def test_patterns_observed_by_function_probes_count_once_per_window():
    agg = Aggregate()
    for _ in range(2):
        w = window("ok", unsync=0)
        w.pattern, w.function_probes = "hardware-flush-only", True
        agg.add(w)
    w = window("ok", unsync=0)
    w.pattern, w.function_probes = "sync-in-place", True
    agg.add(w)
    assert agg.observed_patterns == {"hardware-flush-only": 2, "sync-in-place": 1}


def test_demotion_takes_every_ok_and_every_finding_down_to_inconclusive():
    agg = Aggregate()
    agg.add(window("ok"))
    agg.add(window("violation"))
    agg.demote_all("the clock went backwards")
    (row,) = agg.rows.values()
    assert row.meaningful_ok == 0 and row.counts["ok"] == 0 and row.counts["inconclusive"] == 2
    (f,) = agg.findings
    assert (f["verdict"], f["evidence"]) == ("inconclusive", "none")
    assert f["reason"].startswith("the clock went backwards (the replay said: ")


def test_a_source_doubt_and_a_salvaged_trace_leave_no_window_trusted():
    res = Aggregate().result(ReplayCounters(doubts=["rows were skipped"]), TraceMeta())
    assert res.notes == ["rows were skipped; every window is inconclusive",
                         "no flush window was seen, but rows were skipped: a flush may have "
                         "been missed"]
    assert res.verdict == "inconclusive"
    agg = Aggregate()
    agg.add(window("ok"))
    res = agg.result(ReplayCounters(vms_seen=[TGID]), TraceMeta(notes=[SALVAGED_NOTE + " x"]))
    assert "the trace was read only up to corruption (--salvage); no window is better than " \
           "inconclusive" in res.notes
    assert res.verdict == "inconclusive" and res.windows["ok"] == 0


def test_invalid_events_without_a_window_are_no_pass():
    res = Aggregate().result(ReplayCounters(invalid_markers=2), TraceMeta())
    assert res.verdict == "inconclusive"
    assert "no flush window was seen, but 2 events were invalid: a flush may have been missed" \
        in res.notes


def test_a_vm_without_windows_is_listed_and_an_unknown_vm_is_not():
    res = Aggregate().result(ReplayCounters(vms_seen=[-1, 0, 3]), TraceMeta())
    assert [(v["tgid"], v["verdict"]) for v in res.vms] == [(0, "no-flushes"), (3, "no-flushes")]


def test_per_vm_and_trace_evidence_add_up_over_rows():
    agg = Aggregate()
    agg.add(window("ok", vcpu=0, evidence="exact"))
    agg.add(window("ok", vcpu=1, tid=11, evidence="exact"))
    agg.add(window("violation", vcpu=1, tid=11))
    res = agg.result(ReplayCounters(vms_seen=[TGID]), TraceMeta())
    assert res.vms[0]["evidence"] == {"exact": 2, "inferred": 1, "none": 0}
    assert res.evidence == {"exact": 2, "inferred": 1, "none": 0}


def test_a_finding_lists_only_created_on_get_page_events():
    s = unsynced()
    s.add(Kind.SP_UNSYNC, V1, gfn=9, role=0x3701, level=1, created=1)   # not a get_page
    s.pv(V1, 1, need_flush=1).run(V1)
    (f,) = replay_frame(s.frame()).findings
    assert f["events"][-3] == {"ts": s.rows[-3]["ts"], "tid": V1, "event": "sp_unsync",
                               "gfn": 9, "role": 0x3701, "level": 1}


def skipped(total: int, decisive: int, *reasons) -> dict:
    return {"total": total, "decisive": decisive,
            "by_reason": [{"reason": r, "count": n, "examples": ex} for r, n, ex in reasons]}


def test_merged_skipped_lines_add_counts_per_reason_most_frequent_first():
    a = skipped(5, 1, ("bad field", 2, ["l1", "l2"]), ("garbage", 3, ["g1"]))
    b = skipped(4, 2, ("bad field", 4, ["l3", "l4"]))
    assert merge_skipped([a, {}, b]) == {
        "total": 9, "decisive": 3,
        "by_reason": [{"reason": "bad field", "count": 6, "examples": ["l1", "l2", "l3"]},
                      {"reason": "garbage", "count": 3, "examples": ["g1"]}]}
    assert merge_skipped([{}, {}]) == {}


def test_merging_traces_adds_everything_up():
    one = replay_frame(flush_without_sync().frame(), source="a.kvmtrace")
    two = replay_frame(flush_with_sync().frame(), source="b.kvmtrace")
    two.skipped_lines = skipped(3, 0, ("garbage", 3, ["x"]))
    m = merge([one, two])
    assert m.verdict == "violation" and m.sources == ["a.kvmtrace", "b.kvmtrace"]
    assert m.evidence == {"exact": 0, "inferred": 2, "none": 0}
    assert (m.findings_total, m.events, m.handled) == (
        one.findings_total + two.findings_total, one.events + two.events,
        one.handled + two.handled)
    assert m.skipped_lines == skipped(3, 0, ("garbage", 3, ["x"]))
    assert [f["trace"] for f in m.findings] == ["a.kvmtrace"]
    lossy = AnalysisResult("inconclusive", "unknown", one.windows, [], [], 0, 7, 0)
    assert merge([one, lossy]).lost_events == 7
    assert merge([one]) is one


def test_merging_results_that_lack_some_evidence_keys_counts_them_as_zero():
    one = replay_frame(flush_with_sync().frame(), source="a")
    two = replay_frame(flush_with_sync().frame(), source="b")
    two.evidence = {"inferred": 1}
    assert merge([one, two]).evidence == {"exact": 0, "inferred": 2, "none": 0}
