"""`kvmtrace show` reads a trace one chunk at a time (``commands/show.read_summary``) and
prints exactly what the whole-table path printed (``load`` + ``select_events`` +
``summarize``), for every fixture, with and without -p/--vcpu, in text and JSON."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cli_support import FIXTURES, run_main
from kvmtrace.commands.show import read_summary
from kvmtrace.outputs import summary as summary_mod
from kvmtrace.outputs.summary import SUMMARY_COLUMNS, SummaryBuilder, render
from kvmtrace.schema import Kind, TraceMeta
from kvmtrace.sources import stream as streams
from kvmtrace.sources.frame import SelectionError, from_rows, select_events
from kvmtrace.sources.native import TraceFileError, TraceWriter, write_trace
from kvmtrace.sources.text import text as text_reader

FILES = [pytest.param(p, id=str(p.relative_to(FIXTURES)),
                      marks=[pytest.mark.slow] if p.stat().st_size > 300_000 else [])
         for p in sorted(FIXTURES.rglob("*")) if p.is_file()]
SMALL_ROWS = 5          # chunks of a few rows: threads, names and ranges cross chunk borders
FIXTURE_ROWS = 500      # for the fixtures (some hold 10^5 rows): still several chunks
SMALL_BLOCK = 4096      # text read in blocks of a few dozen lines


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(streams, "CHUNK_ROWS", SMALL_ROWS)
    monkeypatch.setattr(text_reader, "BLOCK_BYTES", SMALL_BLOCK)


@pytest.fixture
def fixture_chunks(monkeypatch):
    monkeypatch.setattr(streams, "CHUNK_ROWS", FIXTURE_ROWS)
    monkeypatch.setattr(text_reader, "BLOCK_BYTES", SMALL_BLOCK)


def old_show(path, vm=None, vcpu=None, salvage=False, trace=None):
    """What `show` computed before streaming: (warnings, summary or SelectionError text)."""
    trace = trace if trace is not None else streams.load(path, salvage=salvage)
    warnings = list(trace.warnings)
    if vm is not None or vcpu is not None:
        try:
            trace.events = select_events(trace.events, vm=vm, vcpu=vcpu, source=str(path))
        except SelectionError as exc:
            return warnings, str(exc)
    return warnings, summarize(trace)


def summarize(trace) -> dict:
    """The summary of a whole event table (already filtered), as one chunk: the builder
    fed the way `show` fed it before streaming."""
    ev = trace.events
    builder = SummaryBuilder()
    comm = ev["comm"].to_numpy(dtype=object)
    builder.add({k: ev[k].to_numpy() for k in SUMMARY_COLUMNS}, comm)
    return builder.result(trace.meta, trace.recovery.describe() if trace.recovery else None,
                          trace.warnings)


def filters(path) -> list[tuple]:
    """-p/--vcpu combinations that select something, and some that select nothing."""
    ev = streams.load(path, salvage=True).events
    rows = ev[ev["kind"] != int(Kind.LOST)]
    vms = sorted(set(rows["tgid"].tolist()))
    vcpus = sorted(set(rows["vcpu"][rows["vcpu"] >= 0].tolist()))
    out = [(None, None), (999999, None), (None, 999)]
    out += [(g, None) for g in vms[:2]] + [(None, v) for v in vcpus[:3]]
    if vms and vcpus:
        out += [(vms[0], vcpus[-1]), (vms[-1], vcpus[0]), (vms[0], 999)]
    return out


def cli_expected(path, args, vm=None, vcpu=None, salvage=False) -> tuple[int, str, str]:
    warnings, result = old_show(path, vm, vcpu, salvage)
    err = "".join(f"kvmtrace: warning: {path}: {w}\n" for w in warnings)
    if isinstance(result, str):
        return 2, "", err + f"kvmtrace: {result}\n"
    out = json.dumps(result, indent=2) if "--json" in args else render(result)
    return 0, out + "\n", err


def readable(path) -> bool:
    try:
        streams.load(path, salvage=True)
        return True
    except TraceFileError:
        return False


@pytest.mark.parametrize("path", FILES)
def test_streamed_summary_equals_whole_table(path: Path, fixture_chunks) -> None:
    if not readable(path):
        with pytest.raises(TraceFileError):
            read_summary(str(path), tgid_map=None, salvage=True)
        return
    for salvage in (False, True):
        try:
            stream, builder = read_summary(str(path), tgid_map=None, salvage=salvage)
        except TraceFileError:
            with pytest.raises(TraceFileError, match="."):
                streams.load(path, salvage=salvage)
            continue
        warnings = list(stream.meta.notes) if stream.format == "text" else stream.warnings
        recovery = stream.recovery.describe() if stream.recovery else None
        whole = streams.load(path, salvage=salvage)
        for vm, vcpu in filters(path):
            trace = copy.copy(whole)
            old_warnings, old = old_show(path, vm, vcpu, salvage, trace)
            assert warnings == old_warnings
            try:
                new = builder.result(stream.meta, recovery, warnings,
                                     builder.selected(vm, vcpu, source=str(path)))
            except SelectionError as exc:
                new = str(exc)
            assert new == old, (vm, vcpu, salvage)


@pytest.mark.parametrize("path", [p for p in FILES if p.values[0].suffix != ".py"])
def test_show_cli_prints_what_it_printed(path: Path, fixture_chunks, capsys) -> None:
    """The command itself, text and --json, with a filter and with one matching nothing."""
    if not readable(path):
        code, out, err = run_main(["show", str(path)], capsys)
        assert code == 2 and out == "" and err.startswith("kvmtrace: ") and "Traceback" not in err
        return
    cases = [([], None, None), (["--json"], None, None), (["-p", "999999"], 999999, None)]
    selective = [f for f in filters(path) if f[0] not in (None, 999999) or f[1] not in (None, 999)]
    if selective:
        vm, vcpu = selective[-1]
        args = ["--json"] + (["-p", str(vm)] if vm is not None else []) \
            + (["--vcpu", str(vcpu)] if vcpu is not None else [])
        cases.append((args, vm, vcpu))
    for args, vm, vcpu in cases:
        assert run_main(["show", *args, str(path)], capsys) == \
            cli_expected(path, args, vm, vcpu), args


def _threads_trace(tmp_path: Path) -> Path:
    """Names change mid-trace, LOST markers interleave, and a thread's shadow-page events
    (no vCPU id) come chunks before the first event naming its vCPU."""
    rows = []
    for i in range(60):
        rows.append(dict(ts=1000 + i, kind=Kind.SP_GET, tgid=3, tid=7, vcpu=-1,
                         comm="CPU 0/KVM" if i < 30 else "renamed"))
        if i % 11 == 0:
            rows.append(dict(ts=1000 + i, kind=Kind.LOST, tgid=3, tid=7, value=i % 3 - 1,
                             comm=f"lost{i}"))
        rows.append(dict(ts=2000 - i, kind=Kind.GUEST_ENTRY, tgid=4, tid=9 + i % 3,
                         vcpu=i % 3, comm=f"CPU {i % 3}/KVM"))
    rows.append(dict(ts=5000, kind=Kind.GUEST_ENTRY, tgid=3, tid=7, vcpu=1, comm="last"))
    path = tmp_path / "threads.parquet"
    write_trace(path, from_rows(rows), TraceMeta(source="recorded"), chunk_rows=SMALL_ROWS)
    return path


@pytest.mark.parametrize("vm,vcpu", [(None, None), (3, None), (4, None), (None, 1), (3, 1),
                                     (4, 2), (3, 0), (5, None)])
def test_threads_names_and_filters_across_chunks(tmp_path: Path, small_chunks, capsys,
                                                  vm, vcpu) -> None:
    path = _threads_trace(tmp_path)
    args = ["--json"] + (["-p", str(vm)] if vm is not None else []) \
        + (["--vcpu", str(vcpu)] if vcpu is not None else [])
    expected = cli_expected(path, args, vm, vcpu)
    assert run_main(["show", *args, str(path)], capsys) == expected
    if vm is None and vcpu is None:
        threads = json.loads(expected[1])["vms"][0]["threads"]
        assert threads == {"7": "last"}         # the last row of thread 7 names it


def test_show_holds_one_chunk_at_a_time(tmp_path: Path, small_chunks, monkeypatch,
                                        capsys) -> None:
    """The builder is fed chunks of at most CHUNK_ROWS rows and keeps only per-thread
    state, never the rows: feeding ten times as many rows adds no state."""
    seen: list[int] = []
    sizes: list[int] = []
    real_add = summary_mod.SummaryBuilder.add

    def add(self, cols, comm):
        seen.append(len(cols["ts"]))
        real_add(self, cols, comm)
        sizes.append(len(self.groups))
    monkeypatch.setattr(summary_mod.SummaryBuilder, "add", add)
    groups = []
    for n in (100, 1000):
        rows = [dict(ts=i, kind=Kind.SP_GET, tgid=3, tid=7 + i % 4, vcpu=i % 4, comm="CPU/KVM")
                for i in range(n)]
        path = tmp_path / f"big{n}.parquet"
        write_trace(path, from_rows(rows), TraceMeta(source="recorded"), chunk_rows=50)
        seen.clear()
        sizes.clear()
        code, out, _ = run_main(["show", "--json", str(path)], capsys)
        assert code == 0 and json.loads(out)["events"] == n
        assert sum(seen) == n and max(seen) <= SMALL_ROWS and len(seen) >= n // SMALL_ROWS
        groups.append(max(sizes))
    assert groups[0] == groups[1] <= 5          # one group per thread, whatever n


def test_text_is_read_in_blocks(small_chunks, monkeypatch, capsys) -> None:
    seen: list[int] = []
    real_add = summary_mod.SummaryBuilder.add
    monkeypatch.setattr(summary_mod.SummaryBuilder, "add",
                        lambda self, cols, comm: (seen.append(len(cols["ts"])),
                                                  real_add(self, cols, comm)))
    path = FIXTURES / "lab_two_vcpu_flush.ftrace.txt"
    code, out, _ = run_main(["show", "--json", str(path)], capsys)
    assert code == 0 and len(seen) > 1 and max(seen) < json.loads(out)["events"]


def test_unfinished_recording_is_recovered_as_before(tmp_path: Path, small_chunks,
                                                     capsys) -> None:
    """NAME.part of a killed writer: the recovery line, its warnings, the lost counts."""
    path = tmp_path / "rec.parquet"
    writer = TraceWriter(path, TraceMeta(source="recorded"))
    writer.write(from_rows([dict(ts=i, kind=Kind.SP_GET, tgid=3, tid=7, comm="CPU 0/KVM")
                            for i in range(12)]))
    writer.write(from_rows([dict(ts=20, kind=Kind.LOST, cpu=1, value=12),
                            dict(ts=21, kind=Kind.SP_GET, tgid=3, tid=7, comm="x")]))
    # no close(): the process "died" here
    for args in ([], ["--json"]):
        expected = cli_expected(path, args)
        assert run_main(["show", *args, str(path)], capsys) == expected
    assert "complete chunks" in json.loads(expected[1])["recovery"]
    assert json.loads(expected[1])["lost_events"] == 12
