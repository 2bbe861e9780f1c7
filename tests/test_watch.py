"""`kvmtrace watch`: its JSON lines are what `analyze` finds; the table views."""
from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

import pytest

from kvmtrace.sources.stream import load
from kvmtrace.outputs.livetable import AnsiTable, JsonLines, PlainLines
from kvmtrace.schema import Kind
from kvmtrace.sources.chunks import FileSource
from kvmtrace.sources.native import write_trace
from kvmtrace.pipeline.watch import Watch

from cli_support import FIXTURES, GEN, REAL, run_main as run



@pytest.fixture(scope="module")
def unsynced(tmp_path_factory) -> Path:
    """The real 2-vCPU recording with the SP syncs of windows 3, 9 and 15 removed: the SPs
    they left unsync stay unsync, so some later windows are violations too (5 in all)."""
    trace = load(REAL)
    ev = trace.events
    opens = list(ev.index[(ev["kind"] == int(Kind.FLUSH_REQUEST_PV)) & (ev["need_flush"] == 1)])
    drop = []
    for i in (3, 9, 15):
        inside = (ev.index > opens[i]) & (ev.index < opens[i + 1])
        drop += list(ev.index[inside & (ev["kind"] == int(Kind.SP_SYNC))][:1])
    path = tmp_path_factory.mktemp("watch") / "unsynced.parquet"
    write_trace(path, ev.drop(drop).reset_index(drop=True), trace.meta)
    return path


def analyze_findings(path: Path, capsys) -> dict:
    code, out, _ = run(["analyze", "--json", str(path)], capsys)
    d = json.loads(out)
    assert d["findings_total"] == len(d["findings"]), "too many findings to compare"
    return d


def watch_lines(path: Path, capsys, *extra: str) -> tuple[int, list[dict]]:
    code, out, _ = run(["watch", "--json", "--replay", str(path), *extra], capsys)
    return code, [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("name", ["unsynced", "tp-violation.jsonl", "tp-suspect.jsonl",
                                  "tp-lost.jsonl", "fn-5.10-harmless.jsonl",
                                  "lab_two_vcpu_flush.ftrace.txt", "exercise_2vcpu.parquet"])
def test_watch_json_windows_are_analyze_findings(name: str, unsynced: Path, capsys) -> None:
    path = {"unsynced": unsynced,
            "lab_two_vcpu_flush.ftrace.txt": FIXTURES / name,
            "exercise_2vcpu.parquet": REAL}.get(name, GEN / name)
    want = analyze_findings(path, capsys)
    code, lines = watch_lines(path, capsys)
    windows = [{k: v for k, v in l.items() if k != "type"} for l in lines if l["type"] == "window"]
    assert windows == want["findings"]
    final = lines[-1]
    assert final["type"] == "summary" and final["final"] is True
    assert final["verdict"] == want["verdict"]
    assert final["windows"] == want["windows"]
    # One verdict -> exit code table for analyze and watch (suspect, inconclusive: 3).
    assert code == {"violation": 1, "suspect": 3, "inconclusive": 3}.get(want["verdict"], 0)


def test_the_unsynced_recording_has_several_violations(unsynced: Path, capsys) -> None:
    d = analyze_findings(unsynced, capsys)
    assert d["verdict"] == "violation" and d["windows"]["violation"] >= 3
    assert d["windows"]["ok"] >= 3, "windows before the first removed sync are still ok"


def test_small_chunks_give_the_same_lines(unsynced: Path, capsys) -> None:
    want = analyze_findings(unsynced, capsys)["findings"]
    out = io.StringIO()
    Watch(FileSource(unsynced, chunk_rows=3), JsonLines(out), interval=60).run()
    lines = [json.loads(l) for l in out.getvalue().splitlines()]
    assert [{k: v for k, v in l.items() if k != "type"} for l in lines
            if l["type"] == "window"] == want


def test_plain_view_prints_each_violation_with_context_and_the_table(capsys) -> None:
    out = io.StringIO()
    result = Watch(FileSource(GEN / "tp-violation.jsonl"), PlainLines(out), interval=60).run()
    text = out.getvalue()
    assert result.verdict == "violation"
    assert re.search(r"VIOLATION \[evidence inferred\]  VM 5000 vCPU 1: the vCPU ran guest code", text)
    assert "left unsync: gfn 0x1003" in text and "reachable" in text
    assert "flush_request_pv" in text                   # the events around it
    row = [l for l in text.splitlines() if l.split()[:2] == ["5000", "1"]]
    assert row and row[0].split()[2:5] == ["1", "1", "0"]   # windows, meaningful, ok
    assert text.rstrip().endswith("stopped: analysis verdict violation")


class _DrawGatedSource(FileSource):
    """Feeds chunk i only after the view has drawn its table i+1 times (for the first
    ``gates`` chunks), so a test of what the terminal shows does not depend on how a busy
    machine schedules the feeding thread against the drawing one."""

    def __init__(self, path: Path, view: "_DrawCountingTable", gates: int, **kw) -> None:
        super().__init__(path, **kw)
        self.view, self.gates = view, gates

    def run(self, on_chunk, duration, stop) -> None:
        fed = 0

        def gated(chunk) -> None:
            nonlocal fed
            if fed < self.gates:
                assert self.view.drawn_times[fed].wait(30), "the table was never drawn"
            fed += 1
            on_chunk(chunk)
        super().run(gated, duration, stop)


class _DrawCountingTable(AnsiTable):
    def __init__(self, out) -> None:
        super().__init__(out)
        self.ticks = 0
        self.drawn_times = [threading.Event() for _ in range(8)]

    def tick(self, snap, elapsed) -> None:
        super().tick(snap, elapsed)
        if self.ticks < len(self.drawn_times):
            self.drawn_times[self.ticks].set()
        self.ticks += 1


def test_ansi_view_redraws_in_place(capsys) -> None:
    out = io.StringIO()
    view = _DrawCountingTable(out)
    # The first two chunks each wait for a draw: a redraw while the trace is fed, and the
    # final one after it, whatever the scheduling.
    w = Watch(_DrawGatedSource(REAL, view, gates=2, chunk_rows=10, pace=0.02), view, interval=0.05)
    w.run()
    text = out.getvalue()
    redraws = re.findall(r"\x1b\[(\d+)F\x1b\[J", text)
    assert len(redraws) >= 2, "the table was never redrawn"
    # Each redraw moves up exactly over the table drawn before it (header, columns, rows).
    assert set(redraws) <= {"3", "4"}
    assert "stopped: analysis verdict ok" in text
    last = text.split("\x1b[J")[-1]
    assert re.search(r"^\s+\d+ 1\s+20\s+20\s+20\s+0", last, re.M)


def test_ansi_view_prints_a_violation_above_the_table() -> None:
    out = io.StringIO()
    view = _DrawCountingTable(out)
    Watch(_DrawGatedSource(GEN / "tp-violation.jsonl", view, gates=1, chunk_rows=4, pace=0.03),
          view, interval=0.01).run()
    text = out.getvalue()
    assert "VIOLATION" in text
    before, _, after = text.partition("VIOLATION")
    assert "\x1b[J" in before, "the table was not cleared before the violation"
    assert "kvmtrace watch" in after, "the table was not redrawn after it"


def test_watch_replay_takes_no_output(capsys) -> None:
    code, _, err = run(["watch", "--replay", str(REAL), "-o", "x.parquet"], capsys)
    assert code == 2 and "--replay" in err
