"""kvmtrace fleet: analyse a partitioned dataset of many hosts' traces on an engine."""
from __future__ import annotations

import json
import sys

import click

from kvmtrace import exitcodes
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import StatusLine


class _Progress:
    """Partitions done, on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.line = StatusLine() if sys.stderr.isatty() else None

    def __call__(self, done: int, total: int, events: int) -> None:
        if self.line is not None:
            self.line(f"kvmtrace fleet: {done}/{total} partitions, {events:,} events")

    def done(self) -> None:
        if self.line is not None:
            self.line.clear()


@click.command(epilog="""\b
Examples:
  kvmtrace convert trace.parquet --dataset fleet/ --host web-17
  kvmtrace fleet fleet/
  kvmtrace fleet fleet/ --hosts 'web-*' -j 8 --json
  kvmtrace fleet fleet/ --engine duckdb
  kvmtrace fleet fleet/ --engine spark --spark-master spark://head:7077
The dataset: DIR/host=<host>/vm=<tgid>/part-*.parquet, as record --dataset
and convert --dataset write it.  Each (host, VM) is replayed alone by the same
per-VM function on every engine (analyze --vm TGID gives the same), one row each.
Exit codes: 0 every host ok or no flushes, 1 a violation on some host,
            2 usage or bad input (no dataset, no partition matches, a bad part),
            3 the worst host is suspect or inconclusive,
            4 the engine is not installed (pip install 'kvmtrace[spark]' / '[duckdb]').
""")
@click.argument("dataset", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--engine", type=click.Choice(["local", "duckdb", "spark"]), default="local",
              show_default=True, help="local: a process pool; duckdb: DuckDB selects and "
              "reads the partitions; spark: groupBy(host, vm).applyInPandas.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object; the per-(host, "
              "VM) results are under `rows`.")
@click.option("--hosts", metavar="GLOB", help="Only hosts whose name matches GLOB (e.g. 'web-*').")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Worker processes for local and duckdb (default: the CPU count).")
@click.option("--spark-master", default="local[*]", show_default=True, metavar="URL",
              help="Spark master for --engine spark (a cluster's spark://..., yarn, ...).")
def fleet(dataset: str, engine: str, as_json: bool, hosts: str | None, jobs: int | None,
          spark_master: str) -> None:
    """Analyse a dataset of many hosts' traces: a verdict per host, worst first."""
    from kvmtrace.pipeline.fleet import EngineUnavailable, run_fleet
    from kvmtrace.outputs.fleet import fleet_dict, render
    progress = _Progress()
    try:
        run = run_fleet(dataset, engine, hosts=hosts, jobs=jobs, spark_master=spark_master,
                        progress=progress)
    except EngineUnavailable as exc:
        fail_line(str(exc))
        raise click.exceptions.Exit(exitcodes.ENVIRONMENT) from None
    finally:
        progress.done()
    if not run.rows:
        which = f" of hosts matching {hosts!r}" if hosts else ""
        fail_line(f"{dataset}: no partition{which} (expected DIR/host=<host>/vm=<tgid>/part-*.parquet)")
        raise click.exceptions.Exit(exitcodes.BAD_INPUT)
    events = sum(r["events"] for r in run.rows)
    info = {"engine": run.engine, "partitions": run.partitions, "parts": run.parts,
            "workers": run.workers, "elapsed_s": round(run.elapsed_s, 3),
            "events_per_s": events / run.elapsed_s if run.elapsed_s > 0 else 0.0, **run.extra}
    if as_json:
        out = fleet_dict(run.rows, info)
        click.echo(json.dumps(out, indent=2))
        verdict = out["verdict"]
    else:
        from kvmtrace.analysis.fleet import summarize
        click.echo(render(run.rows, info))
        verdict = summarize(run.rows)["verdict"]
    raise click.exceptions.Exit(exitcodes.for_verdict(verdict))
