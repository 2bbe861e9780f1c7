"""kvmtrace show: summarise a trace file."""
from __future__ import annotations

import json

import click

from kvmtrace.commands.options import pid_filter_option, selected, tgid_map_option, vcpu_filter_option


@click.command(epilog="""\b
Examples:
  kvmtrace show fixtures/lab_two_vcpu_flush.ftrace.txt
  kvmtrace show --json recording.parquet
  kvmtrace show -p 4242 --vcpu 1 recording.parquet
Exit codes: 0 shown, 2 usage or bad input.
""")
@click.argument("trace", metavar="TRACE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pid_filter_option
@vcpu_filter_option
@tgid_map_option
@click.option("--salvage", is_flag=True, help="Read what precedes corruption instead of "
              "refusing the file; the verdict is then at best inconclusive.")
def show(trace: str, as_json: bool, vm: int | None, vcpu: int | None,
         tgid_map: dict[int, int] | None, salvage: bool) -> None:
    """Summarise TRACE: events by kind, VMs, vCPUs, time span, lost events, metadata."""
    from kvmtrace.sources.stream import load
    from kvmtrace.outputs.summary import render, summarize
    loaded = load(trace, tgid_map=tgid_map, salvage=salvage)
    for warning in loaded.warnings:
        click.echo(f"kvmtrace: warning: {trace}: {warning}", err=True)
    loaded.events = selected(trace, loaded, vm, vcpu)
    summary = summarize(loaded)
    click.echo(json.dumps(summary, indent=2) if as_json else render(summary))
