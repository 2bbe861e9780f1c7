"""Live, end to end: the exact probe mode on this host.  ``record`` (auto) must attach the
raw tracepoints wherever kernel BTF and BPF exist, and the recording must hold KVM's own
bookkeeping: SP links with identified parents, root snapshots of each vCPU naming its root
SP.  Skips, saying why, only where the host lacks KVM, BPF or kernel BTF."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from kvmtrace.exercise import ExerciseConfig, unavailable_reason
from kvmtrace.schema import Kind
from kvmtrace.sources.live import rawtp
from kvmtrace.sources.stream import load
from live_support import kvm_tracing_unavailable_reason

REASON = unavailable_reason() or kvm_tracing_unavailable_reason()
if REASON is None and not Path("/sys/kernel/btf/vmlinux").exists():
    REASON = "no kernel BTF (/sys/kernel/btf/vmlinux)"
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    from kvmtrace.exercise.recording import run_recorded
    path = tmp_path_factory.mktemp("exact") / "run.parquet"
    result, rec = run_recorded(ExerciseConfig(vcpus=3, rounds=40, pages=3, seed=2), str(path))
    trace = load(path)
    return result, rec, trace.events, trace.meta


def test_auto_attaches_the_exact_mode(exact_run):
    result, rec, _events, meta = exact_run
    assert result.stale_reads == []
    raw = [p for p in rec.probes if p.startswith("raw_tracepoint:")]
    assert raw[:4] == ["raw_tracepoint:kvm_mmu_get_page", "raw_tracepoint:kvm_mmu_unsync_page",
                       "raw_tracepoint:kvm_mmu_sync_page", "raw_tracepoint:kvm_mmu_prepare_zap_page"]
    # + the PVM flush-hypercall revealer where BTF has kvm_pvm's vcpu_pvm (flushpaths.py)
    # + the KVM tracepoints read as raw tracepoints (sources/live/rawtp.py)
    assert set(raw[4:]) <= ({"raw_tracepoint:write_msr"}
                            | {f"raw_tracepoint:{event}" for event in rawtp.SPECS})
    assert not any(p.startswith("tracepoint:kvmmmu:kvm_mmu_sync_page") for p in rec.probes)
    assert any(n.startswith("exact mode: on") for n in meta.notes)
    assert any("direct-map base learnt" in n for n in meta.notes)


def test_sp_links_name_their_parents(exact_run):
    _r, _rec, ev, _m = exact_run
    links = ev[ev.kind == int(Kind.SP_LINK)]
    assert len(links) > 0
    # Each SP that went unsync is followed by its links, on the same thread and time.
    unsync = ev[ev.kind == int(Kind.SP_UNSYNC)]
    merged = unsync.merge(links, on=["ts", "tid", "gfn", "role"], suffixes=("", "_l"))
    assert len(merged) >= len(unsync)
    # The parents are one level up, with their full role words.
    known = links[links.parent_gfn >= 0]
    assert len(known) == len(links)
    assert ((known.parent_role & 0xF) == (known.role & 0xF) + 1).all()
    assert (links.value == 1).sum() > 0


def test_root_snapshots_follow_every_serviced_flush(exact_run):
    result, _rec, ev, _m = exact_run
    roots = ev[ev.kind == int(Kind.ROOT_STATE)]
    assert set(roots.vcpu) == {0, 1, 2}
    slot0 = roots[roots.value == 0]
    # After the first snapshot of each thread the root is identified: a level-4 SP
    # (a 64-bit guest's root) whose gfn is the guest CR3's frame.
    identified = slot0[slot0.gfn >= 0]
    assert len(identified) >= result.flushes_requested
    assert set(identified.level) == {4}
    # Rows of one snapshot share (tid, ts): the root and every prev_roots slot.
    per_snap = roots.groupby(["tid", "ts"]).value.nunique()
    assert (per_snap == per_snap.max()).all() and per_snap.max() >= 2
    # A correct kernel synced before the guest ran: nothing unsync under the root.
    flushes = ev[(ev.kind == int(Kind.FLUSH_REQUEST_PV)) & (ev.need_flush == 1)]
    after = pd.merge_asof(flushes.sort_values("ts")[["ts", "tid"]],
                          identified.sort_values("ts")[["ts", "tid", "unsync", "unsync_children"]],
                          on="ts", by="tid", direction="forward")
    assert after.unsync_children.notna().all()
    assert (after.unsync_children == 0).all() and (after.unsync == 0).all()
