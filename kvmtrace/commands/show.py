"""kvmtrace show: summarise a trace file."""
from __future__ import annotations

import json

import click

from kvmtrace.sources.stream import load
from kvmtrace.outputs.summary import render, summarize
from kvmtrace.commands.options import tgid_map_option


@click.command(epilog="""\b
Examples:
  kvmtrace show fixtures/lab_two_vcpu_flush.ftrace.txt
  kvmtrace show --json recording.parquet
Exit codes: 0 shown, 2 usage or bad input.
""")
@click.argument("trace", metavar="TRACE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@tgid_map_option
@click.option("--salvage", is_flag=True, help="Read what precedes corruption instead of "
              "refusing the file; the verdict is then at best inconclusive.")
def show(trace: str, as_json: bool, tgid_map: dict[int, int] | None, salvage: bool) -> None:
    """Summarise TRACE: events by kind, VMs, vCPUs, time span, lost events, metadata."""
    loaded = load(trace, tgid_map=tgid_map, salvage=salvage)
    for warning in loaded.warnings:
        click.echo(f"kvmtrace: warning: {trace}: {warning}", err=True)
    summary = summarize(loaded)
    click.echo(json.dumps(summary, indent=2) if as_json else render(summary))
