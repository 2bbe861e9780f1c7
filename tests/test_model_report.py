"""The trace report the model builds: findings' event context and several traces merged."""
from __future__ import annotations

from kvmtrace.analysis import replay_frame
from kvmtrace.analysis.report import merge
from kvmtrace.schema import Kind

from model_scenarios import V1, flush_with_sync, flush_without_sync, unsynced

ROLE1, ROLE2 = 0x3701, 0x3702


def test_a_finding_lists_the_events_around_its_window():
    s = flush_without_sync()
    res = replay_frame(s.frame())
    (f,) = res.findings
    assert f["events"] == [
        {"ts": 1050, "tid": V1, "event": "sp_get", "gfn": 3, "role": ROLE2, "level": 2, "created": 1},
        {"ts": 1060, "tid": V1, "event": "sp_get", "gfn": 4, "role": ROLE1, "level": 1, "created": 1},
        {"ts": 1130, "tid": V1, "event": "flush_request_pv", "vcpu": 1, "need_flush": 1},
        {"ts": 1140, "tid": V1, "event": "spte_install"},
    ]
    assert (f["vcpu"], f["tid"], f["verdict"], f["meaningful"], f["harmless"]) == (1, V1, "violation", True, False)
    assert f["outstanding"][0]["gfn"] == 4 and f["closed_ts"] == 1140 and f["ts"] == 1130


def test_finding_events_carry_each_kind_s_payload():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1, Kind.PIO, value=0x3F8)
    (f,) = replay_frame(s.frame()).findings
    assert f["events"][-1] == {"ts": s.rows[-1]["ts"], "tid": V1, "event": "pio", "value": 0x3F8}
    get = [e for e in replay_frame(flush_without_sync().frame()).findings[0]["events"]
           if e["event"] == "sp_get"]
    assert all(set(e) == {"ts", "tid", "event", "gfn", "role", "level", "created"} for e in get)


def test_merge_adds_up_and_labels_each_trace():
    bad = replay_frame(flush_without_sync().frame(), source="bad.txt")
    good = replay_frame(flush_with_sync().frame(), source="good.txt")
    m = merge([good, bad])
    assert m.verdict == "violation" and m.sources == ["good.txt", "bad.txt"]
    for key in ("total", "meaningful", "ok", "violation", "suspect", "inconclusive", "open"):
        assert m.windows[key] == good.windows[key] + bad.windows[key]
    assert m.windows["total"] == 2 and m.windows["ok"] == 1 and m.windows["violation"] == 1
    assert [vm["trace"] for vm in m.vms] == ["good.txt", "bad.txt"]
    assert [f["trace"] for f in m.findings] == ["bad.txt"] and m.findings_total == 1
    assert m.events == good.events + bad.events and m.handled == good.handled + bad.handled
    assert m.lost_events == 0
    assert m.patterns == {"sync-in-place": 1, "hardware-flush-only": 1}
    assert m.pattern == "hardware-flush-only"          # a tie names the buggy generation
    assert merge([good]) is good


def test_merge_prefixes_notes_and_sums_losses():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).lost(7).run(V1)
    lossy = replay_frame(s.frame(), source="l.txt")
    good = replay_frame(flush_with_sync().frame(), source="g.txt")
    lossy.notes.append("a note")
    m = merge([lossy, good])
    assert m.lost_events == 7 and "l.txt: a note" in m.notes
    assert m.verdict == "ok" and m.windows["inconclusive"] == 1
    assert m.to_dict()["traces"] == ["l.txt", "g.txt"]
