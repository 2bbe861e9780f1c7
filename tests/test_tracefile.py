"""Native trace files: exact round trips, crash recovery, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmtrace.sources.frame import conform, from_rows
from kvmtrace.sources.stream import load
from kvmtrace.schema import COLUMNS, SCHEMA_VERSION, Kind, SchemaError, TraceMeta
from kvmtrace.sources.native import TraceFileError, TraceWriter, write_trace

FORMATS = ["t.parquet", "t.jsonl", "t.jsonl.gz"]


def _int_range(dtype: str) -> st.SearchStrategy[int]:
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


def _row_strategy() -> st.SearchStrategy[dict]:
    fields = {}
    for col in COLUMNS:
        if col.name == "kind":
            fields[col.name] = st.sampled_from([int(k) for k in Kind])
        elif col.dtype == "str":
            fields[col.name] = st.text(max_size=20)
        else:
            fields[col.name] = _int_range(col.dtype)
    return st.fixed_dictionaries(fields)


meta_strategy = st.builds(
    TraceMeta,
    source=st.sampled_from(["recorded", "imported", "generated"]),
    source_format=st.text(max_size=10),
    kernel_release=st.text(max_size=30),
    kvm_backend=st.sampled_from(["", "kvm_intel", "kvm_amd", "kvm_pvm"]),
    tdp=st.sampled_from([None, True, False]),
    clock=st.text(max_size=10),
    start_time_ns=st.integers(0, 2**62),
    lost_events=st.integers(0, 2**40),
    lost_per_cpu=st.dictionaries(st.sampled_from(["0", "1", "7"]), st.integers(0, 2**40)),
    probes=st.lists(st.text(max_size=15), max_size=4),
    notes=st.lists(st.text(max_size=30), max_size=3),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row_strategy(), max_size=30), meta=meta_strategy)
@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_is_exact(tmp_path: Path, name: str, rows: list[dict], meta: TraceMeta) -> None:
    events = from_rows(rows)
    path = tmp_path / name
    write_trace(path, events, meta, chunk_rows=7)
    back = load(path, validate=False)       # the bytes as stored: arbitrary values included
    assert back.recovery is None
    pd.testing.assert_frame_equal(back.events, events)
    for col in COLUMNS:
        assert back.events[col.name].dtype == events[col.name].dtype
    assert back.meta == meta


def _sample(n: int) -> pd.DataFrame:
    return from_rows([dict(ts=i, kind=Kind.SP_GET, gfn=i, role=0x3701, level=1, tid=7, tgid=3,
                           comm="CPU 0/KVM") for i in range(n)])


@pytest.mark.parametrize("name", FORMATS)
def test_unfinished_writer_leaves_complete_chunks(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    writer = TraceWriter(path, TraceMeta(source="recorded"))
    writer.write(_sample(10))
    writer.write(_sample(5))
    # no close(): the process "died" here
    back = load(path)
    assert back.recovery is not None
    assert len(back.events) == 15
    assert any("recovered" in n for n in back.meta.notes)


def test_truncated_recording_recovers_whole_chunks(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    writer = TraceWriter(path, TraceMeta(source="recorded"))
    for _ in range(3):
        writer.write(_sample(100))
    part = Path(str(path) + ".part")
    data = part.read_bytes()
    part.write_bytes(data[: len(data) - 50])   # cut inside the third chunk
    back = load(path)
    assert len(back.events) == 200
    assert back.recovery.chunks == 2
    assert back.recovery.discarded_bytes > 0


def test_lost_markers_are_recounted_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    writer = TraceWriter(path, TraceMeta(source="recorded"))
    writer.write(from_rows([dict(ts=1, kind=Kind.LOST, cpu=1, value=12),
                            dict(ts=2, kind=Kind.LOST, cpu=0, value=3)]))
    back = load(path)
    assert back.meta.lost_events == 15
    assert back.meta.lost_per_cpu == {"0": 3, "1": 12}


def test_lost_marker_of_unknown_size_counts_as_one_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    writer = TraceWriter(path, TraceMeta(source="recorded"))
    writer.write(from_rows([dict(ts=1, kind=Kind.LOST, cpu=1, value=-1),
                            dict(ts=2, kind=Kind.LOST, cpu=1, value=3)]))
    back = load(path)                        # no trailer: counts rebuilt from the markers
    assert back.meta.lost_events == 4 and back.meta.lost_per_cpu == {"1": 4}
    out = tmp_path / "again.jsonl"
    write_trace(out, back.events, back.meta)
    assert load(out).meta.lost_events == 4


def test_recorder_killed_by_sigkill_leaves_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.parquet"
    script = f"""
import os, signal
from kvmtrace.sources.frame import from_rows
from kvmtrace.schema import Kind, TraceMeta
from kvmtrace.sources.native import TraceWriter
w = TraceWriter({str(path)!r}, TraceMeta(source="recorded"))
for c in range(4):
    w.write(from_rows([dict(ts=c * 100 + i, kind=Kind.PIO, value=i) for i in range(100)]))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    back = load(path)
    assert len(back.events) == 400
    assert back.events["ts"].tolist() == list(range(400))


def test_gzip_cut_mid_stream_keeps_flushed_chunks(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    writer = TraceWriter(path, TraceMeta())
    writer.write(_sample(20))
    size_after_first = os.path.getsize(path)
    writer.write(_sample(20))
    data = path.read_bytes()
    path.write_bytes(data[: size_after_first + (len(data) - size_after_first) // 2])
    back = load(path)
    assert len(back.events) >= 20
    assert back.recovery is not None


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"hello world\nthis is not a trace\n", "not a recognised trace"),
    (bytes(range(256)) * 8, "not a recognised trace"),
], ids=["empty", "garbage-text", "binary-noise"])
def test_bad_input_is_a_trace_error(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(TraceFileError) as err:
        load(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def _jsonl(tmp_path: Path, header: dict, *events: dict) -> Path:
    path = tmp_path / "x.jsonl"
    lines = [json.dumps({"kvmtrace": header})] + [json.dumps(e) for e in events]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    meta = TraceMeta().to_dict()
    meta["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(TraceFileError, match="unknown schema version"):
        load(_jsonl(tmp_path, meta))


@pytest.mark.parametrize("field, value", [
    ("lost_events", "5"), ("lost_events", -1), ("tdp", "no"), ("probes", "kprobe:kvm_mmu_load"),
    ("notes", "x"), ("lost_per_cpu", {"0": "7"}), ("start_time_ns", None), ("kernel_release", 6),
])
def test_metadata_of_the_wrong_type_is_refused(tmp_path: Path, field: str, value) -> None:
    meta = TraceMeta().to_dict()
    meta[field] = value
    with pytest.raises(TraceFileError, match=f"metadata field '{field}'"):
        load(_jsonl(tmp_path, meta, {"ts": 1, "kind": "pio"}))


def test_unknown_kind_and_missing_fields_are_refused(tmp_path: Path) -> None:
    meta = TraceMeta().to_dict()
    with pytest.raises(TraceFileError, match="unknown event kind 'teleport'"):
        load(_jsonl(tmp_path, meta, {"ts": 1, "kind": "teleport"}))
    with pytest.raises(TraceFileError, match="without 'kind' or 'ts'"):
        load(_jsonl(tmp_path, meta, {"kind": "pio"}))
    # A value too large for its column is an invalid event: skipped, counted, marked.
    trace = load(_jsonl(tmp_path, meta, {"ts": 1, "kind": "pio", "level": 4000}))
    assert list(trace.events["kind"]) == [int(Kind.INVALID)]
    assert any("level does not fit its int8 column" in n for n in trace.meta.notes)


def test_parquet_missing_column_is_refused(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    path = tmp_path / "t.parquet"
    write_trace(path, _sample(3), TraceMeta())
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["gfn"]).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(TraceFileError, match="missing column 'gfn'"):
        load(path)


def test_conform_rejects_values_that_do_not_fit() -> None:
    df = _sample(2)
    df["cpu"] = [1, 1 << 40]
    with pytest.raises(SchemaError, match="cpu"):
        conform(df)


def test_writer_killed_before_its_first_chunk_leaves_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "quiet.parquet"
    script = f"""
import os, signal
from kvmtrace.schema import TraceMeta
from kvmtrace.sources.native import TraceWriter
TraceWriter({str(path)!r}, TraceMeta(source="recorded", kernel_release="6.18-test"))
os.kill(os.getpid(), signal.SIGKILL)
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    back = load(path)
    assert len(back.events) == 0
    assert back.meta.kernel_release == "6.18-test"
    assert back.recovery is not None and back.recovery.chunks == 0
