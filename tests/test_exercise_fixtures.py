"""Offline: the real exercise recordings under fixtures/real/ import, analyze as the run
itself reported (its sidecar .result.json), and the tracefs text and the live recorder's
Parquet of the same run agree.  The recordings were made on a kvm_pvm host (shadow MMU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmtrace.exitcodes import for_verdict
from kvmtrace.analysis import replay_frame
from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.sources.stream import load
from kvmtrace.schema import EVIDENCE_KINDS, Kind

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"
RUNS = {                       # run -> the files that recorded it (same run, same time)
    "exercise_2vcpu": ["exercise_2vcpu.ftrace.txt.gz", "exercise_2vcpu.parquet"],
    "exercise_2vcpu_noflush": ["exercise_2vcpu_noflush.ftrace.txt.gz", "exercise_2vcpu_noflush.parquet"],
    "exercise_4vcpu_stress": ["exercise_4vcpu_stress.ftrace.txt.gz", "exercise_4vcpu_stress.parquet"],
    "exercise_4vcpu_3000flushes": ["exercise_4vcpu_3000flushes.parquet"],
}
FLUSH_RUNS = ["exercise_2vcpu", "exercise_4vcpu_stress", "exercise_4vcpu_3000flushes"]
ALL_FILES = [(run, f) for run, files in RUNS.items() for f in files]
TEXT_FILES = [(run, f) for run, f in ALL_FILES if ".ftrace." in f]
EVIDENCE = [int(k) for k in EVIDENCE_KINDS]


def sidecar(run: str) -> dict:
    return json.loads((REAL / f"{run}.result.json").read_text())


def kinds(trace, kind: Kind, tid: int | None = None):
    ev = trace.events
    sel = ev[ev["kind"] == int(kind)]
    return sel if tid is None else sel[sel["tid"] == tid]


def readers(info: dict) -> list[int]:
    return [tid for v, tid in info["vcpu_tids"].items() if v != "0"]


# -- import ---------------------------------------------------------------------------
@pytest.mark.parametrize("run,name", ALL_FILES)
def test_real_fixture_imports_as_one_vm(run, name):
    trace = load(REAL / name)
    info = sidecar(run)
    ev = trace.events
    assert len(ev) > 50
    assert set(ev["tgid"].unique()) == {info["pid"]}              # one VM: the exercise's
    assert set(readers(info)) <= set(ev["tid"].unique())
    assert ev["ts"].is_monotonic_increasing
    assert trace.meta.lost_events in (0, None)


@pytest.mark.parametrize("run,name", TEXT_FILES)
def test_text_fixture_shows_every_guest_exit(run, name):
    """tracefs text has every event: one kvm_pio per reader pass (two per round)."""
    trace = load(REAL / name)
    info = sidecar(run)
    for tid in readers(info):
        assert len(kinds(trace, Kind.PIO, tid)) == 2 * info["rounds"]
    assert len(kinds(trace, Kind.SP_UNSYNC, info["vcpu_tids"]["0"])) > 0   # the writer


@pytest.mark.parametrize("run,name", [(r, f) for r, f in ALL_FILES if r in FLUSH_RUNS])
def test_one_serviced_flush_per_request_each_followed_by_syncs(run, name):
    trace = load(REAL / name)
    info = sidecar(run)
    flushes = kinds(trace, Kind.FLUSH_REQUEST_PV)
    serviced = flushes[flushes["need_flush"] == 1]
    assert len(serviced) == info["flushes_requested"]
    assert set(serviced["tid"]) == set(readers(info))
    assert info["stale_read_count"] == 0
    # every remapped page's shadow page went unsync, and was synced on its reader
    syncs = kinds(trace, Kind.SP_SYNC)
    assert len(kinds(trace, Kind.SP_UNSYNC)) == info["flushes_requested"] * info["pages"]
    assert len(syncs[syncs["tid"].isin(readers(info))]) == info["flushes_requested"] * info["pages"]


# -- analysis ---------------------------------------------------------------------------
@pytest.mark.parametrize("run,name", [(r, f) for r, f in ALL_FILES if r in FLUSH_RUNS])
def test_flush_run_analyzes_ok_with_a_meaningful_window_per_flush(run, name):
    info = sidecar(run)
    result = analyze_path(REAL / name)
    assert result.verdict == "ok" and for_verdict(result.verdict) == 0
    assert result.windows["meaningful"] >= info["flushes_requested"] > 0
    assert result.windows["ok"] == result.windows["total"]
    assert result.pattern == "sync-in-place"                      # this kernel (6.18)


@pytest.mark.parametrize("name", RUNS["exercise_2vcpu_noflush"])
def test_control_has_no_flush_windows(name):
    info = sidecar("exercise_2vcpu_noflush")
    assert info["flushes_requested"] == 0 and info["stale_read_count"] > 0
    result = analyze_path(REAL / name)
    assert result.windows["total"] == 0
    trace = load(REAL / name)
    flushes = kinds(trace, Kind.FLUSH_REQUEST_PV)
    assert (flushes["need_flush"] == 0).all()
    assert len(kinds(trace, Kind.SP_SYNC, info["vcpu_tids"]["1"])) == 0


def window_sync_rows(ev, flush_row: int) -> list:
    """Index labels of the SP syncs on the flush's thread before its next guest-run evidence."""
    tid = ev.at[flush_row, "tid"]
    after = ev.loc[flush_row:].iloc[1:]
    after = after[after["tid"] == tid]
    evidence = after.index[after["kind"].isin(EVIDENCE)]
    inside = after.loc[:evidence[0]].iloc[:-1] if len(evidence) else after
    return list(inside.index[inside["kind"] == int(Kind.SP_SYNC)])


@pytest.mark.parametrize("run,name", [("exercise_2vcpu", f) for f in RUNS["exercise_2vcpu"]]
                         + [("exercise_4vcpu_stress", f) for f in RUNS["exercise_4vcpu_stress"]])
def test_removing_one_windows_syncs_gives_exactly_that_violation(run, name):
    """Doctor the trace as a buggy kernel would have recorded it: the last flush of one
    reader syncs nothing.  (Its shadow pages then stay unsync for good, so the last window is
    the one whose removal affects no later window of that vCPU.)"""
    trace = load(REAL / name)
    ev = trace.events.reset_index(drop=True)
    tid = readers(sidecar(run))[0]
    flush_rows = ev.index[(ev["kind"] == int(Kind.FLUSH_REQUEST_PV)) & (ev["need_flush"] == 1)
                          & (ev["tid"] == tid)]
    target = flush_rows[-1]
    drop = window_sync_rows(ev, target)
    assert drop, "the window had no sync to remove"
    intact = replay_frame(ev, trace.meta)
    doctored = replay_frame(ev.drop(index=drop), trace.meta)
    assert intact.windows["violation"] == 0
    assert doctored.verdict == "violation" and for_verdict(doctored.verdict) == 1
    assert doctored.windows["violation"] == 1
    assert doctored.windows["total"] == intact.windows["total"]
    (finding,) = doctored.findings
    assert finding["ts"] == ev.at[target, "ts"] and finding["tid"] == tid
    assert {o["gfn"] for o in finding["outstanding"]} == set(ev.loc[drop, "gfn"])


def per_vcpu_windows(result) -> dict:
    (vm,) = result.vms
    return {v["vcpu"]: v["windows"] for v in vm["vcpus"]}


@pytest.mark.parametrize("run", [r for r, files in RUNS.items() if len(files) == 2])
def test_recorder_and_tracefs_agree_on_the_windows(run):
    text, parquet = (analyze_path(REAL / f) for f in RUNS[run])
    assert text.verdict == parquet.verdict
    assert text.windows == parquet.windows
    assert text.pattern == parquet.pattern
    if text.vms or parquet.vms:
        assert per_vcpu_windows(text) == per_vcpu_windows(parquet)
    # the same flushes, on the same threads, in the same order
    seqs = []
    for f in RUNS[run]:
        ev = load(REAL / f).events
        fl = ev[(ev["kind"] == int(Kind.FLUSH_REQUEST_PV)) & (ev["need_flush"] == 1)]
        seqs.append(list(fl["tid"]))
    assert seqs[0] == seqs[1]
