"""`check --exercise` and `watch` (without -o) import neither pandas nor pyarrow (~0.3 s of
CPU at start-up here, bench/check_bench.py's "imports" phase): the live chunk path
(recorder -> records.Columns -> schema.Chunk -> the model) is numpy only.

The probes run in a fresh interpreter: this test process has pandas loaded already.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvmtrace.schema import NUMERIC_COLUMNS, Chunk, Kind
from kvmtrace.sources.live.records import SLOT_DTYPE, Columns, lost_columns, lost_frame, to_columns

from live_support import kvm_unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "pyarrow")
# What `check --exercise` and `watch` import (commands -> pipeline -> sources -> model).
CHECK_PATH = ("kvmtrace.commands.check", "kvmtrace.commands.watch", "kvmtrace.commands.record",
              "kvmtrace.pipeline.check", "kvmtrace.pipeline.watch", "kvmtrace.pipeline.session",
              "kvmtrace.pipeline.online", "kvmtrace.sources.chunks",
              "kvmtrace.sources.live.recorder", "kvmtrace.exercise")


def heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_check_and_watch_modules_import_neither_pandas_nor_pyarrow():
    imports = "\n".join(f"import {m}" for m in CHECK_PATH)
    assert heavy_after(imports + "\nfrom kvmtrace.sources.chunks import LiveSource") == []


def test_the_probe_sees_a_heavy_import():
    """The probe can fail: the trace file reader does load both."""
    assert heavy_after("import kvmtrace.sources.native") == list(HEAVY)


LIVE_CHUNKS = """
import numpy as np
from kvmtrace.schema import NUMERIC_COLUMNS, Kind, TraceMeta
from kvmtrace.sources.live.records import SLOT_DTYPE, Columns, lost_columns, to_columns
from kvmtrace.sources.live.recorder import Recorder
from kvmtrace.pipeline.online import OnlineAnalysis

Recorder(None, probes="auto", root=%r).plan()        # host facts and the probe plan
slots = np.zeros(5000, dtype=SLOT_DTYPE)
slots["ts"] = np.arange(1, 5001)
slots["tgid"], slots["tid"] = 77, 78 + np.arange(5000) %% 3
slots["vcpu"], slots["kind"] = np.arange(5000) %% 3, int(Kind.GUEST_ENTRY)
chunk = Columns.concat([to_columns(slots, {78: "CPU 0/KVM"}), lost_columns(6000, {1: 4})])
online = OnlineAnalysis()
online.start(TraceMeta(source="live"))
online.feed(chunk.chunk(NUMERIC_COLUMNS))
result = online.finish()
assert result.lost_events == 4, result.lost_events
"""


def test_the_live_chunk_path_runs_without_pandas_or_pyarrow():
    hosts = ROOT / "tests" / "data" / "hosts" / "pvm_6_18"
    assert heavy_after(LIVE_CHUNKS % (str(hosts),)) == []


def _slots(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    slots = np.zeros(n, dtype=SLOT_DTYPE)
    slots["ts"] = np.sort(rng.integers(1, 1 << 40, n))
    slots["tid"] = rng.choice([5, 9, 7, 1 << 31], n)
    slots["tgid"], slots["vcpu"] = 3, rng.integers(-1, 4, n)
    slots["kind"] = rng.choice([int(Kind.GUEST_ENTRY), int(Kind.SP_GET)], n)
    slots["gfn"], slots["flags"] = rng.integers(0, 1 << 40, n), rng.integers(0, 4, n)
    return slots


@pytest.mark.parametrize("n", [0, 1, 3000])
def test_a_columns_chunk_is_the_chunk_of_its_frame(n):
    """LiveSource hands the model Columns.chunk(); it was Chunk.from_frame(frame())."""
    cols = Columns.concat([to_columns(_slots(n), {5: "a", 9: "CPU 1/KVM"}),
                           lost_columns(1 << 41, {0: 2, 3: 1})])
    direct, via = cols.chunk(NUMERIC_COLUMNS), Chunk.from_frame(cols.frame(), NUMERIC_COLUMNS)
    assert list(direct.cols) == list(via.cols)
    for name in via.cols:
        np.testing.assert_array_equal(direct.cols[name], via.cols[name], err_msg=name)
        assert direct.cols[name].dtype == via.cols[name].dtype, name
    assert direct.comm.to_array().tolist() == via.comm.to_array().tolist()


def test_lost_columns_are_the_lost_frames_rows():
    a, b = lost_columns(99, {0: 0, 3: 12, 1: 5}), Columns.of_frame(lost_frame(99, {0: 0, 3: 12, 1: 5}))
    assert a.names == b.names and a.comm_codes.tolist() == b.comm_codes.tolist()
    for name, arr in b.arrays.items():
        np.testing.assert_array_equal(a.arrays[name], arr, err_msg=name)
        assert a.arrays[name].dtype == arr.dtype, name
    assert len(lost_columns(5, {})) == 0 and lost_columns(5, {}).names == []


KVM_REASON = kvm_unavailable_reason()
CLI = """
import sys
from kvmtrace.cli import main
sys.argv = ["kvmtrace", "check", "--exercise", "--json"]
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""


@pytest.mark.live
@pytest.mark.skipif(KVM_REASON is not None, reason=f"live check --exercise: {KVM_REASON}")
def test_a_live_check_with_the_exercise_imports_neither():
    assert heavy_after(CLI) == []


def test_a_recorder_with_an_output_loads_the_writer_before_it_attaches(tmp_path):
    """With -o, pyarrow is imported when the Recorder is made (before compile and attach),
    never between attaching and the first drain, where 0.4 s would fill the ring buffer."""
    hosts = ROOT / "tests" / "data" / "hosts" / "pvm_6_18"
    make = "from kvmtrace.sources.live.recorder import Recorder\nRecorder(%r, root=%r)"
    assert "pyarrow" in heavy_after(make % (str(tmp_path / "x.parquet"), str(hosts)))
    assert heavy_after(make % (None, str(hosts))) == []
