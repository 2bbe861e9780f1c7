"""Done-when of issue 9 on real recordings from the PVM host: the exact recording of a
multi-address-space run is ok with every meaningful window decided by exact evidence; its
fault-injected copy is a violation, by exact evidence, for exactly the injected window; the
tracepoint-only text of the same run never calls the injected window ok.  And live: a
recorded ``exercise --address-spaces 3`` (``record`` auto) analyses the same way."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.exercise import ExerciseConfig, unavailable_reason
from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.schema import Kind
from kvmtrace.sources.stream import load
from live_support import kvm_tracing_unavailable_reason

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"
CLEAN, BROKEN = REAL / "exercise_3space.parquet", REAL / "exercise_3space_nosync.parquet"
BROKEN_TXT = REAL / "exercise_3space_nosync.ftrace.txt.gz"
VCPU, WINDOW = 1, 3          # fixtures/README.md: what inject_nosync.py doctored


def injected_flush_ts(path: Path) -> int:
    ev = load(path).events
    flushes = ev[(ev.kind == int(Kind.FLUSH_REQUEST_PV)) & (ev.need_flush == 1) & (ev.vcpu == VCPU)]
    return int(flushes.ts.iloc[WINDOW])


def assert_ok_and_exact(result) -> None:
    d = result.to_dict()
    assert d["verdict"] == "ok", d["findings"][:3]
    assert d["windows"]["meaningful"] > 0
    assert d["evidence"]["exact"] == d["windows"]["total"]
    assert d["evidence"]["inferred"] == d["evidence"]["none"] == 0


def test_exact_recording_is_ok_by_exact_evidence():
    assert_ok_and_exact(analyze_path(CLEAN))


def test_fault_injected_exact_copy_violates_in_exactly_that_window():
    d = analyze_path(BROKEN).to_dict()
    assert d["verdict"] == "violation"
    assert d["windows"]["violation"] == 1 and d["windows"]["suspect"] == 0
    bad = [f for f in d["findings"] if f["verdict"] != "ok"]
    assert len(bad) == 1
    assert bad[0]["evidence"] == "exact" and bad[0]["vcpu"] == VCPU
    assert bad[0]["ts"] == injected_flush_ts(BROKEN)


def test_tracepoint_text_never_calls_the_injected_window_ok():
    d = analyze_path(BROKEN_TXT, max_findings=1000).to_dict()
    assert d["verdict"] in ("violation", "suspect")
    assert d["evidence"]["exact"] == 0
    ts = injected_flush_ts(BROKEN_TXT)
    window = [f for f in d["findings"] if f["ts"] == ts]
    assert len(window) == 1 and window[0]["verdict"] in ("violation", "suspect")


REASON = unavailable_reason() or kvm_tracing_unavailable_reason()
if REASON is None and not Path("/sys/kernel/btf/vmlinux").exists():
    REASON = "no kernel BTF (/sys/kernel/btf/vmlinux)"


@pytest.mark.live
@pytest.mark.skipif(REASON is not None, reason=f"{REASON}")
def test_recorded_multi_space_run_is_ok_by_exact_evidence(tmp_path):
    from kvmtrace.exercise.recording import run_recorded
    result, rec = run_recorded(ExerciseConfig(vcpus=3, rounds=30, pages=2, seed=6,
                                              address_spaces=3), str(tmp_path / "run.parquet"))
    assert result.stale_reads == [] and rec.lost == 0
    assert "raw_tracepoint:kvm_mmu_sync_page" in rec.probes        # auto chose exact
    assert_ok_and_exact(analyze_path(rec.path))
