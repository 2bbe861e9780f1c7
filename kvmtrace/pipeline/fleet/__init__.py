"""``kvmtrace fleet``: analyse a partitioned dataset (sources/dataset.py) on an engine.

Every engine turns each (host, VM) partition into one row of ``analysis.fleet.ROW_SCHEMA``
through the same ``common.partition_row`` (validation, then ``analysis.fleet``'s per-VM
replay); they differ only in how partitions are found, read and scheduled:

- ``local``: a process pool over partitions (``local.py``);
- ``duckdb``: DuckDB selects and pre-aggregates the partitions and reads their rows
  (``duckdb_engine.py``);
- ``spark``: ``groupBy("host", "vm").applyInPandas`` (``spark.py``).

The optional engines are imported only when chosen; without their package they raise
``EngineUnavailable`` naming the extra to install.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

ENGINES = ("local", "duckdb", "spark")
EXTRAS = {"duckdb": "duckdb", "spark": "spark"}


class EngineUnavailable(Exception):
    """The chosen engine's package is not installed (or cannot start)."""


@dataclass
class FleetRun:
    """The rows of one run and how it went."""

    engine: str
    rows: list[dict]
    partitions: int
    parts: int
    elapsed_s: float
    workers: int = 1
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


Progress = Callable[[int, int, int], None]      # (partitions done, of total, events so far)


def run_fleet(root: str, engine: str = "local", *, hosts: Optional[str] = None,
              jobs: Optional[int] = None, spark_master: str = "local[*]",
              progress: Optional[Progress] = None) -> FleetRun:
    """Analyse dataset ``root`` (hosts matching the glob ``hosts``) on ``engine``."""
    from kvmtrace.analysis.fleet import sort_rows
    start = time.monotonic()
    if engine == "local":
        from kvmtrace.pipeline.fleet.local import run
        out = run(root, hosts=hosts, jobs=jobs, progress=progress)
    elif engine == "duckdb":
        try:
            import duckdb  # noqa: F401
        except ImportError:
            raise EngineUnavailable("--engine duckdb needs DuckDB: pip install 'kvmtrace[duckdb]'") from None
        from kvmtrace.pipeline.fleet.duckdb_engine import run
        out = run(root, hosts=hosts, jobs=jobs, progress=progress)
    elif engine == "spark":
        try:
            import pyspark  # noqa: F401
        except ImportError:
            raise EngineUnavailable("--engine spark needs PySpark: pip install 'kvmtrace[spark]'") from None
        from kvmtrace.pipeline.fleet.spark import run
        out = run(root, hosts=hosts, master=spark_master)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    out.rows = sort_rows(out.rows)
    out.elapsed_s = time.monotonic() - start
    return out
