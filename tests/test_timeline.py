"""kvmtrace timeline: Chrome trace-event JSON that Perfetto and chrome://tracing open."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from kvmtrace import exitcodes

from cli_support import FIXTURES, GEN, LAB, run_main
from kvmtrace.pipeline.visual import Collector, collect_paths
from kvmtrace.outputs.timeline import UNKNOWN_VM_PID, build, pid_of
from kvmtrace.sources.stream import load

PHASES = {"M", "X", "b", "e", "i"}
SHIPPED = sorted(str(p) for p in GEN.glob("*.jsonl")) + sorted(
    str(p) for p in (FIXTURES / "flushpaths").glob("*.txt")) + sorted(
    str(p) for p in (FIXTURES / "real").glob("*") if not p.name.endswith(".json")) + sorted(
    str(p) for p in (FIXTURES / "text").glob("*.txt")) + [
    str(FIXTURES / "lab_two_vcpu_flush_nosync.ftrace.txt"), str(LAB)]


def timeline(tmp_path: Path, capsys, *traces: str) -> dict:
    out = tmp_path / "t.json"
    code, _, err = run_main(["timeline", *traces, "-o", str(out)], capsys)
    _, verdict_json, _ = run_main(["analyze", "--json", *traces], capsys)
    # The exit code is the analysis verdict's, as for analyze and report.
    assert code == exitcodes.for_verdict(json.loads(verdict_json)["verdict"]), err
    assert out.exists()
    return json.loads(out.read_text())


def analysis(capsys, *traces: str) -> dict:
    _, out, _ = run_main(["analyze", "--json", *traces], capsys)
    return json.loads(out)


def check_structure(doc: dict, result: dict) -> dict:
    """The invariants every timeline keeps; returns counts per phase."""
    events = doc["traceEvents"]
    phases = Counter(e["ph"] for e in events)
    assert set(phases) <= PHASES
    meta = [e for e in events if e["ph"] == "M"]
    rest = [e for e in events if e["ph"] != "M"]
    assert events[:len(meta)] == meta                      # metadata first
    ts = [e["ts"] for e in rest]
    assert ts == sorted(ts) and all(t >= 0 for t in ts)    # monotone, from the start
    pids = {e["pid"] for e in rest if e.get("s") != "g"}
    assert 0 not in pids                                   # Perfetto's idle task
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert set(names) == pids
    assert names == {pid: f"VM {pid if pid != UNKNOWN_VM_PID else 0}" for pid in pids}
    assert all(e.get("s") == "g" and "pid" not in e for e in rest if e.get("cat") == "lost")
    threads = [(e["pid"], e["args"]["name"]) for e in meta if e["name"] == "thread_name"]
    assert len(threads) == len(set(threads))               # one thread_name per vCPU
    vcpu_rows = {(pid_of(vm["tgid"]), row["vcpu"]) for vm in result["vms"]
                 for row in vm["vcpus"] if row["vcpu"] is not None}
    assert vcpu_rows <= {(pid, int(n.split()[1])) for pid, n in threads if n.startswith("vCPU ")}
    slices = [e for e in rest if e["ph"] in ("X", "b")]
    assert len(slices) == result["windows"]["total"]
    by_verdict = Counter(e["name"].split()[0] for e in slices)
    for verdict in ("ok", "violation", "suspect", "inconclusive", "open"):
        assert by_verdict[verdict] == result["windows"][verdict], verdict
    for e in slices:
        assert e["name"] == f"{e['args']['verdict']} flush window"
        assert {"reason", "pattern", "evidence", "unsync_pages_at_open", "unsync_pages_left",
                "flush_to_sync_latency_us"} <= set(e["args"])
    begins = Counter(e["id"] for e in rest if e["ph"] == "b")
    ends = Counter(e["id"] for e in rest if e["ph"] == "e")
    assert begins == ends and all(n == 1 for n in begins.values())
    for e in rest:
        if e["ph"] == "i":
            assert e["s"] in ("t", "g")
        if e["ph"] == "X":
            assert e["dur"] > 0
    return phases


@pytest.mark.parametrize("trace", SHIPPED, ids=lambda p: Path(p).name)
def test_every_shipped_fixture_makes_a_well_formed_timeline(trace, tmp_path, capsys):
    doc = timeline(tmp_path, capsys, trace)
    result = analysis(capsys, trace)
    check_structure(doc, result)
    meta = doc["metadata"]["kvmtrace"]
    assert meta["verdict"] == result["verdict"] and meta["windows"] == result["windows"]


def test_sp_instants_are_every_sync_unsync_and_zap_of_the_trace(tmp_path, capsys):
    trace = str(FIXTURES / "real" / "exercise_2vcpu.parquet")
    doc = timeline(tmp_path, capsys, trace)
    kinds = Counter(load(trace).events["kind"].map(int))
    from kvmtrace.schema import Kind
    want = {"SP unsync": kinds[Kind.SP_UNSYNC], "SP sync": kinds[Kind.SP_SYNC],
            "SP zap": kinds[Kind.SP_ZAP]}
    assert want["SP unsync"] > 0 and want["SP sync"] > 0
    got = Counter(e["name"] for e in doc["traceEvents"] if e["ph"] == "i" and e["s"] == "t")
    assert {k: got[k] for k in want} == want
    requests = [e for e in doc["traceEvents"] if e.get("cat") == "flush-request"]
    assert len(requests) == 20                       # 20 flushes requested by the guest
    assert all(e["s"] == "t" for e in requests)


def test_the_violation_is_a_slice_on_vcpu1_at_its_time(lab_without_sync, tmp_path, capsys):
    doc = timeline(tmp_path, capsys, str(lab_without_sync))
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
               if e["name"] == "thread_name"}
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == 1
    s = slices[0]
    assert s["name"] == "violation flush window" and s["cname"] == "terrible"
    assert threads[(s["pid"], s["tid"])] == "vCPU 1"
    assert s["pid"] == UNKNOWN_VM_PID and s["tid"] == 13939     # no TGID in the capture
    start = doc["metadata"]["kvmtrace"]["start_time_ns"]
    assert start == 2252595347000                   # the first line of the capture
    assert s["ts"] == pytest.approx(2252596626 - 2252595347)      # us: the flush request
    assert s["dur"] == pytest.approx(2252596662 - 2252596626)     # to the walk that closed it
    assert s["args"]["pattern"] == "hardware-flush-only"
    assert s["args"]["unsync_pages_left"] == 1 and s["args"]["flush_to_sync_latency_us"] is None
    assert "reachable from its root" in s["args"]["reason"]
    flush = [e for e in doc["traceEvents"] if e.get("cat") == "flush-request"]
    assert [(e["ts"], e["tid"]) for e in flush] == [(s["ts"], s["tid"])]
    unsync = [e for e in doc["traceEvents"] if e["name"] == "SP unsync"]
    assert [e["args"]["gfn"] for e in unsync] == ["0x4"]
    assert not [e for e in doc["traceEvents"] if e["name"] == "SP sync"]


def test_lost_events_are_global_instants(tmp_path, capsys):
    doc = timeline(tmp_path, capsys, str(GEN / "tp-lost.jsonl"))
    lost = [e for e in doc["traceEvents"] if e.get("cat") == "lost"]
    assert len(lost) == 1 and lost[0]["ph"] == "i" and lost[0]["s"] == "g"
    assert lost[0]["args"]["count"] == 17
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert slices[0]["name"].startswith("inconclusive") and slices[0]["ts"] < lost[0]["ts"]


def test_windows_that_overlap_on_a_track_become_async_pairs(tmp_path, capsys):
    """The same trace twice: every window overlaps its copy on the same vCPU track."""
    trace = str(GEN / "tp-sync-in-place.jsonl")
    doc = timeline(tmp_path, capsys, trace, trace)
    phases = check_structure(doc, analysis(capsys, trace, trace))
    assert phases["X"] == 0 and phases["b"] == phases["e"] == 2
    single = timeline(tmp_path, capsys, trace)
    assert Counter(e["ph"] for e in single["traceEvents"])["b"] == 0


def test_instants_are_capped_and_the_metadata_says_so():
    trace = str(FIXTURES / "real" / "exercise_2vcpu.parquet")
    data = collect_paths([trace], max_instants=5)
    doc = build(data)
    meta = doc["metadata"]["kvmtrace"]["traces"][0]
    assert meta["instants_shown"] == 5 and meta["instants"] > 5
    assert "only the first 5" in meta["instants_left_out"]
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "i") == 5


def test_collector_demotes_windows_with_the_result():
    """Losses the replay could not place make every window inconclusive: so does the view."""
    from kvmtrace.analysis import FlushWindow
    from kvmtrace.analysis.report import AnalysisResult
    col = Collector("x")
    w = FlushWindow(tgid=1, tid=2, vcpu=0, opened_ts=10, opener="flush_request_pv",
                    open_seq=1, unsync_at_open=1)
    w.closed_ts, w.verdict, w.reason = 20, "ok", "synced"
    col.window(w)
    windows = {"total": 1, "meaningful": 1, "ok": 0, "violation": 0, "suspect": 0,
               "inconclusive": 1, "open": 0}
    note = "3 events were lost at unknown times; every window is inconclusive"
    t = col.finish(AnalysisResult("inconclusive", "unknown", windows, [], [], 0, 3, 5,
                                  notes=[note]))
    assert [m.verdict for m in t.windows] == ["inconclusive"]
    assert t.demoted == note


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("not a trace\n")
    code, _, err = run_main(["timeline", str(bad), "-o", str(tmp_path / "t.json")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bad.txt" in err
    code, _, err = run_main(["timeline", str(LAB), "-o", str(tmp_path / "no" / "t.json")], capsys)
    assert code == 2 and "cannot write" in err
