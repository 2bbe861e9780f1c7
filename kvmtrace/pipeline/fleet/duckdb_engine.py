"""The DuckDB engine: DuckDB selects and pre-aggregates the partitions and reads their rows.

One SQL pass over the whole dataset, ``read_parquet('DIR/host=*/vm=*/part-*.parquet',
hive_partitioning = true)``, reads only the ``kind`` and ``need_flush`` columns: it applies ``--hosts`` (SQL
``GLOB`` on the ``host`` partition column) and counts, per (host, VM, part), the events and
the flush requests (every kind that can open a flush window; a steal-time update
without KVM_VCPU_FLUSH_TLB is none).  Partitions are then
analysed largest first by a process pool, each worker reading its partition's rows with
DuckDB in file order (``file_row_number``) and handing them to the same per-VM function
as every engine (``common.partition_row``).  A partition with no flush request is still
replayed: its row (no-flushes, or inconclusive after a loss) must be the one ``analyze``
gives, and only the replay knows its losses, disorder and invalid events.

Partition values come back as strings (``hive_types_autocast = false``): a host named
``123`` stays a name; the VM is parsed as an integer.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from kvmtrace.pipeline.fleet import FleetRun, Progress
from kvmtrace.pipeline.fleet.common import partition_row
from kvmtrace.pipeline.fleet.local import run_pool
from kvmtrace.schema import FLUSH_PATH_KINDS, FLUSH_REQUEST_KINDS, FUNCTION_KINDS, Kind
from kvmtrace.sources.dataset import (HOST_KEY, PART_GLOB, VM_KEY, DatasetError, Partition,
                                      part_meta)

# Kinds that open (or, with function probes, service) a flush window.
OPENER_KINDS = sorted(int(k) for k in (FLUSH_REQUEST_KINDS | FLUSH_PATH_KINDS |
                                        {Kind.FLUSH_SERVICE, Kind.FLUSH_GUEST_ENTRY}))
_CONN = None


def _connect():
    """One DuckDB connection per process (a pool worker keeps its own)."""
    global _CONN
    if _CONN is None:
        import duckdb
        _CONN = duckdb.connect(":memory:")
        _CONN.execute("SET threads TO 1")      # the pool gives the parallelism
    return _CONN


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def preaggregate(root: str, hosts: Optional[str]) -> list[tuple[str, str, str, int, int]]:
    """(host, vm, file, events, flush requests) per part of the selected partitions."""
    import duckdb
    pattern = str(Path(root) / f"{HOST_KEY}=*" / f"{VM_KEY}=*" / PART_GLOB)
    if not Path(root).is_dir():
        raise DatasetError(root, "no such dataset directory" if not Path(root).exists()
                           else "is not a directory")
    if not any(Path(root).glob(f"{HOST_KEY}=*/{VM_KEY}=*/{PART_GLOB}")):
        return []
    con = duckdb.connect(":memory:")
    try:
        sql = (f"SELECT host, vm, filename, count(*) AS events, "
               f"count(*) FILTER (WHERE kind IN ({','.join(map(str, OPENER_KINDS))}) "
               f"AND NOT (kind = {int(Kind.FLUSH_REQUEST_PV)} AND need_flush = 0)) AS flushes "
               f"FROM read_parquet({_sql_str(pattern)}, hive_partitioning = true, "
               f"hive_types_autocast = false, filename = true) "
               + ("WHERE host GLOB ? " if hosts is not None else "")
               + "GROUP BY host, vm, filename ORDER BY host, vm, filename")
        return con.execute(sql, [hosts] if hosts is not None else []).fetchall()
    except duckdb.Error as exc:
        raise DatasetError(root, f"DuckDB cannot read the dataset: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def analyze_partition(p: Partition) -> dict:
    """Read one partition's parts with DuckDB, in file order, and replay it."""
    import duckdb
    files = [str(f) for f in p.parts]
    con = _connect()
    listing = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    try:
        rel = con.sql(
            f"SELECT * FROM read_parquet({listing}, filename = true, file_row_number = true, "
            f"hive_partitioning = false) ORDER BY filename, file_row_number")
        # to_arrow_table: DuckDB 1.1+; arrow(): older (and a reader in 1.4+).
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    except duckdb.Error as exc:
        raise DatasetError(files[0] if len(files) == 1 else os.path.dirname(files[0]),
                           f"DuckDB cannot read it: {str(exc).splitlines()[0]}") from None
    if hasattr(table, "read_all"):         # DuckDB 1.4+: a RecordBatchReader
        table = table.read_all()
    frame = table.to_pandas()
    parts = []
    for name, rows in frame.groupby("filename", sort=True):
        events = rows.drop(columns=["filename", "file_row_number"]).reset_index(drop=True)
        parts.append((name, events, part_meta(name)))
    return partition_row(p.host, p.vm, parts)


def run(root: str, *, hosts: Optional[str] = None, jobs: Optional[int] = None,
        progress: Optional[Progress] = None) -> FleetRun:
    found: dict[tuple[str, int], Partition] = {}
    flushes: dict[tuple[str, int], int] = {}
    for host, vm, filename, _events, n_flush in preaggregate(root, hosts):
        try:
            key = (str(host), int(vm))
        except ValueError:
            raise DatasetError(Path(filename).parent, "the VM partition is not a TGID") from None
        found.setdefault(key, Partition(*key)).parts.append(Path(filename))
        flushes[key] = flushes.get(key, 0) + int(n_flush)
    partitions = [found[k] for k in sorted(found)]
    rows, workers = run_pool(partitions, analyze_partition, jobs, progress)
    return FleetRun("duckdb", rows, len(partitions), sum(len(p.parts) for p in partitions), 0.0,
                    workers, extra={"partitions_with_flush_requests":
                                    sum(1 for n in flushes.values() if n)})
