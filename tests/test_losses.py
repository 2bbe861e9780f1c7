"""Issue 14 (1): a loss is carried forward.  Events lost before a flush window could have
synced or unsynced any page, so no ok or violation rests on the unsync set until the
vCPU's state is re-established (a full sync, an unload+reload, an exact root snapshot)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kvmtrace.analysis import Replayer
from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.pipeline.online import OnlineAnalysis
from kvmtrace.pipeline.session import Session
from kvmtrace.schema import Kind, TraceMeta
from kvmtrace.sources.chunks import FileSource
from kvmtrace.sources.native import write_trace
from kvmtrace.sources.stream import load

from model_scenarios import V0, V1, Stream, built, unsynced

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt"
REAL = ROOT / "fixtures" / "real" / "exercise_2vcpu.parquet"


def windows(stream: Stream, meta=None) -> list:
    r = Replayer(meta)
    closed = r.feed(stream.frame())
    r.finish()
    return closed


def test_a_lost_sync_before_the_flush_is_no_violation():
    s = unsynced()
    s.lost(1)                                   # it was the sync of gfn 4, for all we know
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,) = windows(s)
    assert w.verdict == "inconclusive" and w.loss_demoted
    assert "could have synced gfn 0x4" in w.reason and "events lost at" in w.reason


def test_a_lost_unsync_before_the_flush_is_no_ok():
    s = built()
    s.lost(1)                                   # it was the unsync of gfn 4, for all we know
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,) = windows(s)
    assert w.verdict == "inconclusive"
    assert "could have unsynced a page" in w.reason


def test_a_loss_tagged_with_another_vm_leaves_this_one_alone():
    s = unsynced()
    s.rows.append({"ts": s.ts + 1, "kind": int(Kind.LOST), "value": 3, "tgid": 999})
    s.ts += 1
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,) = windows(s)
    assert w.verdict == "violation"


def test_a_root_reload_re_establishes_the_vcpu():
    s = unsynced()
    s.lost(1)
    s.pv(V1, 1, need_flush=1).run(V1)           # inconclusive
    s.get(V1, 1, 4, created=0).run(V1)          # kvm_mmu_load: roots reloaded and synced
    s.unsync(V0, 4).run(V0)
    s.pv(V1, 1, need_flush=1).run(V1)           # gfn 4 went unsync after the loss: certain
    w1, w2 = windows(s)
    assert w1.verdict == "inconclusive" and w2.verdict == "violation"


def test_a_sync_in_place_re_establishes_and_keeps_its_ok():
    s = unsynced()
    s.unsync(V0, 4, level=1)
    s.lost(1)
    s.pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)   # KVM synced in place: sync_roots ran
    (w,) = windows(s)
    assert w.verdict == "ok" and w.reestablished


def test_exact_root_state_re_establishes():
    s = built()
    s.lost(1)
    s.add(Kind.ROOT_STATE, V1, gfn=1, role=0x3704, value=0, unsync_children=0)
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,) = windows(s)
    assert w.verdict == "ok"


def test_another_vcpu_is_not_re_established_by_a_reload_elsewhere():
    s = built()
    s.lost(1)
    s.get(V0, 1, 4, created=0).run(V0)         # vCPU0 reloads; vCPU1 still in doubt
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,) = windows(s)
    assert w.verdict == "inconclusive"


def test_a_page_unsync_again_after_the_loss_is_no_longer_in_doubt():
    s = unsynced()
    s.lost(1)
    s.get(V1, 1, 4, created=0).run(V1)          # re-established
    s.unsync(V0, 4).run(V0)                     # seen again after the loss
    s.pv(V1, 1, need_flush=1).run(V1)
    (w,) = windows(s)
    assert w.verdict == "violation" and not w.outstanding[0].doubtful


def test_function_probe_verdicts_stand_after_a_loss():
    meta = TraceMeta(probes=["kprobe:kvm_mmu_sync_roots"])
    s = unsynced()
    s.lost(1)
    s.pv(V1, 1, need_flush=1).fn(Kind.HW_FLUSH, V1).run(V1)
    (w,) = windows(s, meta)
    assert w.verdict == "violation"             # no kvm_mmu_sync_roots inside the window


# ----------------------------------------------------------------------------- the sweep

def _sweep_module():
    spec = importlib.util.spec_from_file_location("loss_sweep", ROOT / "bench" / "loss_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["loss_sweep"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path,limit", [(REAL, None), (LAB, None),
                                        (ROOT / "fixtures/real/exercise_4vcpu_stress.parquet", 12)])
def test_loss_sweep_no_verdict_a_lost_sync_or_unsync_could_flip(path, limit):
    r = _sweep_module().sweep(path, limit)
    assert r["positions"] and r["decided"], r
    assert r["bad"] == [], "\n".join(r["bad"][:5])


def _lab_with_line_lost(tmp_path: Path, needle: str) -> Path:
    lines = LAB.read_text().splitlines(keepends=True)
    (i,) = [i for i, line in enumerate(lines) if needle in line]
    cpu = lines[i].split("[", 1)[1].split("]", 1)[0].lstrip("0") or "0"
    lines[i] = f"CPU:{cpu} [LOST 1 EVENTS]\n"
    out = tmp_path / "lab_lost.txt"
    out.write_text("".join(lines))
    return out


def test_text_trace_with_its_sync_lost_is_inconclusive_not_a_violation(tmp_path):
    res = analyze_path(_lab_with_line_lost(tmp_path, "kvm_mmu_sync_page"))
    assert res.verdict == "inconclusive", (res.verdict, res.findings)
    assert res.windows["ok"] == res.windows["violation"] == 0


def test_text_trace_with_its_unsync_lost_is_ok_only_through_the_sync_seen_after(tmp_path):
    # The sync_page on the flushing vCPU after the loss is kvm_mmu_sync_roots at work: every
    # unsync page reachable from its root was synced then, whatever the loss hid.
    res = analyze_path(_lab_with_line_lost(tmp_path, "kvm_mmu_unsync_page"))
    assert res.windows["violation"] == 0 and res.verdict == "ok"


def test_online_and_offline_agree_on_a_carried_loss(tmp_path):
    trace = load(REAL)
    ev = trace.events.reset_index(drop=True)
    first_sync = int(ev.index[ev["kind"] == int(Kind.SP_SYNC)][0])
    lossy = _sweep_module().with_lost(ev, first_sync)
    out = tmp_path / "lossy.parquet"
    write_trace(out, lossy, trace.meta)
    offline = analyze_path(out)
    online = OnlineAnalysis()
    session = Session(FileSource(str(out), chunk_rows=5), online)
    session.open()
    session.start()
    assert session.wait(60)
    session.close()
    res = online.finish()
    assert offline.windows == res.windows and offline.windows["violation"] == 0
    assert online.snapshot().lost_windows >= 1
