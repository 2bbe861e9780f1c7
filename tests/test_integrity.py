"""Issue 14: integrity under damage.  Impossible fields are not believed, corruption is an
error naming where, special files never block, filters that select nothing are refused,
recording files are locked, compressed and leave nothing behind, --prom never goes stale."""
from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kvmtrace.cli import cli
from kvmtrace.pipeline.offline import SelectionError, analyze_path, analyze_paths
from kvmtrace.schema import Kind, SchemaError, TraceMeta
from kvmtrace.sources import native
from kvmtrace.sources.frame import from_rows
from kvmtrace.sources.native import (OutputLock, TraceFileError, TraceWriter, read_error,
                                     reading, write_trace)
from kvmtrace.sources.stream import load
from kvmtrace.sources.validate import Validator

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt"
REAL = ROOT / "fixtures" / "real" / "exercise_2vcpu.parquet"
BIG = ROOT / "fixtures" / "real" / "exercise_4vcpu_3000flushes.parquet"


def run(*args, input=None):
    return CliRunner().invoke(cli, list(map(str, args)), input=input, catch_exceptions=False)


def cli_main(*args, stdin=None, timeout=60):
    """The real entry point (one-line errors, exit codes) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "kvmtrace", *map(str, args)], stdin=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------- 2. validation

def test_level_9_in_a_sync_line_is_not_believed(tmp_path):
    text = LAB.read_text().replace("kvm_mmu_sync_page: sp gen 0 gfn 4 l1 ", "kvm_mmu_sync_page: sp gen 0 gfn 4 l9 ")
    bad = tmp_path / "l9.txt"
    bad.write_text(text)
    res = analyze_path(bad)
    assert res.verdict == "inconclusive" and res.windows["violation"] == 0
    assert any("invalid events skipped: 1" in n and "level" in n for n in res.notes), res.notes


@pytest.mark.parametrize("field,value,why", [
    ("level", 9, "level"), ("gfn", -5, "gfn"), ("gfn", 1 << 41, "gfn"), ("role", 0x3709, "role"),
    ("role", 1 << 33, "role"), ("vcpu", 70000, "vCPU"), ("ts", 0, "timestamp"),
    ("created", 3, "created"), ("tid", 1 << 30, "tid"), ("need_flush", 2, "need_flush")])
def test_each_range_is_checked(field, value, why):
    rows = [{"ts": 1000 + i, "kind": int(Kind.SP_GET), "tgid": 7, "tid": 8, "gfn": 4,
             "role": 0x3701, "level": 1, "created": 1} for i in range(5)]
    rows[2][field] = value
    if field == "role":
        rows[2]["level"] = -1             # the model then reads the level from the role
    v = Validator()
    out = v.check_frame(from_rows(rows))
    assert list(out["kind"]) == [20, 20, int(Kind.INVALID), 20, 20]
    marker = out.iloc[2]
    assert marker["tgid"] == 7 and marker["gfn"] == -1 and marker["ts"] in (1002, 1001)
    assert v.invalid == 1 and why in v.note()


def test_a_wrapped_uint64_gfn_is_never_converted_to_a_negative_number(tmp_path):
    # The recorder reads the kernel's u64 gfn as int64: 2**63+5 arrives as a negative.
    wrapped = int(np.uint64(2**63 + 5).astype(np.int64))
    rows = [{"ts": 5000, "kind": int(Kind.SP_GET), "tgid": 1, "tid": 2, "gfn": wrapped,
             "role": 0x3704, "level": 4, "created": 1}]
    src = tmp_path / "in.jsonl"
    write_trace(src, from_rows(rows), TraceMeta())
    src.write_text(src.read_text().replace(str(wrapped), str(2**63 + 5)).replace(
        '"gfn":-', '"gfn":'))       # and as JSON, the uint64 itself
    for out in ("o.parquet", "o.jsonl"):
        proc = cli_main("convert", src, "-o", tmp_path / out)
        assert proc.returncode == 0, proc.stderr
        back = load(tmp_path / out, validate=False).events
        assert (back["gfn"] >= -1).all() and list(back["kind"]) == [int(Kind.INVALID)]


def test_parquet_with_a_negative_gfn_is_refused_event_by_event(tmp_path):
    trace = load(REAL)
    ev = trace.events.copy()
    i = int(np.flatnonzero(ev["kind"] == int(Kind.SP_SYNC))[0])
    ev.loc[i, "gfn"] = -(2**62)
    out = tmp_path / "neg.parquet"
    write_trace(out, ev, trace.meta)
    res = analyze_path(out)
    assert res.verdict != "violation" and any("invalid events skipped: 1" in n for n in res.notes)


# ----------------------------------------------------------------------------- 3. corruption

READER_EXCEPTIONS = [
    pa.ArrowInvalid("Deserializing page header failed."), OSError("ZSTD decompression failed"),
    pa.ArrowIOError("bad"), EOFError("cut"), zlib.error("Error -3 invalid distance"),
    gzip.BadGzipFile("CRC check failed"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"),
    RecursionError("maximum recursion depth exceeded"), MemoryError(), OverflowError("too big"),
    ValueError("x"), json.JSONDecodeError("Expecting value", "x", 0), TypeError("x"),
    AttributeError("'list' object has no attribute 'get'"), KeyError("k"), IndexError("i"),
    SchemaError("unknown schema version 9")]


@pytest.mark.parametrize("exc", READER_EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_every_reader_exception_becomes_one_line_naming_file_and_place(exc):
    with pytest.raises(TraceFileError) as info:
        with reading("t.parquet", "row group 3 of 7"):
            raise exc
    msg = str(info.value)
    assert msg.startswith("t.parquet: row group 3 of 7: ") and "\n" not in msg
    assert read_error("t.parquet", exc).path == "t.parquet"


def _flipped_gz(tmp_path) -> Path:
    trace = load(REAL)
    gz = tmp_path / "c.jsonl.gz"
    write_trace(gz, trace.events, trace.meta)
    data = bytearray(gz.read_bytes())
    for i in range(8):
        data[len(data) // 2 + i] ^= 0xFF
    gz.write_bytes(bytes(data))
    return gz


def test_flipped_bytes_in_a_gzip_stream_are_an_error_not_ok(tmp_path):
    gz = _flipped_gz(tmp_path)
    proc = cli_main("analyze", gz)
    line = one_line(proc)
    assert proc.returncode == 2 and str(gz) in line and "compressed byte" in line and "corrupt" in line


def test_salvage_reads_up_to_the_corruption_and_is_at_best_inconclusive(tmp_path):
    gz = _flipped_gz(tmp_path)
    proc = cli_main("analyze", "--salvage", "--json", gz)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc["verdict"] == "inconclusive" and doc["windows"]["ok"] == 0
    assert any("salvaged past corruption" in n for n in doc["notes"])


def _corrupt_row_group(tmp_path) -> Path:
    trace = load(BIG)
    out = tmp_path / "two.parquet"
    table = pa.Table.from_pandas(trace.events, schema=native.ARROW_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(native._with_meta(native.ARROW_SCHEMA, trace.meta).metadata)
    pq.write_table(table, out, compression="zstd", row_group_size=20000)
    md = pq.ParquetFile(out).metadata
    col = md.row_group(1).column(0)
    start = col.data_page_offset
    data = bytearray(out.read_bytes())
    for i in range(start + 2, start + 40):
        data[i] ^= 0x5A
    out.write_bytes(bytes(data))
    return out


def test_a_parquet_page_that_fails_to_decode_names_its_row_group(tmp_path):
    bad = _corrupt_row_group(tmp_path)
    for cmd in (["analyze"], ["show"], ["convert", "-o", tmp_path / "x.jsonl"]):
        proc = cli_main(*cmd[:1], bad, *cmd[1:])
        line = one_line(proc)
        assert proc.returncode == 2 and "row group 1 of 2" in line, line
    assert not (tmp_path / "x.jsonl").exists()
    proc = cli_main("analyze", "--salvage", bad)
    assert proc.returncode == 3 and "INCONCLUSIVE" in proc.stdout


def test_metadata_that_is_a_json_list_and_deep_json_are_one_line_errors(tmp_path):
    listed = tmp_path / "list.jsonl"
    listed.write_text('{"kvmtrace": [1, 2]}\n')
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps({"kvmtrace": {"schema_version": 2}}) + "\n" + "[" * 100000 + "\n")
    table = pa.table({"ts": pa.array([1], pa.int64()), "comm": pa.array(["x"])}).replace_schema_metadata({b"kvmtrace": b"[1, 2]"})
    pql = tmp_path / "list.parquet"
    pq.write_table(table, pql)
    for path, words in ((listed, "metadata is a JSON list"), (deep, "line 2: JSON nested too deeply"),
                        (pql, "bad metadata: metadata is a JSON list")):
        proc = cli_main("show", path)
        assert proc.returncode == 2 and words in one_line(proc)


# ----------------------------------------------------------------------------- 4. special files

def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for cmd in ("analyze", "show"):
        proc = cli_main(cmd, fifo, timeout=30)
        assert proc.returncode == 2 and "is a FIFO" in one_line(proc) and "- <" in proc.stderr


def test_dev_stdin_and_dash_read_a_pipe(tmp_path):
    for name in ("/dev/stdin", "-"):
        with open(LAB, "rb") as f:
            feeder = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
            proc = cli_main("analyze", name, stdin=feeder.stdout)
            feeder.wait()
        assert proc.returncode == 0 and proc.stdout.startswith("verdict: OK"), proc.stderr


def test_a_directory_is_one_line_not_a_usage_error(tmp_path):
    proc = cli_main("analyze", tmp_path)
    assert proc.returncode == 2 and "is a directory" in one_line(proc) and "Usage" not in proc.stderr


def test_all_zero_timestamps_give_no_ok(tmp_path):
    trace = load(REAL)
    ev = trace.events.copy()
    ev["ts"] = 0
    out = tmp_path / "zero.parquet"
    write_trace(out, ev, trace.meta)
    res = analyze_path(out)
    assert res.verdict == "inconclusive" and res.windows["ok"] == 0


# ----------------------------------------------------------------------------- 5. filters

def test_filters_that_select_nothing_name_what_exists():
    proc = cli_main("analyze", "--vm", "12345", REAL)
    assert proc.returncode == 2 and one_line(proc) == f"kvmtrace: no VM 12345 in {REAL}; VMs: 17316"
    proc = cli_main("analyze", "--vcpu", "99", REAL)
    assert proc.returncode == 2 and one_line(proc) == f"kvmtrace: no vCPU 99 in {REAL}; vCPUs: 0, 1"
    with pytest.raises(SelectionError):
        analyze_paths([LAB], vm=12345)
    assert analyze_paths([REAL], vm=17316, vcpu=1).verdict == "ok"


# ----------------------------------------------------------------------------- 6. recording files

def test_a_second_writer_refuses_at_start_naming_the_holder(tmp_path):
    out = tmp_path / "rec.parquet"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kvmtrace.sources.native import TraceWriter;"
        "from kvmtrace.schema import TraceMeta; w = TraceWriter(sys.argv[1], TraceMeta());"
        "print('ready', flush=True); time.sleep(60)"), str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        part_before = (tmp_path / "rec.parquet.part").read_bytes()
        proc = cli_main("convert", LAB, "-o", out)
        assert proc.returncode == 2 and f"PID {holder.pid}" in one_line(proc)
        assert (tmp_path / "rec.parquet.part").read_bytes() == part_before   # untouched
    finally:
        holder.kill()
        holder.wait()
    w = TraceWriter(out, TraceMeta())            # the kernel dropped the dead holder's lock
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.parquet"]


def test_the_part_file_is_compressed_and_row_groups_are_not_drain_batches(tmp_path, monkeypatch):
    from kvmtrace.host import gather
    from kvmtrace.sources.live import recorder as recorder_mod
    from kvmtrace.sources.live.records import Columns
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(ROOT / "tests" / "data" / "hosts" / "pvm_6_18"))
    trace = load(BIG)
    out = tmp_path / "rec.parquet"
    rec = recorder_mod.Recorder(out)
    rec._writer = TraceWriter(out, trace.meta)
    for start in range(0, len(trace.events), 200):          # small drain batches
        rec._emit(Columns.of_frame(trace.events.iloc[start:start + 200].reset_index(drop=True)))
    rec._write_out(force=True)
    part = (tmp_path / "rec.parquet.part").stat().st_size
    assert len(load(out).events) == len(trace.events)      # what a reader recovers meanwhile
    rec.close()
    final = out.stat().st_size
    assert part <= 2 * final, (part, final)
    assert pq.ParquetFile(out).num_row_groups == 1


def test_enospc_at_close_leaves_no_tmp_and_keeps_the_part(tmp_path, monkeypatch):
    out = tmp_path / "rec.parquet"
    w = TraceWriter(out, TraceMeta())
    w.write(load(REAL).events)

    class Full(pq.ParquetWriter):
        def write_table(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(native.pq, "ParquetWriter", Full)
    with pytest.raises(OSError):
        w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.parquet.part"]
    assert len(load(out).events) == 215


def test_convert_onto_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    for fail_at in ("header", "chunk"):
        out = tmp_path / f"{fail_at}.parquet"
        if fail_at == "header":
            def new_stream(*a, **k):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(native.ipc, "new_stream", new_stream)
        else:
            monkeypatch.undo()

            def write(self, df):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(TraceWriter, "write", write)
        with pytest.raises(TraceFileError, match="No space left"):
            write_trace(out, load(REAL).events, TraceMeta())
        assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_convert_onto_a_real_full_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode == 0
    try:
        for out in ("t.parquet", "t.jsonl"):
            proc = cli_main("convert", BIG, "-o", mnt / out)
            assert proc.returncode == 2 and "No space left" in one_line(proc)
            assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)])


# ----------------------------------------------------------------------------- 7. --prom

def _prom(path: Path) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_prom_is_rewritten_when_the_check_cannot_judge(tmp_path, monkeypatch):
    prom = tmp_path / "k.prom"
    ok = run("check", "--replay", REAL, "--prom", prom)
    assert ok.exit_code == 0
    verdicts = {l["verdict"]: v for l, v in _prom(prom)["kvmtrace_check_verdict"]}
    assert verdicts["pass"] == 1
    # exit 2: the trace is corrupt
    proc = cli_main("check", "--replay", _flipped_gz(tmp_path), "--prom", prom)
    assert proc.returncode == 2
    m = _prom(prom)
    assert {l["verdict"]: v for l, v in m["kvmtrace_check_verdict"]}["pass"] == 0
    assert {l["verdict"]: v for l, v in m["kvmtrace_check_verdict"]}["error"] == 1
    (info, value), = m["kvmtrace_check_info"]
    assert info["verdict"] == "error" and info["exit_code"] == "2" and "corrupt" in info["reason"]
    # exit 4: this host cannot trace
    from kvmtrace.sources.live import LiveUnavailable
    import kvmtrace.pipeline.check as pc

    def no_trace(*a, **k):
        raise LiveUnavailable("live tracing needs root: not root", "run as root")
    monkeypatch.setattr(pc, "run_check", no_trace)
    run("check", "--replay", REAL, "--prom", prom)
    (info, _), = _prom(prom)["kvmtrace_check_info"]
    assert info["exit_code"] == "4" and "needs root" in info["reason"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".k.prom")] == []
