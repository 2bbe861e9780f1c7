"""kvmtrace convert: any readable trace -> a native Parquet or JSON Lines file."""
from __future__ import annotations

import click

from kvmtrace.sources.stream import load
from kvmtrace.sources.native import native_format, write_trace
from kvmtrace.commands.options import tgid_map_option


@click.command(epilog="""\b
Examples:
  kvmtrace convert /sys/kernel/tracing/trace -o capture.parquet
  kvmtrace convert perf-script.txt -o small.jsonl
  kvmtrace convert recording.parquet -o recording.jsonl.gz
Exit codes: 0 written, 2 usage or bad input.
""")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file; the format follows the suffix: .parquet, .jsonl, .jsonl.gz")
@tgid_map_option
def convert(trace: str, output: str, tgid_map: dict[int, int] | None) -> None:
    """Convert TRACE (native, ftrace, trace-cmd or perf text) to a native trace file."""
    fmt = native_format(output)
    loaded = load(trace, tgid_map=tgid_map)
    for warning in loaded.warnings:
        click.echo(f"kvmtrace: warning: {trace}: {warning}", err=True)
    if loaded.recovery is not None:
        click.echo(f"kvmtrace: warning: {trace}: {loaded.recovery.describe()}", err=True)
    write_trace(output, loaded.events, loaded.meta, fmt)
    click.echo(f"wrote {len(loaded.events)} events to {output} ({fmt})", err=True)
