"""Fleet analysis (issue 13): partitioned datasets, the per-VM function, the engines agree
with each other and with single-file `analyze --vm`, the fleet report and exit codes."""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fleet_support import REAL, VIOLATION, build_dataset, cli, expected_rows

from kvmtrace import exitcodes
from kvmtrace.analysis.fleet import ROW_COLUMNS, analyze_vm, sort_rows, vm_row
from kvmtrace.pipeline.fleet import run_fleet
from kvmtrace.pipeline.offline import analyze_paths
from kvmtrace.schema import COLUMN_NAMES, Kind
from kvmtrace.sources.dataset import DatasetError, list_partitions, part_meta, write_dataset
from kvmtrace.sources.stream import load


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    root, srcs = build_dataset(tmp)
    return root, expected_rows(srcs)


def test_layout_and_metadata(dataset):
    root, expected = dataset
    parts = sorted(root.glob("host=*/vm=*/part-*.parquet"))
    assert len(parts) == len(expected) == 8
    assert not list(root.rglob(".*"))                    # no temporary file left
    multi = sorted(p.parent.name for p in (root / "host=db-2").glob("vm=*/*.parquet"))
    assert len(multi) == 2                               # one trace, two VMs: two partitions
    for p in parts:
        meta = part_meta(p)
        assert meta.host == p.parent.parent.name.split("=", 1)[1]
        assert meta.kernel_release == "6.18.44-fc-v657"
        assert pq.read_schema(p).names == list(COLUMN_NAMES)   # as record and convert write


def test_loss_of_no_vm_is_copied_to_every_vm_partition(dataset):
    root, _ = dataset
    for part in (root / "host=db-2").glob("vm=*/*.parquet"):
        events = pq.read_table(part).to_pandas()
        lost = events[events["kind"] == int(Kind.LOST)]
        assert len(lost) == 1 and int(lost["tgid"].iloc[0]) == -1
        assert set(events["tgid"]) - {-1} == {int(part.parent.name[3:])}


def test_local_rows_equal_single_file_analyze(dataset):
    root, expected = dataset
    got = run_fleet(str(root), "local", jobs=2).rows
    assert [tuple(r) for r in got] == [ROW_COLUMNS] * len(got)
    assert got == expected
    verdicts = {(r["host"], r["vm"]): r["verdict"] for r in got}
    assert verdicts[("db-1", 3397)] == "violation"
    assert set(verdicts.values()) >= {"violation", "ok", "no-flushes", "suspect"}
    # The loss of no VM made a VM of the multi-VM trace inconclusive somewhere, or at least
    # it is counted in each VM's row.
    assert all(r["lost_events"] >= 3 for r in got if r["host"] == "db-2")


def test_one_job_equals_pool(dataset):
    root, expected = dataset
    assert run_fleet(str(root), "local", jobs=1).rows == expected


def test_analyze_vm_is_the_model_of_analyze_vm_option():
    trace = load(VIOLATION)
    rows = analyze_vm(trace.events, trace.meta, host="h")
    [row] = rows
    want = vm_row(analyze_paths([VIOLATION], vm=3397).to_dict(), host="h", vm=3397,
                  kernel=trace.meta.kernel_release)
    assert row == want
    assert row["verdict"] == "violation" and row["windows_violation"] == 1
    assert json.loads(row["findings"])[0]["verdict"] == "violation"


def test_violation_host_first_and_exit_code(dataset):
    root, _ = dataset
    code, out, _ = cli("fleet", root, "-j", "2")
    assert code == exitcodes.VIOLATION
    lines = out.splitlines()
    assert lines[0].startswith("fleet: VIOLATION")
    table = lines[lines.index(next(l for l in lines if l.startswith("host "))) + 1:]
    assert table[0].split()[:2] == ["db-1", "violation"]
    assert "kernel patterns:" in out and "6.18.44-fc-v657" in out
    code, out, _ = cli("fleet", root, "--json", "-j", "2")
    data = json.loads(out)
    assert code == exitcodes.VIOLATION and data["verdict"] == "violation"
    assert data["hosts"][0]["host"] == "db-1"
    assert len(data["rows"]) == 8 and {"host", "vm", "verdict"} <= set(data["rows"][0])


def test_hosts_glob_and_exit_codes_follow_worst_host(dataset):
    root, _ = dataset
    code, out, _ = cli("fleet", root, "--hosts", "web-*", "--json", "-j", "1")
    data = json.loads(out)
    assert {r["host"] for r in data["rows"]} == {"web-1", "web-2"}
    assert code == exitcodes.for_verdict(data["verdict"]) == exitcodes.OK
    code, out, _ = cli("fleet", root, "--hosts", "123", "--json")
    assert json.loads(out)["verdict"] == "suspect" and code == exitcodes.INCONCLUSIVE
    code, _, err = cli("fleet", root, "--hosts", "nosuch*")
    assert code == exitcodes.BAD_INPUT and "no partition" in err


@pytest.mark.parametrize("name", ["a/b", "..", ".", "h=1", "", "-x", "a..b", "x" * 254])
def test_hostile_host_names_are_refused(tmp_path, name):
    trace = load(REAL / "exercise_2vcpu.parquet")
    with pytest.raises(DatasetError):
        write_dataset(tmp_path / "d", trace.events, trace.meta, host=name)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").rglob("*.parquet"))
    code, _, err = cli("convert", REAL / "exercise_2vcpu.parquet", "--dataset", tmp_path / "d",
                       "--host", name)
    assert code == exitcodes.BAD_INPUT and "host name" in err and "Traceback" not in err


def test_concurrent_appends_keep_every_part(tmp_path):
    trace = load(REAL / "exercise_2vcpu.parquet")
    errors = []

    def write() -> None:
        try:
            for _ in range(5):
                write_dataset(tmp_path, trace.events, trace.meta, host="h")
        except Exception as exc:           # pragma: no cover - reported by the assert
            errors.append(exc)
    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    [p] = list_partitions(tmp_path)
    assert len(p.parts) == 20 and len({x.name for x in p.parts}) == 20
    row = run_fleet(str(tmp_path), "local", jobs=1).rows[0]
    # 20 recordings of one VM, analysed separately and reported together.
    assert row["windows_total"] == 20 * 20 and row["events"] == 20 * len(trace.events)


def test_no_partial_part_is_visible_when_writing_fails(tmp_path, monkeypatch):
    trace = load(REAL / "exercise_2vcpu.parquet")
    import kvmtrace.sources.dataset as ds

    def broken_link(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ds.os, "link", broken_link)
    with pytest.raises(DatasetError, match="No space left"):
        write_dataset(tmp_path, trace.events, trace.meta, host="h")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_filesystem_without_hard_links_gets_the_part_by_rename(tmp_path, monkeypatch):
    trace = load(REAL / "exercise_2vcpu.parquet")
    import kvmtrace.sources.dataset as ds

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")       # vfat, some FUSE filesystems
    monkeypatch.setattr(ds.os, "link", no_links)
    written = write_dataset(tmp_path, trace.events, trace.meta, host="h")
    assert written and all(w.path.exists() for w in written)
    assert not [p for p in tmp_path.rglob(".*.tmp")]
    [p] = list_partitions(tmp_path)
    assert sum(len(pq.read_table(x)) for x in p.parts) == len(trace.events)


def test_new_partition_directories_are_synced_in_their_parents(tmp_path, monkeypatch):
    trace = load(REAL / "exercise_2vcpu.parquet")
    import kvmtrace.sources.dataset as ds
    synced: list[Path] = []
    real = ds._fsync_dir
    monkeypatch.setattr(ds, "_fsync_dir", lambda d: (synced.append(Path(d)), real(d)))
    (written,) = write_dataset(tmp_path / "new", trace.events, trace.meta, host="h")
    vm_dir = written.path.parent
    # the dataset root, host=h and vm=N entries, then the part's own entry
    assert synced[:3] == [tmp_path, tmp_path / "new", tmp_path / "new" / "host=h"]
    assert synced.count(vm_dir) == 1 and synced[-1] == vm_dir
    synced.clear()
    write_dataset(tmp_path / "new", trace.events, trace.meta, host="h")
    assert synced == [vm_dir]                      # nothing new to make durable but the part


def test_bad_part_is_one_line_exit_2(tmp_path):
    d = tmp_path / "host=h" / "vm=1"
    d.mkdir(parents=True)
    (d / "part-x.parquet").write_bytes(b"PAR1 not really")
    code, _, err = cli("fleet", tmp_path, "-j", "2")
    assert code == exitcodes.BAD_INPUT and "part-x.parquet" in err and "Traceback" not in err
    code, _, err = cli("fleet", tmp_path / "nosuch")
    assert code == exitcodes.BAD_INPUT and "no such dataset" in err


@pytest.mark.parametrize("engine,extra", [("spark", "spark"), ("duckdb", "duckdb")])
def test_missing_engine_says_what_to_install(tmp_path, engine, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark" if engine == "spark" else "duckdb", None)
    (tmp_path / "host=h").mkdir()
    code, out, err = cli("fleet", tmp_path, "--engine", engine)
    assert code == exitcodes.ENVIRONMENT
    assert err.strip().count("\n") == 0 and f"pip install 'kvmtrace[{extra}]'" in err
