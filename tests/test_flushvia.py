"""kvmtrace exercise --flush-via: the built-in guest's flush paths, the paths' coverage table,
the real per-path recordings under fixtures/real/flushvia_*, and live runs on this host."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmtrace.analysis.flushpaths import EXERCISE_PATHS
from kvmtrace.exercise import ExerciseConfig, flushvia
from kvmtrace.exercise.coverage import coverage
from kvmtrace.pipeline.offline import analyze_path

from live_support import kvm_unavailable_reason, exercise_unavailable_reason

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"
PVM_HOST = os.path.isdir("/sys/module/kvm_pvm")
# What this project's kvm_pvm host (6.18) services and kvmtrace judges (flushpaths.py);
# pvm-hypercall through the exact mode's write_msr raw tracepoint (BTF fields of vcpu_pvm).
PVM_JUDGED = {"steal-time", "pvm-hypercall", "cr3", "cr4-pge"}
# ... of which plain tracefs text shows (the hypercall is visible to raw tracepoints only).
TEXT_SEEN = {"steal-time", "cr3", "cr4-pge"}


# ----------------------------------------------------------------------------- offline

def test_parse_and_rotation():
    assert flushvia.parse("all") == EXERCISE_PATHS
    assert flushvia.parse("cr3") == ("cr3",)
    with pytest.raises(ValueError):
        flushvia.parse("cr5")
    via = flushvia.FlushVia(("steal-time", "cr3", "cr4-pge"))
    assert [via.path_for(r) for r in range(4)] == ["steal-time", "cr3", "cr4-pge", "steal-time"]
    assert via.steal_time(0) and not via.steal_time(1)
    assert via.request(1, 1, 0x7000) == flushvia.Request(flushvia.OP_CR3, (0x7000, 0, 0))
    first = via.request(2, 1, 0x7000)
    second = via.request(5, 1, 0x7000)            # PGE toggles each time it is asked
    assert first.op == second.op == flushvia.OP_CR4
    assert first.args[0] ^ second.args[0] == flushvia.CR4_PGE
    assert via.request(0, 1, 0x7000).op == flushvia.OP_NONE   # steal time: the writer's flag


def test_the_cli_lists_every_path():
    from kvmtrace.commands.exercise import FLUSH_VIA_CHOICES
    assert FLUSH_VIA_CHOICES == flushvia.CHOICES


def test_config_rejects_unknown_paths():
    with pytest.raises(ValueError, match="--flush-via"):
        ExerciseConfig(flush_via=("cr5",)).validate()
    ExerciseConfig(flush_via=EXERCISE_PATHS).validate()


def test_static_refusals_are_one_line_reasons():
    assert flushvia.static_refusal("invpcid", "pvm")
    assert flushvia.static_refusal("pvm-hypercall", "vmx")
    assert flushvia.static_refusal("cr3", "pvm") is None
    assert flushvia.static_refusal("hyperv", "vmx")          # the guest cannot ask for it
    for path in EXERCISE_PATHS:
        why = flushvia.static_refusal(path, "pvm") or ""
        assert "\n" not in why


def test_probe_keeps_what_works_and_says_why_not():
    calls = []

    def run_one(path, number):
        calls.append((path, number))
        if path == "pvm-hypercall":
            return 0, [flushvia.ENOSYS] if number == flushvia.PVM_HC_TLB_FLUSH else [0]
        if path == "pvm-load-pgtbl":
            return 0, [flushvia.ENOSYS]
        if path == "invlpg":
            raise RuntimeError("vCPU 1: KVM_EXIT_INTERNAL_ERROR")
        return 0, []

    s = flushvia.probe(EXERCISE_PATHS, "pvm", run_one)
    assert s.hypercall == flushvia.PVM_INT1B_TLB_FLUSH
    assert set(s.serviced) == {"steal-time", "pvm-hypercall", "cr3", "cr4-pge"}
    assert "-ENOSYS" in s.refused["pvm-load-pgtbl"] and "0x17088200" in s.refused["pvm-load-pgtbl"]
    assert "INTERNAL_ERROR" in s.refused["invlpg"] and "invpcid" in s.refused
    assert "hyperv" in s.untried
    rows = {r.path: r for r in coverage("pvm", s, {("kvm", "kvm_pv_tlb_flush"), ("kvm", "kvm_emulate_insn")})}
    assert rows["cr3"].serviced and rows["cr3"].seen and rows["cr3"].judged
    assert rows["pvm-hypercall"].serviced and not rows["pvm-hypercall"].seen
    assert "not checked" in rows["pvm-hypercall"].seen_note
    assert rows["hyperv"].serviced is None
    events = {("kvm", "kvm_pv_tlb_flush")}
    raw_on = {r.path: r for r in coverage("pvm", s, events, raw="")}["pvm-hypercall"]
    assert raw_on.seen and raw_on.judged and "write_msr" in raw_on.seen_note
    raw_off = {r.path: r for r in coverage("pvm", s, events, raw="BTF lacks vcpu_pvm.n.regs")}
    assert not raw_off["pvm-hypercall"].seen and "BTF lacks" in raw_off["pvm-hypercall"].seen_note
    assert not raw_off["pvm-load-pgtbl"].seen
    gone = {r.path: r for r in coverage("pvm", s, set())}
    assert not gone["cr3"].seen and "absent here" in gone["cr3"].seen_note


def _sidecar(name: str) -> dict:
    return json.loads((REAL / f"flushvia_{name}.result.json").read_text())


@pytest.mark.parametrize("name,suffix", [
    (n, s) for n in ("cr3", "cr4-pge", "all") for s in (".parquet", ".ftrace.txt.gz")]
    + [("pvm-hypercall", ".parquet")])
def test_real_per_path_recordings_are_ok_with_a_window_per_flush(name, suffix):
    info = _sidecar(name)
    by_path = info["extra"]["flush_via"]["requested_by_path"]
    if suffix != ".parquet":      # the PVM hypercall shows to the raw tracepoint only
        by_path = {p: n for p, n in by_path.items() if p in TEXT_SEEN}
    res = analyze_path(str(REAL / f"flushvia_{name}{suffix}"))
    assert res.verdict == "ok" and info["stale_read_count"] == 0
    assert res.windows["meaningful"] >= sum(by_path.values()) > 0
    for path, n in by_path.items():
        assert res.by_path[path]["meaningful"] >= n > 0 and res.by_path[path]["ok"] >= n
    assert set(res.by_path) == set(by_path)


def test_real_all_recording_rotates_through_the_pvm_hypercall_too():
    info = _sidecar("all")
    assert set(info["extra"]["flush_via"]["requested_by_path"]) == PVM_JUDGED
    assert "-ENOSYS" in info["extra"]["flush_via"]["skipped"]["pvm-load-pgtbl"]


def test_real_pvm_hypercall_windows_are_decided_by_exact_evidence():
    res = analyze_path(str(REAL / "flushvia_pvm-hypercall.parquet"))
    info = _sidecar("pvm-hypercall")
    assert res.by_path["pvm-hypercall"]["ok"] >= info["flushes_requested"] == 12
    assert res.evidence["exact"] >= info["flushes_requested"]


def test_real_invlpg_recording_is_suspect_not_ok():
    res = analyze_path(str(REAL / "flushvia_invlpg.parquet"))
    info = _sidecar("invlpg")
    assert res.verdict == "suspect" and res.by_path["invlpg"]["suspect"] >= info["flushes_requested"]


def test_real_invlpg_exact_recording_has_addresses_and_no_false_violation():
    """Exact mode: KVM's root state after an INVLPG shows the SPs still unsync (INVLPG syncs
    only its address's SPTEs): that must not read as a missed sync."""
    from kvmtrace.schema import Kind
    from kvmtrace.sources.stream import load as load_trace
    ev = load_trace(REAL / "flushvia_invlpg.parquet").events
    assert (ev.kind == int(Kind.ROOT_STATE)).any()
    inv = ev[ev.kind == int(Kind.FLUSH_INVLPG)]
    assert len(inv) and (inv.value >= 0).all()      # the address, from the emulator context
    res = analyze_path(str(REAL / "flushvia_invlpg.parquet"))
    assert res.by_path["invlpg"].get("violation", 0) == 0


def test_real_one_page_invlpg_is_ok_when_the_guest_refaults_the_address():
    info = _sidecar("invlpg_1page")
    res = analyze_path(str(REAL / "flushvia_invlpg_1page.parquet"))
    assert res.verdict == "ok" and info["stale_read_count"] == 0
    assert res.by_path["invlpg"]["ok"] >= info["flushes_requested"] == 12
    assert res.evidence["inferred"] >= 12
    # the text has no address: suspect, never ok
    text = analyze_path(str(REAL / "flushvia_invlpg_1page.ftrace.txt.gz"))
    assert text.verdict == "suspect"


def test_real_pvm_hypercall_tracefs_text_opens_nothing_but_says_so():
    res = analyze_path(str(REAL / "flushvia_pvm-hypercall.ftrace.txt.gz"))
    assert _sidecar("pvm-hypercall")["flushes_requested"] > 0
    assert res.windows["total"] == 0
    assert any("outside any flush window" in n for n in res.notes)


# ----------------------------------------------------------------------------- live

LIVE_REASON = kvm_unavailable_reason()
GUEST_REASON = exercise_unavailable_reason()


def _run(config, tmp_path=None):
    from kvmtrace.exercise import resolve_flush_via, run_exercise
    config, via = resolve_flush_via(config)
    if tmp_path is None:
        return run_exercise(config, via), None
    from kvmtrace.exercise.recording import run_recorded
    return run_recorded(config, str(tmp_path / "run.parquet"), via_info=via)


@pytest.mark.live
@pytest.mark.skipif(LIVE_REASON is not None, reason=f"exercise under the recorder: {LIVE_REASON}")
@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.skipif(
        not PVM_HOST, reason="the per-path expectations are this PVM host's (flushpaths.py)"))
    for p in sorted(PVM_JUDGED)] + ["all"])
def test_live_recorded_path_is_ok_with_a_window_per_flush(tmp_path, path):
    config = ExerciseConfig(vcpus=2, rounds=30, pages=2, seed=5, flush_via=flushvia.parse(path))
    result, rec = _run(config, tmp_path)
    assert result.stale_reads == [] and rec.lost == 0
    by_path = result.extra["flush_via"]["requested_by_path"]
    if PVM_HOST:
        assert set(by_path) == (PVM_JUDGED if path == "all" else {path})
    res = analyze_path(rec.path)
    assert res.verdict == "ok"
    assert res.windows["meaningful"] >= result.flushes_requested > 0
    for p, n in by_path.items():
        assert res.by_path[p]["meaningful"] >= n and res.by_path[p]["ok"] >= n


@pytest.mark.live
@pytest.mark.skipif(GUEST_REASON is not None, reason=f"exercise: {GUEST_REASON}")
@pytest.mark.skipif(not PVM_HOST, reason="the refusals checked are kvm_pvm's")
@pytest.mark.parametrize("path,words", [("pvm-load-pgtbl", "-ENOSYS"), ("invpcid", "INVPCID"),
                                        ("hyperv", "Hyper-V")])
def test_live_unserviced_path_is_refused_in_one_line(path, words, capsys):
    from kvmtrace.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["exercise", "--flush-via", path, "--rounds", "2"])
    assert exit_info.value.code == 4
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


@pytest.mark.live
@pytest.mark.skipif(GUEST_REASON is not None, reason=f"exercise: {GUEST_REASON}")
@pytest.mark.skipif(not PVM_HOST, reason="the paths checked are kvm_pvm's")
@pytest.mark.parametrize("path", ["pvm-hypercall", "invlpg", "cr3", "cr4-pge"])
def test_live_serviced_paths_really_flush(path):
    result, _ = _run(ExerciseConfig(vcpus=2, rounds=20, pages=2, seed=2, flush_via=(path,)))
    assert result.stale_reads == [] and result.flushes_requested > 0
    assert not result.extra["flush_via"]["hypercall_errors"]


# ------------------------------------------------------- the pvm-hypercall no-sync counterpart

def test_real_pvm_hypercall_nosync_is_a_violation_with_exact_evidence():
    """fixtures/real/flushvia_pvm-hypercall_nosync.parquet: the real recording with one
    hypercall window's sync moved after the re-entry (fixtures/inject_nosync.py)."""
    import sys
    sys.path.insert(0, str(REAL.parent))
    from inject_nosync import inject_frame
    from kvmtrace.sources.stream import load as load_trace
    clean = load_trace(REAL / "flushvia_pvm-hypercall.parquet").events
    got, _ = inject_frame(clean, 1, 3, "pvm-hypercall")
    want = load_trace(REAL / "flushvia_pvm-hypercall_nosync.parquet").events
    assert got.reset_index(drop=True).equals(want.reset_index(drop=True))
    res = analyze_path(str(REAL / "flushvia_pvm-hypercall_nosync.parquet"))
    assert res.verdict == "violation"
    assert res.by_path["pvm-hypercall"]["violation"] == 1 and res.by_path["pvm-hypercall"]["ok"] == 11
    assert [f["evidence"] for f in res.findings] == ["exact"]


def test_inject_refuses_a_hypercall_window_in_text(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REAL.parent / "inject_nosync.py"),
                        str(REAL / "flushvia_pvm-hypercall.ftrace.txt.gz"), str(tmp_path / "x.txt"),
                        "--opener", "pvm-hypercall"], capture_output=True, text=True)
    assert r.returncode == 2 and "tracefs text does not show" in r.stderr
