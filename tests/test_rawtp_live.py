"""Live: the same guest recorded with its tracepoints read as raw tracepoints and as perf
events gives the same records.  Only the host physical address inside an SPTE may differ
(each run's guest memory lands in other host pages).  Skips, saying why, where the host
lacks KVM, BPF or kernel BTF."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvmtrace.exercise import ExerciseConfig, unavailable_reason
from kvmtrace.schema import Kind
from kvmtrace.sources.stream import load
from live_support import kvm_tracing_unavailable_reason

REASON = unavailable_reason() or kvm_tracing_unavailable_reason()
if REASON is None and not Path("/sys/kernel/btf/vmlinux").exists():
    REASON = "no kernel BTF (/sys/kernel/btf/vmlinux)"
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]

COLUMNS = ["kind", "vcpu", "gfn", "level", "role", "unsync", "created", "need_flush",
           "root_count", "value", "unsync_children", "parent_gfn"]
SPTE_PA = np.int64(0x000FFFFFFFFFF000)     # bits 12-51 of an SPTE: the host page


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from kvmtrace.exercise.recording import run_recorded
    out = {}
    for raw in (True, False):
        path = tmp_path_factory.mktemp("rawtp") / f"raw_{raw}.parquet"
        result, rec = run_recorded(ExerciseConfig(vcpus=2, rounds=40, pages=3, seed=3), str(path),
                                   raw_tracepoints=raw)
        assert result.stale_reads == [] and rec.lost == 0
        trace = load(path)
        out[raw] = (rec, trace.events, trace.meta)
    return out


def test_raw_mode_attaches_raw_tracepoints_and_says_so(both):
    rec, _events, meta = both[True]
    raw = [p for p in rec.probes if p.startswith("raw_tracepoint:")]
    assert "raw_tracepoint:kvm_pv_tlb_flush" in raw and "raw_tracepoint:kvm_exit" in raw
    assert "tracepoint:kvm:kvm_pv_tlb_flush" not in rec.probes
    line = next(n for n in meta.notes if n.startswith("tracepoints: "))
    assert "as raw tracepoints (BPF links)" in line
    perf_rec, _e, perf_meta = both[False]
    assert "tracepoint:kvm:kvm_pv_tlb_flush" in perf_rec.probes
    assert any(n.startswith("tracepoints: ") and "raw tracepoints off" in n for n in perf_meta.notes)


def _rows(events, kind):
    cols = [c for c in COLUMNS if c in events.columns]
    rows = events[events["kind"] == int(kind)][cols].copy()
    if kind == Kind.SPTE_INSTALL:
        rows["value"] = rows["value"].astype("int64") & ~SPTE_PA
    return rows.sort_values(cols).reset_index(drop=True)


def test_the_records_are_the_same_either_way(both):
    _r, raw, _m = both[True]
    _p, perf, _pm = both[False]
    assert raw["kind"].value_counts().to_dict() == perf["kind"].value_counts().to_dict()
    assert int(Kind.FLUSH_REQUEST_PV) in set(raw["kind"]) and int(Kind.SPTE_INSTALL) in set(raw["kind"])
    for kind in sorted(set(raw["kind"])):
        a, b = _rows(raw, kind), _rows(perf, kind)
        assert a.equals(b), f"{Kind(kind).name}: raw and perf records differ"
