"""The trace report the model builds: findings' event context and several traces merged."""
from __future__ import annotations

from kvmtrace.analysis import replay_frame
from kvmtrace.analysis.report import merge
from kvmtrace.schema import Kind

from model_scenarios import V0, V1, Stream, built, flush_with_sync, flush_without_sync, unsynced

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
    assert f["outstanding"] == [{"gfn": 4, "role": ROLE1, "level": 1, "unsync_ts": 1110,
                                 "unsync_tid": 10, "reachable": True, "ambiguous": False}]
    assert f["closed_ts"] == 1140 and f["ts"] == 1130 and f["tgid"] == 1
    assert f["reason"].startswith("the vCPU ran guest code with 1 unsync shadow page")
    assert f["pattern"] == "hardware-flush-only"


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


def _two_vcpu_trace():
    """vCPU1 violates; vCPU0 flushes with its page synced (ok, 20 ns to the sync)."""
    s = flush_without_sync()
    s.unsync(V0, 4).run(V0)
    s.pv(V0, 0, need_flush=1).sync(V0, 4).sync(V0, 4).run(V0)
    return s


def test_unplaced_losses_demote_every_window_and_say_why():
    from kvmtrace.schema import TraceMeta
    res = replay_frame(_two_vcpu_trace().frame(), TraceMeta(lost_events=5))
    assert res.verdict == "inconclusive" and res.lost_events == 5
    assert {k: res.windows[k] for k in ("ok", "violation", "suspect", "inconclusive")} == \
        {"ok": 0, "violation": 0, "suspect": 0, "inconclusive": 2}
    assert all(v["windows"]["inconclusive"] == 1 and v["windows"]["ok"] == v["windows"]["violation"] == 0
               for v in res.vms[0]["vcpus"])
    (f,) = res.findings
    why = "5 events were lost at unknown times (no LOST markers in the stream)"
    assert f["verdict"] == "inconclusive"
    assert f["reason"].startswith(f"{why} (the replay said: the vCPU ran guest code with 1 unsync")
    assert res.notes == [why + "; every window is inconclusive"]


def test_per_vcpu_rows_count_and_time_their_windows():
    res = replay_frame(_two_vcpu_trace().frame())
    (vm,) = res.vms
    assert vm["tgid"] == 1 and vm["verdict"] == "violation"
    rows = {r["vcpu"]: r for r in vm["vcpus"]}
    assert rows[1]["verdict"] == "violation" and rows[1]["tids"] == [V1]
    assert rows[1]["latency_ns"] == {"count": 0, "mean": None, "max": None}
    assert rows[0]["verdict"] == "ok" and rows[0]["windows"]["meaningful"] == 1
    assert rows[0]["latency_ns"] == {"count": 1, "mean": 10, "max": 10}
    assert res.windows == {"total": 2, "meaningful": 2, "ok": 1, "violation": 1, "suspect": 0,
                           "inconclusive": 0, "open": 0}


def test_a_thread_without_a_vcpu_id_gets_its_own_row():
    s = unsynced()
    s.add(Kind.SP_GET, 13, gfn=1, role=0x3704, level=4, created=0).run(13)
    s.add(Kind.FLUSH_REQUEST_GUEST, 13).run(13)          # no vcpu id anywhere on tid 13
    res = replay_frame(s.frame())
    (row,) = res.vms[0]["vcpus"]
    assert row["vcpu"] is None and row["tids"] == [13]
    assert res.findings[0]["vcpu"] is None and res.findings[0]["tid"] == 13


def test_findings_are_capped_but_counted():
    from kvmtrace.analysis import Replayer
    s = _two_vcpu_trace()
    s.unsync(V0, 4).run(V0).pv(V1, 1, need_flush=1).run(V1)   # a second violation on vCPU1
    r = Replayer(max_findings=1)
    r.feed(s.frame())
    res = r.finish()
    assert res.findings_total == 2 and len(res.findings) == 1
    r = Replayer(vcpu=0)
    r.feed(s.frame())
    res = r.finish()
    assert res.windows["total"] == 1 and res.verdict == "ok" and res.findings == []


def test_result_to_dict_is_the_result():
    res = replay_frame(_two_vcpu_trace().frame(), source="x.txt")
    d = res.to_dict()
    assert {k: d[k] for k in (
        "verdict", "pattern", "pattern_kernels", "windows", "vms", "findings", "findings_total",
        "lost_events", "events", "patterns", "notes", "traces")} == {"verdict": "violation", "pattern": res.pattern,
                 "pattern_kernels": d["pattern_kernels"], "windows": res.windows,
                 "vms": res.vms, "findings": res.findings, "findings_total": 1,
                 "lost_events": 0, "events": res.events, "patterns": res.patterns,
                 "notes": [], "traces": ["x.txt"]}
    assert res.pattern == "hardware-flush-only" and res.patterns == {"hardware-flush-only": 1,
                                                                      "sync-in-place": 1}
    assert d["pattern_kernels"].startswith("kernels 4.16-5.12")
    assert res.events == len(_two_vcpu_trace().frame())


# ----------------------------------------------------------------------------- edges the mutants found

def test_vcpu_0_is_a_vcpu_not_an_unknown_one():
    s = unsynced()
    s.pv(V0, 0, need_flush=1).run(V0)                    # vCPU 0 runs with page 4 unsync
    res = replay_frame(s.frame())
    (f,) = res.findings
    assert f["vcpu"] == 0 and f["verdict"] == "violation"
    assert {"ts": f["events"][-2]["ts"], "tid": V0, "event": "flush_request_pv", "vcpu": 0,
            "need_flush": 1} == f["events"][-2]
    assert [r["vcpu"] for r in res.vms[0]["vcpus"]] == [0]


def test_an_existing_page_s_get_says_created_0():
    from kvmtrace.analysis import Replayer
    from kvmtrace.analysis.report import finding_dict
    s = unsynced()
    s.pv(V1, 1, need_flush=1).get(V1, 1, 4, created=0).run(V1)
    (win,) = Replayer().feed(s.frame())
    events = finding_dict(win)["events"]
    assert {"ts": events[-2]["ts"], "tid": V1, "event": "sp_get", "gfn": 1, "role": 0x3704,
            "level": 4, "created": 0} == events[-2]


def test_at_most_32_outstanding_pages_are_listed_in_a_finding():
    s = built()
    for g in range(40):
        s.get(V1, 3, 2, created=0).get(V1, 100 + g, 1).unsync(V0, 100 + g)
    s.run(V0).pv(V1, 1, need_flush=1).run(V1)
    (f,) = replay_frame(s.frame()).findings
    assert f["verdict"] == "violation" and len(f["outstanding"]) == 32


def test_rows_are_ordered_by_vm_then_vcpu_then_threads_without_one():
    s = _two_vcpu_trace()
    s.add(Kind.SP_GET, 13, gfn=1, role=0x3704, level=4, created=0).run(13)
    s.add(Kind.FLUSH_REQUEST_GUEST, 13).run(13)
    s2 = Stream(tgid=0)
    s2.pv(5, 2).pv(5, 2, need_flush=1).run(5)
    from kvmtrace.sources.frame import concat
    res = replay_frame(concat([s2.frame(), s.frame()]).sort_values("ts", kind="stable"))
    assert [vm["tgid"] for vm in res.vms] == [0, 1]
    assert [r["vcpu"] for r in res.vms[1]["vcpus"]] == [0, 1, None]
    assert res.vms[1]["windows"]["total"] == 3


def test_per_vcpu_latency_mean_and_max_over_windows():
    s = unsynced()
    s.pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)               # 10 ns to the sync
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V0).run(V0).sync(V1, 4).run(V1)  # 30 ns
    res = replay_frame(s.frame())
    (row,) = [r for r in res.vms[0]["vcpus"] if r["vcpu"] == 1]
    assert row["windows"]["total"] == 2 and row["windows"]["ok"] == 2
    assert row["windows"]["meaningful"] == 2
    assert row["latency_ns"] == {"count": 2, "mean": 20, "max": 30}
    assert res.patterns == {"sync-in-place": 2}


def test_every_demoted_verdict_becomes_inconclusive():
    from kvmtrace.analysis.report import Aggregate
    from kvmtrace.analysis.window import FlushWindow
    agg = Aggregate()
    for verdict in ("ok", "violation", "suspect", "inconclusive"):
        w = FlushWindow(tgid=1, tid=11, vcpu=1, opened_ts=1, opener="x", open_seq=1,
                        unsync_at_open=1)
        w.verdict, w.reason = verdict, "r"
        agg.add(w)
    agg.demote_all("why")
    (row,) = agg.rows.values()
    assert row.counts["inconclusive"] == 4 and row.counts["total"] == 4
    assert row.counts["ok"] == row.counts["violation"] == row.counts["suspect"] == 0
    assert agg.doubts == ["why"]
    assert [f["reason"] for f in agg.findings] == ["why (the replay said: r)", "why (the replay said: r)", "r"]


def test_result_notes_name_each_doubt():
    from kvmtrace.analysis import Replayer
    from kvmtrace.schema import TraceMeta
    s = unsynced()
    s.lost(2)
    r = Replayer(TraceMeta(lost_events=5), vm=9)
    r.feed(s.frame())
    res = r.finish()
    assert res.lost_events == 5 and res.verdict == "inconclusive"
    assert res.notes == [
        "3 events were lost at unknown times (no LOST markers in the stream); every window is "
        "inconclusive",
        "no event of VM tgid 9 is in this trace",
        "no flush window was seen, but 5 events were lost: a flush may have been missed"]
    assert res.meta == TraceMeta(lost_events=5).to_dict()


def test_a_late_chunk_without_windows_is_inconclusive_and_says_why():
    from kvmtrace.analysis import Replayer
    frame = unsynced().frame()
    r = Replayer()
    r.feed(frame.iloc[5:])
    r.feed(frame.iloc[:5])
    res = r.finish()
    assert res.verdict == "inconclusive"
    assert res.notes[-1] == ("no flush window was seen, but 5 events arrived out of time order "
                             "across chunks: a flush may have been missed")


def test_merge_without_sources_and_with_function_probe_patterns():
    a = replay_frame(flush_without_sync().frame())
    b = replay_frame(flush_with_sync().frame())
    a.notes.append("n")
    m = merge([a, b])
    assert m.notes == [": n"] and [f["trace"] for f in m.findings] == [""]
    assert m.meta == {} and m.sources == []
    only_fn = replay_frame(flush_with_sync().frame())
    only_fn.patterns, only_fn.pattern = {}, "unload-reload"
    none = replay_frame(flush_with_sync().frame())
    none.patterns, none.pattern = {}, "unknown"
    assert merge([none, only_fn]).pattern == "unload-reload"


def test_windows_are_counted_per_flush_path_and_demoted_there_too():
    from kvmtrace.schema import TraceMeta
    counts = {"total": 2, "meaningful": 2, "ok": 1, "violation": 1, "suspect": 0,
              "inconclusive": 0, "open": 0}
    res = replay_frame(_two_vcpu_trace().frame())
    assert res.to_dict()["windows_by_path"] == {"steal-time": counts}
    s = unsynced()
    s.add(Kind.FLUSH_REQUEST_GUEST, V1, vcpu=1).run(V1)
    other = replay_frame(s.frame())
    (path,) = other.to_dict()["windows_by_path"]
    assert path != "steal-time"
    m = merge([res, other, res])
    assert m.to_dict()["windows_by_path"]["steal-time"] == {k: 2 * v for k, v in counts.items()}
    assert list(m.to_dict()["windows_by_path"]) == sorted([path, "steal-time"])
    demoted = replay_frame(_two_vcpu_trace().frame(), TraceMeta(lost_events=5))
    assert demoted.to_dict()["windows_by_path"] == {"steal-time": {
        **counts, "ok": 0, "violation": 0, "inconclusive": 2}}


def test_threads_without_a_vcpu_id_get_a_row_each_and_a_moved_vcpu_keeps_one():
    s = unsynced()
    for tid in (13, 14):
        s.add(Kind.SP_GET, tid, gfn=1, role=0x3704, level=4, created=0).run(tid)
        s.add(Kind.FLUSH_REQUEST_GUEST, tid).run(tid)
    res = replay_frame(s.frame())
    rows = res.vms[0]["vcpus"]
    assert [(r["vcpu"], r["tids"]) for r in rows] == [(None, [13]), (None, [14])]
    from kvmtrace.analysis.report import Aggregate
    from kvmtrace.analysis.window import FlushWindow
    agg = Aggregate()
    for tid in (20, 21):                       # vCPU 0 run by two threads in turn
        w = FlushWindow(tgid=1, tid=tid, vcpu=0, opened_ts=1, opener="x", open_seq=1,
                        unsync_at_open=0)
        w.verdict = "ok"
        agg.add(w)
    (row,) = agg.rows.values()
    assert row.to_dict()["tids"] == [20, 21] and row.counts["total"] == 2 and row.tgid == 1


def test_demotion_keeps_windows_already_inconclusive_per_path():
    from kvmtrace.analysis.report import Aggregate
    from kvmtrace.analysis.window import FlushWindow
    agg = Aggregate()
    for verdict in ("ok", "violation", "suspect", "suspect", "inconclusive"):
        w = FlushWindow(tgid=1, tid=11, vcpu=1, opened_ts=1, opener="steal-time", open_seq=1,
                        unsync_at_open=1)
        w.verdict, w.reason = verdict, "r"
        agg.add(w)
    assert agg.by_path["steal-time"]["suspect"] == 2
    agg.demote_all("why")
    c = agg.by_path["steal-time"]
    assert (c["inconclusive"], c["ok"], c["violation"], c["suspect"], c["total"]) == (5, 0, 0, 0, 5)


def test_latency_mean_is_an_integer_number_of_nanoseconds():
    from kvmtrace.analysis.report import VcpuRow
    from kvmtrace.analysis.window import FlushWindow
    row = VcpuRow(1, 1)
    for sync in (110, 125):
        w = FlushWindow(tgid=1, tid=11, vcpu=1, opened_ts=100, opener="x", open_seq=1,
                        unsync_at_open=1)
        w.verdict = "ok"
        w.note_sync(sync)
        row.add(w)
    assert row.to_dict()["latency_ns"] == {"count": 2, "mean": 17, "max": 25}
    assert isinstance(row.to_dict()["latency_ns"]["mean"], int)


def test_function_probe_patterns_decide_when_no_window_was_meaningful():
    from kvmtrace.schema import TraceMeta
    meta = TraceMeta(probes=["kprobe:kvm_mmu_sync_roots", "kprobe:kvm_mmu_unload"])
    s = built()
    for _ in range(2):                       # two unload-reload flushes, nothing unsync
        s.pv(V1, 1, need_flush=1).fn(Kind.MMU_UNLOAD, V1).run(V1, Kind.GUEST_ENTRY)
    s.pv(V1, 1, need_flush=1).fn(Kind.HW_FLUSH, V1).run(V1, Kind.GUEST_ENTRY)  # one without
    res = replay_frame(s.frame(), meta)
    assert res.windows["meaningful"] == 0 and res.windows["total"] == 3
    assert res.pattern == "unload-reload"
