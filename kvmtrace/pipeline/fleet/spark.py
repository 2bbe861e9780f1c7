"""The Spark engine: ``spark.read.parquet(DIR)``, then ``groupBy("host", "vm")
.applyInPandas(analyze_vm, schema)`` with the same per-VM function as every engine.

- Partition values are read as strings (``partitionColumnTypeInference`` off): a host
  named ``123`` stays a name; the VM is parsed as an integer in the function.
- A group's rows arrive in no particular order after the shuffle; each row carries its
  file (``_metadata.file_path``) and its place in it (``_metadata.row_index``), and the
  function restores file order before replaying: the model re-sorts only inside chunks and
  says so, so order must be the recording's.
- Each part's kvmtrace metadata (probes, losses, kernel) is in its Parquet footer, which
  Spark does not expose: the driver reads the footers of the selected parts and broadcasts
  them by file.
- ``--spark-master`` (default ``local[*]``) runs the same job on a cluster; executors need
  kvmtrace installed and the dataset at the same path (a shared file system).

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional
from urllib.parse import unquote, urlparse

from kvmtrace.analysis.fleet import ROW_COLUMNS, ROW_SCHEMA
from kvmtrace.pipeline.fleet import EngineUnavailable, FleetRun
from kvmtrace.sources.dataset import DatasetError, list_partitions, part_meta

FILE_COL = "_kvmtrace_file"
ROW_COL = "_kvmtrace_row"


def session(master: str = "local[*]", shuffle_partitions: Optional[int] = None):
    """A Spark session for the fleet job (UI off; workers run this Python)."""
    from pyspark.sql import SparkSession
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName("kvmtrace-fleet")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    try:
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        return spark
    except Exception as exc:            # no Java, or a master that cannot be reached
        raise EngineUnavailable(f"Spark cannot start ({master}): "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None


def spark_schema():
    from pyspark.sql.types import LongType, StringType, StructField, StructType
    return StructType([StructField(name, LongType() if kind == "int64" else StringType(), False)
                       for name, kind in ROW_SCHEMA])


def local_path(uri: str) -> str:
    """A file URI as Spark names it -> the path (file:///a/b%3Dc -> /a/b=c)."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("file", "") else uri


def spark_error_line(exc: BaseException) -> str:
    """The one line that says what failed in a Spark job: the Python exception a worker
    raised (its traceback's last line, e.g. a TraceFileError naming the part), else the
    first line of the message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)(: |$)", ln)]
    return (raised[-1] if raised else lines[0] if lines else type(exc).__name__)[:300]


def make_analyze(metas: dict):
    """The function applyInPandas runs per (host, vm) group: the group's rows back in file
    order, split by part, each with its footer's metadata -> one row."""
    def analyze_group(pdf):
        import pandas as pd
        from kvmtrace.pipeline.fleet.common import partition_row
        from kvmtrace.schema import TraceMeta
        pdf = pdf.sort_values([FILE_COL, ROW_COL], kind="stable")
        host = str(pdf["host"].iloc[0])
        vm = int(pdf["vm"].iloc[0])
        parts = []
        for uri, rows in pdf.groupby(FILE_COL, sort=True):
            events = rows.drop(columns=["host", "vm", FILE_COL, ROW_COL]).reset_index(drop=True)
            path = local_path(uri)
            meta = metas.value[os.path.realpath(path)]
            parts.append((path, events, TraceMeta.from_dict(dict(meta))))
        row = partition_row(host, vm, parts)
        return pd.DataFrame([row], columns=list(ROW_COLUMNS))
    return analyze_group


def run(root: str, *, hosts: Optional[str] = None, master: str = "local[*]",
        spark=None) -> FleetRun:
    """Analyse dataset ``root`` on Spark (``spark``: an existing session, else one for
    ``master``, stopped at the end)."""
    from pyspark.sql import functions as F
    root = os.path.abspath(root)                  # Spark names files by absolute URI
    partitions = list_partitions(root, hosts)     # the selection, and the footers to read
    if not partitions:
        return FleetRun("spark", [], 0, 0, 0.0)
    metas = {os.path.realpath(p): part_meta(p).to_dict() for part in partitions for p in part.parts}
    own = spark is None
    spark = spark or session(master)
    try:
        # The listed parts themselves, not their directories: Spark would list those again,
        # and a part appended in between (or a stray file) would have no footer in metas.
        df = spark.read.option("basePath", str(root)).parquet(
            *sorted(str(p) for part in partitions for p in part.parts))
        df = (df.withColumn(FILE_COL, F.col("_metadata.file_path"))
                .withColumn(ROW_COL, F.col("_metadata.row_index")))
        shared = spark.sparkContext.broadcast(metas)
        out = df.groupBy("host", "vm").applyInPandas(make_analyze(shared), schema=spark_schema())
        rows = [r.asDict() for r in out.collect()]
    except EngineUnavailable:
        raise
    except Exception as exc:
        if type(exc).__name__ in ("Py4JJavaError", "AnalysisException", "PythonException",
                                  "SparkRuntimeException", "SparkException"):
            raise DatasetError(root, f"Spark job failed: {spark_error_line(exc)}") from None
        raise
    finally:
        if own:
            spark.stop()
    return FleetRun("spark", rows, len(partitions), sum(len(p.parts) for p in partitions), 0.0,
                    extra={"spark_master": master})
