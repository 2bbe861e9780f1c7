"""The real multi-address-space fixtures (fixtures/real/exercise_3space*) and the fault
injection that made their no-sync counterparts (fixtures/inject_nosync.py)."""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from kvmtrace.schema import Kind
from kvmtrace.sources.stream import load as load_trace

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "fixtures" / "real"
sys.path.insert(0, str(ROOT / "fixtures"))
from inject_nosync import InjectError, inject_frame, inject_text  # noqa: E402

CLEAN, BROKEN = REAL / "exercise_3space.parquet", REAL / "exercise_3space_nosync.parquet"
CLEAN_TXT, BROKEN_TXT = (REAL / "exercise_3space.ftrace.txt.gz",
                         REAL / "exercise_3space_nosync.ftrace.txt.gz")
VCPU, WINDOW = 1, 3          # what fixtures/README.md says was injected


def events(path: Path):
    return load_trace(path).events


def test_the_exact_fixture_holds_kvm_bookkeeping():
    ev = events(CLEAN)
    links = ev[ev.kind == int(Kind.SP_LINK)]
    # shared tables: SPs with a parent in each of the three trees of a vCPU (window
    # tables), or in every tree of every vCPU (the system region's table)
    parents = links[links.value == 1].groupby(["gfn", "role"]).parent_gfn.nunique()
    assert parents.max() >= 3 and (parents == 3).sum() >= 2
    roots = ev[(ev.kind == int(Kind.ROOT_STATE)) & (ev.value == 0) & (ev.gfn >= 0)]
    assert set(roots.vcpu) == {0, 1, 2} and set(roots.level) == {4}
    # three different roots per reader: it switched between its trees
    assert (roots[roots.vcpu > 0].groupby("vcpu").gfn.nunique() == 3).all()


def test_injection_is_what_the_committed_counterparts_hold():
    got, _ = inject_frame(events(CLEAN), VCPU, WINDOW)
    want = events(BROKEN)
    assert got.reset_index(drop=True).equals(want.reset_index(drop=True))
    text, _ = inject_text(gzip.decompress(CLEAN_TXT.read_bytes()).decode(), VCPU, WINDOW)
    assert text == gzip.decompress(BROKEN_TXT.read_bytes()).decode()


def test_injection_moves_one_sync_block_and_dirties_that_root_only():
    clean, broken = events(CLEAN), events(BROKEN)
    sync = int(Kind.SP_SYNC)
    assert (clean.kind == sync).sum() == (broken.kind == sync).sum()
    flush = clean[(clean.kind == int(Kind.FLUSH_REQUEST_PV)) & (clean.need_flush == 1)
                  & (clean.vcpu == VCPU)].iloc[WINDOW]
    after = broken[(broken.tid == flush.tid) & (broken.ts > flush.ts)]
    first_ev = after[after.kind.isin([int(k) for k in (Kind.WALK_START, Kind.EMULATE,
                                                        Kind.SPTE_INSTALL, Kind.PIO)])].iloc[0]
    before = after[after.ts < first_ev.ts]
    assert not (before.kind == sync).any()              # the guest ran before any sync
    snap = before[(before.kind == int(Kind.ROOT_STATE)) & (before.value == 0)]
    assert len(snap) == 1 and int(snap.unsync_children.iloc[0]) >= 1 and snap.gfn.iloc[0] >= 0
    dirty = lambda ev: ev[(ev.kind == int(Kind.ROOT_STATE)) & (ev.value == 0)
                          & (ev.unsync_children > 0)]
    assert len(dirty(broken)) == len(dirty(clean)) + (snap.index[0] not in dirty(clean).index)


def test_injection_refuses_a_window_it_cannot_doctor(tmp_path):
    with pytest.raises(InjectError, match="only"):
        inject_frame(events(CLEAN), VCPU, 10_000)
    out = subprocess.run([sys.executable, str(ROOT / "fixtures" / "inject_nosync.py"), str(CLEAN),
                          str(tmp_path / "x.parquet"), "--window", "10000"],
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "only" in out.stderr and "Traceback" not in out.stderr
