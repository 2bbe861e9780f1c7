"""Online analysis = the offline model fed incrementally: same results, thread-safe."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.sources.frame import from_rows
from kvmtrace.sources.stream import load
from kvmtrace.analysis.report import finding_dict, is_finding
from kvmtrace.pipeline.online import OnlineAnalysis
from kvmtrace.schema import Kind, TraceMeta
from kvmtrace.pipeline.session import Session
from kvmtrace.sources.chunks import FileSource

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TRACES = sorted(str(p) for p in (FIXTURES / "generations").glob("*.jsonl")) + [
    str(FIXTURES / "lab_two_vcpu_flush.ftrace.txt"),
    str(FIXTURES / "real" / "exercise_2vcpu.parquet"),
    str(FIXTURES / "real" / "exercise_4vcpu_stress.parquet"),
]
COMPARED = ("verdict", "pattern", "windows", "vms", "findings", "findings_total",
            "lost_events", "events")


def online_over(path: str, chunk_rows: int) -> tuple[OnlineAnalysis, list]:
    online = OnlineAnalysis()
    closed: list = []
    online.add_listener(closed.extend)
    session = Session(FileSource(path, chunk_rows=chunk_rows), online)
    session.open()
    session.start()
    assert session.wait(60), "the replay did not end"
    session.close()
    return online, closed


# One-row chunks of the 8485-event stress run would add only time.
CASES = [pytest.param(path, n, id=f"{n}-{Path(path).name}") for n in (1, 7, 1 << 20)
         for path in TRACES if not (n == 1 and "stress" in path)]


@pytest.mark.parametrize("path,chunk_rows", CASES)
def test_online_result_equals_analyze(path: str, chunk_rows: int) -> None:
    online, closed = online_over(path, chunk_rows)
    got = online.finish().to_dict()
    want = analyze_path(path).to_dict()
    for key in COMPARED:
        assert got[key] == want[key], key
    # Listeners saw every closed window once; the ones still open at the end were not closed.
    assert len(closed) == want["windows"]["total"] - want["windows"]["open"]
    assert [finding_dict(w) for w in closed if is_finding(w)] == want["findings"]


def test_snapshot_tallies_match_the_final_result() -> None:
    path = str(FIXTURES / "real" / "exercise_4vcpu_stress.parquet")
    online, _ = online_over(path, 500)
    snap = online.snapshot()
    result = online.finish()
    assert snap.windows == result.windows
    assert snap.meaningful_ok == result.windows["ok"] == 1200
    by_vcpu = {(r.tgid, r.vcpu): r.windows for r in snap.rows}
    for vm in result.vms:
        for row in vm["vcpus"]:
            assert by_vcpu[(vm["tgid"], row["vcpu"])] == row["windows"]
    assert snap.vms == snap.shadow_vms == [vm["tgid"] for vm in result.vms]
    assert all(r.latency_mean_ns is not None for r in snap.rows)


def test_feeding_from_one_thread_while_another_reads() -> None:
    trace = load(FIXTURES / "real" / "exercise_4vcpu_stress.parquet")
    online = OnlineAnalysis()
    online.start(trace.meta)
    seen: list[int] = []
    done = threading.Event()

    def feeder() -> None:
        for start in range(0, len(trace.events), 50):
            online.feed(trace.events.iloc[start:start + 50])
        done.set()

    t = threading.Thread(target=feeder)
    t.start()
    while not done.is_set():
        snap = online.snapshot()
        assert sum(snap.windows[k] for k in ("ok", "violation", "suspect", "inconclusive",
                                             "open")) == snap.windows["total"]
        seen.append(snap.windows["total"])
    t.join()
    assert seen == sorted(seen), "closed-window counts went backwards"
    assert online.finish().windows["ok"] == 1200


def test_lost_events_are_counted_per_vcpu() -> None:
    online, closed = online_over(str(FIXTURES / "generations" / "tp-lost.jsonl"), 3)
    snap = online.snapshot()
    assert snap.lost_events == 17 and snap.lost_windows == 1
    assert [r.lost_windows for r in snap.rows] == [1]
    assert [w.verdict for w in closed] == ["inconclusive"]


def _sp_rows(role: int) -> list[dict]:
    return [{"ts": 10, "tgid": 7, "tid": 8, "kind": int(Kind.SP_GET), "gfn": 1, "role": role,
             "level": role & 0xF, "created": 1}]


def test_shadow_paging_vms_are_those_with_indirect_shadow_pages() -> None:
    direct = OnlineAnalysis()
    direct.start(TraceMeta(tdp=True))
    direct.feed(from_rows(_sp_rows(0x84)))         # role.direct: a TDP / direct-map page
    assert direct.snapshot().vms == [7] and direct.shadow_vms == []
    shadowing = OnlineAnalysis()
    shadowing.start(TraceMeta(tdp=True))
    shadowing.feed(from_rows(_sp_rows(0x1704)))    # indirect: shadows a guest page table
    assert shadowing.shadow_vms == [7]


def test_the_model_keeps_its_own_copy_of_the_metadata() -> None:
    meta = TraceMeta(tdp=False)
    online = OnlineAnalysis()
    online.start(meta)
    meta.lost_events = 1000                        # the recorder updates its meta at close
    online.feed(from_rows(_sp_rows(0x1704)))
    assert online.finish().lost_events == 0


def test_misuse_is_refused() -> None:
    online = OnlineAnalysis()
    with pytest.raises(RuntimeError):
        online.feed(from_rows(_sp_rows(0x1704)))
    online.start(TraceMeta())
    with pytest.raises(RuntimeError):
        online.start(TraceMeta())
    online.finish()
    with pytest.raises(RuntimeError):
        online.feed(from_rows(_sp_rows(0x1704)))


def test_a_bad_chunk_reaches_the_caller_of_session_close() -> None:
    class BadSource(FileSource):
        def run(self, on_chunk, duration, stop):
            on_chunk(pd.DataFrame({"ts": np.array([1])}))

    session = Session(BadSource(str(FIXTURES / "generations" / "tp-violation.jsonl")),
                      OnlineAnalysis())
    session.open()
    session.start()
    session.wait(60)
    with pytest.raises(Exception, match="missing column"):
        session.close()
