"""The per-VM fleet function (kvmtrace/analysis/fleet.py) on small hand-built traces, and the
host/fleet verdicts on hand-made rows: fast, in process, no engine.

What they must give is the module's contract: a VM's row is what ``analyze --vm TGID``
says of its events (every LOST/INVALID marker kept), a host's verdict is analyze's
precedence over its VMs, the fleet is as bad as its worst host."""
from __future__ import annotations

import json

import pytest

from kvmtrace.analysis.fleet import (ROW_COLUMNS, analyze_vm, analyze_vm_parts, host_verdict,
                                     normalise_row, replay_vm, sort_rows, summarize, vm_row)
from kvmtrace.analysis.report import COUNT_KEYS
from kvmtrace.schema import Kind, TraceMeta
from kvmtrace.sources.frame import concat

from model_scenarios import V0, V1, Stream, flush_with_sync, flush_without_sync


def meta(kernel: str = "6.18.0", notes=()) -> TraceMeta:
    return TraceMeta(kernel_release=kernel, notes=list(notes))


def test_a_vm_row_is_the_vm_analysis_in_schema_order():
    (row,) = analyze_vm(flush_without_sync().frame(), meta(), host="h1", source="a.kvmtrace")
    assert list(row) == list(ROW_COLUMNS)
    assert (row["host"], row["vm"], row["kernel"], row["verdict"]) == ("h1", 1, "6.18.0",
                                                                      "violation")
    assert row["vcpus"] == "[1]" and row["windows_total"] == 1 and row["windows_violation"] == 1
    assert (row["evidence_inferred"], row["evidence_exact"], row["evidence_none"]) == (1, 0, 0)
    assert row["events"] == len(flush_without_sync().rows) and row["lost_events"] == 0
    assert row["findings_total"] == 1
    (f,) = json.loads(row["findings"])
    assert f["verdict"] == "violation" and f["vcpu"] == 1
    assert json.loads(row["notes"]) == []
    assert row["pattern"] == "hardware-flush-only"


def test_other_vms_rows_are_left_out_and_losses_of_any_vm_kept():
    mine = flush_with_sync().frame()
    other = Stream(tgid=2)
    other.pv(V1, 0).run(V1)
    other.ts += 5
    other.rows.append({"ts": other.ts, "kind": int(Kind.LOST), "value": 3})
    frame = concat([mine, other.frame()]).sort_values("ts", kind="stable").reset_index(drop=True)
    with pytest.raises(ValueError, match=r"found TGIDs \[1, 2\]"):
        analyze_vm(frame, meta(), host="h")
    (row,) = analyze_vm(frame, meta(), host="h", vm=1)
    assert row["events"] == len(mine) + 1            # its rows and the VM-less loss
    # The loss came after VM 1's window closed: it changes no verdict, it is counted.
    assert row["lost_events"] == 3 and row["verdict"] == "ok"
    res = replay_vm(frame, meta(notes=["from the recorder"]), 1)
    assert res.notes[0] == "from the recorder"
    assert (res.population[1], res.population[2]) == ([0, 1], [])


def test_parts_of_one_vm_are_replayed_alone_and_reported_together_in_name_order():
    parts = [("b.kvmtrace", flush_without_sync().frame(), meta("6.1.0")),
             ("a.kvmtrace", flush_with_sync().frame(), meta("6.18.0")),
             ("c.kvmtrace", flush_with_sync().frame(), meta(""))]
    (row,) = analyze_vm_parts(parts, host="h", vm=1)
    assert row["kernel"] == "6.1.0,6.18.0" and row["verdict"] == "violation"
    assert (row["windows_total"], row["windows_ok"], row["windows_violation"]) == (3, 2, 1)
    assert [f["trace"] for f in json.loads(row["findings"])] == ["b.kvmtrace"]


def test_a_vm_absent_from_the_result_has_no_vcpus():
    res = replay_vm(flush_with_sync().frame(), meta(), 1).to_dict()
    row = vm_row(res, host="h", vm=7, kernel="")
    assert row["vcpus"] == "[]" and row["vm"] == 7


def test_rows_from_an_engine_are_plain_and_sorted_by_host_then_vm():
    import numpy as np
    raw = {name: "x" for name in ROW_COLUMNS}
    raw.update({name: np.int64(3) for name in ROW_COLUMNS if name.startswith(("windows_",
                "evidence_")) or name in ("events", "lost_events", "findings_total")})
    rows = [{**raw, "host": "b", "vm": "2"}, {**raw, "host": "a", "vm": "10"},
            {**raw, "host": "a", "vm": "9"}]
    out = sort_rows(rows)
    assert [(r["host"], r["vm"]) for r in out] == [("a", 9), ("a", 10), ("b", 2)]
    assert type(out[0]["vm"]) is int and type(out[0]["events"]) is int
    assert list(normalise_row(rows[0])) == list(ROW_COLUMNS)


def test_a_host_is_as_bad_as_its_worst_vm():
    assert host_verdict(["ok", "suspect", "inconclusive"]) == "suspect"
    # One VM that could not be judged is not hidden by an ok neighbour: the same two VMs on
    # two hosts give an inconclusive fleet, so on one host they must too.
    assert host_verdict(["ok", "inconclusive"]) == "inconclusive"
    assert host_verdict(["no-flushes", "inconclusive"]) == "inconclusive"
    assert host_verdict(["violation", "ok"]) == "violation"
    assert host_verdict([]) == "no-flushes"


def row(host: str, vm: int, verdict: str, kernel: str = "6.18.0", violations: int = 0,
        pattern: str = "sync-in-place") -> dict:
    r = {name: 0 for name in ROW_COLUMNS}
    r.update(host=host, vm=vm, verdict=verdict, kernel=kernel, pattern=pattern, events=100 + vm,
             lost_events=vm, findings_total=violations, windows_total=2 + violations,
             windows_violation=violations, windows_ok=2)
    return r


def test_the_fleet_is_as_bad_as_its_worst_host():
    rows = [row("good", 1, "ok"), row("good", 2, "ok", kernel="6.1.0,6.18.0"),
            row("lossy", 3, "inconclusive", kernel=""), row("lossy", 4, "ok"),
            row("bad", 5, "ok", kernel="5.10.0"),
            row("bad", 6, "violation", kernel="5.10.0", violations=2, pattern="hardware-flush-only"),
            row("bad2", 7, "violation", kernel="5.10.0", violations=5, pattern="hardware-flush-only"),
            row("meh", 8, "suspect")]
    s = summarize(rows)
    assert s["verdict"] == "violation"
    assert [(h["host"], h["verdict"]) for h in s["hosts"]] == [
        ("bad2", "violation"), ("bad", "violation"), ("meh", "suspect"),
        ("lossy", "inconclusive"), ("good", "ok")]     # lossy's ok VM does not hide VM 3
    bad = s["hosts"][1]
    assert bad == {"host": "bad", "verdict": "violation", "vms": 2,
                   "vm_verdicts": {"ok": 1, "violation": 1},
                   "windows": {**{k: 0 for k in COUNT_KEYS}, "total": 6, "violation": 2, "ok": 4},
                   "events": 211, "lost_events": 11, "findings_total": 2,
                   "kernels": ["5.10.0"], "worst_vm": 6}
    assert s["hosts"][4]["kernels"] == ["6.1.0", "6.18.0"] and s["hosts"][4]["worst_vm"] == 1
    assert s["hosts"][3]["worst_vm"] == 3
    assert s["host_verdicts"] == {"violation": 2, "suspect": 1, "inconclusive": 1, "ok": 1}
    assert (s["vms"], s["events"]) == (8, sum(100 + v for v in range(1, 9)))
    by_kernel = {k["kernel"]: k for k in s["kernels"]}
    assert list(by_kernel) == ["5.10.0", "6.1.0", "6.18.0", "unknown"]
    assert by_kernel["5.10.0"] == {"kernel": "5.10.0", "hosts": 2, "vms": 3,
                                   "patterns": {"hardware-flush-only": 2, "sync-in-place": 1},
                                   "vm_verdicts": {"ok": 1, "violation": 2}}
    assert by_kernel["6.18.0"]["hosts"] == 3 and by_kernel["unknown"]["vms"] == 1


def test_an_inconclusive_host_is_not_hidden_by_ok_ones():
    s = summarize([row("a", 1, "ok"), row("b", 2, "inconclusive"), row("c", 3, "no-flushes")])
    assert s["verdict"] == "inconclusive"
    assert [h["host"] for h in s["hosts"]] == ["b", "c", "a"]
    assert summarize([])["verdict"] == "no-flushes" and summarize([])["hosts"] == []


def test_row_json_is_compact_with_sorted_keys():
    (row,) = analyze_vm(flush_without_sync().frame(), meta(), host="h")
    assert row["findings"].startswith('[{"closed_ts":') and ", " not in row["findings"][:40]
    s = flush_with_sync()
    s.pv(V0, 0, need_flush=1).run(V0)
    res = replay_vm(s.frame(), meta(), 1).to_dict()
    assert vm_row(res, host="h", vm=1, kernel="")["vcpus"] == "[0,1]"


def test_the_vms_metadata_and_finding_cap_reach_its_replay():
    # TDP in effect (meta.tdp): a guest flush needs no shadow sync, whatever the events.
    (row,) = analyze_vm(flush_without_sync().frame(), TraceMeta(tdp=True), host="h")
    assert row["verdict"] == "ok"
    res = replay_vm(flush_without_sync().frame(), meta(), 1, max_findings=0)
    assert (res.findings, res.findings_total) == ([], 1)


def test_parts_with_the_same_name_keep_their_order():
    parts = [("x.kvmtrace", flush_with_sync().frame(), meta("6.18.0")),
             ("x.kvmtrace", flush_without_sync().frame(), meta("6.18.0"))]
    (row,) = analyze_vm_parts(parts, host="h", vm=1)
    assert row["windows_total"] == 2 and row["verdict"] == "violation"


def test_a_result_without_some_evidence_keys_counts_them_as_zero():
    res = replay_vm(flush_with_sync().frame(), meta(), 1).to_dict()
    res["evidence"] = {"inferred": 4}
    row = vm_row(res, host="h", vm=1, kernel="")
    assert (row["evidence_inferred"], row["evidence_exact"], row["evidence_none"]) == (4, 0, 0)


def test_conclude_distrusts_on_the_sources_doubts_and_keeps_skipped_lines():
    from kvmtrace.analysis import Replayer
    from kvmtrace.analysis.fleet import conclude
    rep = Replayer(meta())
    rep.feed(flush_with_sync().frame())
    skipped = {"total": 2, "decisive": 0, "by_reason": [{"reason": "garbage", "count": 2,
                                                         "examples": ["x"]}]}
    res = conclude(rep, meta(), doubts=["3 lines were undecodable"], skipped=skipped)
    assert "3 lines were undecodable; every window is inconclusive" in res.notes
    assert res.verdict == "inconclusive" and res.skipped_lines == skipped


def test_a_vm_recorded_in_two_parts_lists_the_vcpus_of_both():
    # One entry per recording in the merged result: the row's vCPUs are those of every part
    # (here the 2-vCPU recording split by vCPU thread; every window is on vCPU 1).
    from kvmtrace.sources.stream import load
    from fleet_support import REAL
    trace = load(REAL / "exercise_2vcpu.parquet")
    ev = trace.events
    vm = int(ev[ev["kind"] > 1]["tgid"].iloc[0])
    owners = {v: set(ev[ev["vcpu"] == v]["tid"]) for v in (0, 1)}
    unowned = ~ev["tid"].isin(owners[0] | owners[1])
    parts = [(name, ev[ev["tid"].isin(owners[v]) | unowned].reset_index(drop=True), trace.meta)
             for name, v in (("a", 0), ("b", 1))]
    alone_b = analyze_vm_parts(parts[1:], host="h", vm=vm)[0]
    both = analyze_vm_parts(parts, host="h", vm=vm)[0]
    assert json.loads(alone_b["vcpus"]) == [1]
    assert json.loads(both["vcpus"]) == [1] and both["windows_ok"] == alone_b["windows_ok"] > 0
