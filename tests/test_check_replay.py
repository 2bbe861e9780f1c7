"""`kvmtrace check` fed recorded streams through the same online path as a live check.

``run_check`` is what the command runs; only the chunk source differs (``FileSource`` here,
``LiveSource`` on a host).  The CLI tests go through ``kvmtrace.cli.main`` (exit codes, the
one-line errors) with ``--replay``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvmtrace.pipeline.check import CheckConfig, run_check
from kvmtrace.exercise import ExerciseResult, StaleRead
from kvmtrace.sources.stream import load
from kvmtrace.schema import Kind
from kvmtrace.sources.chunks import FileSource
from kvmtrace.sources.native import write_trace

from cli_support import FIXTURES, GEN, LAB, REAL, run_main as run



@pytest.fixture
def real_without_one_sync(tmp_path: Path) -> tuple[Path, int]:
    """The real 2-vCPU exercise recording with the sync_page events of its 5th window removed."""
    trace = load(REAL)
    ev = trace.events
    opens = ev.index[(ev["kind"] == int(Kind.FLUSH_REQUEST_PV)) & (ev["need_flush"] == 1)]
    start, end = opens[4], opens[5]
    drop = ev.index[(ev.index > start) & (ev.index < end) & (ev["kind"] == int(Kind.SP_SYNC))]
    assert len(drop) >= 1
    path = tmp_path / "real_one_window_unsynced.parquet"
    write_trace(path, ev.drop(drop).reset_index(drop=True), trace.meta)
    return path, int(ev.loc[start, "ts"])


def test_a_real_capture_missing_its_sync_fails_with_the_violation(lab_without_sync) -> None:
    report = run_check(FileSource(lab_without_sync, chunk_rows=16), CheckConfig())
    assert report.verdict == "fail" and report.exit_code == 1
    text = " ".join(report.check.reasons)
    assert "1 guest TLB flush let a vCPU run guest code before KVM synced" in text
    assert "vCPU 1 at 2252.596626 s" in text and "gfn 0x4 (level 1)" in text


def test_the_real_recording_passes_and_loses_it_when_one_window_is_unsynced(
        real_without_one_sync) -> None:
    good = run_check(FileSource(REAL, chunk_rows=32), CheckConfig())
    assert good.verdict == "pass"
    assert good.snapshot.meaningful_ok == good.result.windows["ok"] == 20
    path, ts = real_without_one_sync
    bad = run_check(FileSource(path, chunk_rows=32), CheckConfig())
    assert bad.verdict == "fail"
    assert bad.result.findings[0]["ts"] == ts
    assert f"at {ts / 1e9:.6f} s" in " ".join(bad.check.reasons)


@pytest.mark.parametrize("fixture,verdict,phrase", [
    ("tp-violation.jsonl", "fail", "let a vCPU run guest code"),
    ("fn-5.10-hardware-flush-only.jsonl", "fail", "hardware-flush-only"),
    ("fn-5.10-harmless.jsonl", "fail", "harmless this time"),
    ("tp-suspect.jsonl", "inconclusive", "only suspect windows"),
    ("tp-lost.jsonl", "inconclusive", "17 trace events were lost"),
    ("tp-open.jsonl", "inconclusive", "could not be judged"),
    ("tp-nothing-unsync.jsonl", "inconclusive", "no shadow page was unsync"),
    ("tp-sync-in-place.jsonl", "pass", "KVM synced them"),
    ("fn-5.13-unload-reload.jsonl", "pass", "unload-reload"),
    ("fn-5.16-sync-in-place.jsonl", "pass", "sync-in-place"),
])
def test_generation_fixtures_get_their_check_verdict(fixture: str, verdict: str, phrase: str) -> None:
    report = run_check(FileSource(GEN / fixture, chunk_rows=5), CheckConfig())
    assert report.verdict == verdict
    assert phrase in " ".join(report.check.reasons)


def test_the_control_run_without_flushes_is_inconclusive() -> None:
    report = run_check(FileSource(FIXTURES / "real" / "exercise_2vcpu_noflush.parquet"),
                       CheckConfig())
    assert report.verdict == "inconclusive"
    assert "no guest TLB flush was serviced" in report.check.reasons[0]


def test_min_windows_is_applied() -> None:
    assert run_check(FileSource(REAL), CheckConfig(min_windows=20)).verdict == "pass"
    report = run_check(FileSource(REAL), CheckConfig(min_windows=21))
    assert report.verdict == "inconclusive"
    assert "at least 21 are needed" in report.check.reasons[0]


def _fake_exercise(stale: int):
    def run_exercise(config):
        reads = [StaleRead(1, r, 0x600000, 0x2222, 0x1111, True) for r in range(stale)]
        return ExerciseResult(vcpus=2, rounds=config.rounds, pages=config.pages, seed=1,
                              flush=True, flushes_requested=config.rounds, reads=80,
                              stale_reads=reads, pid=1, vcpu_tids={0: 2, 1: 3}, backend="pvm",
                              tdp=False, exposed=True, duration_s=0.01)
    return run_exercise


def test_a_stale_read_of_the_guest_fails_the_check(monkeypatch) -> None:
    import kvmtrace.exercise as exercise_pkg
    monkeypatch.setattr(exercise_pkg, "run_exercise", _fake_exercise(stale=2))
    report = run_check(FileSource(REAL), CheckConfig(exercise=True, other_vms=False))
    assert report.result.windows["ok"] == 20           # the trace alone would pass
    assert report.verdict == "fail"
    assert "read 2 stale values after a guest TLB flush" in report.check.reasons[0]
    assert report.to_dict()["exercise"]["stale_read_count"] == 2


def test_a_guest_that_breaks_makes_the_check_inconclusive(monkeypatch) -> None:
    import kvmtrace.exercise as exercise_pkg

    def broken(config):
        raise exercise_pkg.ExerciseError("a vCPU did not park within 10s")
    monkeypatch.setattr(exercise_pkg, "run_exercise", broken)
    report = run_check(FileSource(REAL), CheckConfig(exercise=True, other_vms=False))
    assert report.verdict == "inconclusive"
    assert "did not park" in " ".join(report.check.reasons)
    assert report.to_dict()["exercise"]["finished"] is False


# ----------------------------------------------------------------------------- the CLI
def test_cli_fails_with_the_violation_in_json(lab_without_sync, capsys) -> None:
    code, out, err = run(["check", "--replay", str(lab_without_sync), "--json"], capsys)
    assert code == 1
    d = json.loads(out)
    assert d["verdict"] == "fail" and d["exit_code"] == 1
    assert any("gfn 0x4" in r for r in d["reasons"])
    assert d["windows"]["violation"] == 1 and d["pattern"] == "hardware-flush-only"
    assert set(d) >= {"verdict", "reasons", "next_steps", "windows", "pattern", "host",
                      "probes", "duration_s", "findings"}
    assert "exercise" not in d
    assert d["findings"][0]["outstanding"][0]["gfn"] == 4


def test_cli_text_report(lab_without_sync, capsys) -> None:
    code, out, _ = run(["check", "--replay", str(lab_without_sync)], capsys)
    assert code == 1
    assert out.startswith("kvmtrace check: FAIL\n")
    assert "next: the traced kernel is NOT safe" in out


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_cli_prom_file_parses_and_carries_the_verdict(lab_without_sync, tmp_path, capsys) -> None:
    prom = tmp_path / "kvmtrace.prom"
    prom.write_text("old contents\n")
    code, _, _ = run(["check", "--replay", str(lab_without_sync), "--prom", str(prom)], capsys)
    assert code == 1
    s = _samples(prom.read_text())
    assert s[("kvmtrace_check_verdict", (("verdict", "fail"),))] == 1
    assert s[("kvmtrace_check_verdict", (("verdict", "pass"),))] == 0
    assert s[("kvmtrace_check_violations", ())] == 1
    assert s[("kvmtrace_check_windows", (("verdict", "violation"),))] == 1
    assert s[("kvmtrace_check_meaningful_windows", ())] == 1
    assert s[("kvmtrace_check_last_run_timestamp_seconds", ())] > 1.6e9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    code, _, _ = run(["check", "--replay", str(REAL), "--prom", str(prom)], capsys)
    assert code == 0
    assert _samples(prom.read_text())[("kvmtrace_check_verdict", (("verdict", "pass"),))] == 1


def test_cli_prom_into_a_missing_directory_is_a_usage_error(tmp_path, capsys) -> None:
    code, out, err = run(["check", "--replay", str(REAL), "--prom",
                          str(tmp_path / "nope" / "k.prom")], capsys)
    assert code == 2 and out == ""
    assert "does not exist" in err


def test_cli_bad_trace_is_one_line_exit_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    code, out, err = run(["check", "--replay", str(bad)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"kvmtrace: {bad}") and len(err.strip().splitlines()) == 1


def test_cli_replay_takes_no_exercise(capsys) -> None:
    code, _, err = run(["check", "--replay", str(REAL), "--exercise"], capsys)
    assert code == 2 and "--replay" in err


# ----------------------------------------------------------------------------- exit 4
def _no_bpf(self):
    from kvmtrace.sources.live import LiveUnavailable
    raise LiveUnavailable("live tracing needs root: effective uid 1000", "run as root (sudo kvmtrace ...)")


@pytest.mark.parametrize("command", [["check", "-d", "1"], ["watch"], ["watch", "--json"]])
def test_cannot_trace_is_one_line_exit_4(command, monkeypatch, capsys) -> None:
    from kvmtrace.sources.chunks import LiveSource
    monkeypatch.setattr(LiveSource, "open", _no_bpf)
    code, out, err = run(command, capsys)
    assert code == 4 and out == ""
    assert err == (f"kvmtrace: {command[0]}: cannot trace here: live tracing needs root: "
                   "effective uid 1000; run as root (sudo kvmtrace ...)\n")


class _LiveWithoutSync(FileSource):
    """A live-looking source whose kernel had no kvmmmu:kvm_mmu_sync_page to attach."""

    closed = False

    def open(self):
        info = super().open()
        info.live, info.label = True, "live"
        info.attached = ["tracepoint:kvm:kvm_pv_tlb_flush", "tracepoint:kvmmmu:kvm_mmu_unsync_page"]
        info.skipped = [("tracepoint:kvmmmu:kvm_mmu_sync_page", "tracepoint absent")]
        return info

    def close(self):
        self.closed = True
        return super().close()


def test_live_check_without_the_sync_tracepoint_refuses_to_judge() -> None:
    # Without the sync events every meaningful window would read as a violation.
    from kvmtrace.sources.live import LiveUnavailable
    source = _LiveWithoutSync(LAB)
    with pytest.raises(LiveUnavailable, match="kvmmmu:kvm_mmu_sync_page \\(tracepoint absent\\)"):
        run_check(source, CheckConfig())
    assert source.closed


def test_exercise_impossible_is_exit_4_before_tracing(monkeypatch, capsys) -> None:
    import kvmtrace.exercise as exercise_pkg
    from kvmtrace.sources.chunks import LiveSource
    monkeypatch.setattr(exercise_pkg, "unavailable_reason", lambda device=None: "/dev/kvm does not exist")
    monkeypatch.setattr(LiveSource, "open", lambda self: pytest.fail("attached anyway"))
    code, out, err = run(["check", "--exercise"], capsys)
    assert code == 4 and out == ""
    assert err == "kvmtrace: check: cannot run the built-in guest here: /dev/kvm does not exist\n"
