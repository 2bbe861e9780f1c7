"""kvmtrace show: summarise a trace file."""
from __future__ import annotations

import json

import click

from kvmtrace.commands.options import pid_filter_option, tgid_map_option, vcpu_filter_option


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
    from kvmtrace.errors import fail_line
    from kvmtrace.outputs.summary import render
    from kvmtrace.sources.frame import SelectionError
    stream, builder = read_summary(trace, tgid_map=tgid_map, salvage=salvage)
    # A text reader's notes are complete only at its end; they are its warnings.
    warnings = list(stream.meta.notes) if stream.format == "text" else stream.warnings
    for warning in warnings:
        click.echo(f"kvmtrace: warning: {trace}: {warning}", err=True)
    try:    # decided once the stream is consumed, from per-thread counts only
        keys = builder.selected(vm, vcpu, source=str(trace))
    except SelectionError as exc:
        fail_line(str(exc))
        raise click.exceptions.Exit(2)
    recovery = stream.recovery.describe() if stream.recovery else None
    summary = builder.result(stream.meta, recovery, warnings, keys)
    click.echo(json.dumps(summary, indent=2) if as_json else render(summary))


def read_summary(trace: str, *, tgid_map: dict[int, int] | None, salvage: bool):
    """TRACE read one chunk at a time (``sources.stream.open_events``) into a
    SummaryBuilder, so memory does not grow with the trace: (the stream, the builder)."""
    from kvmtrace.outputs.summary import SUMMARY_COLUMNS, SummaryBuilder
    from kvmtrace.schema import SchemaError
    from kvmtrace.sources.native import TraceFileError
    from kvmtrace.sources import stream as streams
    stream = streams.open_events(trace, columns=SUMMARY_COLUMNS, chunk_rows=streams.CHUNK_ROWS,
                                 tgid_map=tgid_map, salvage=salvage)
    builder = SummaryBuilder()
    try:
        for chunk in stream.chunks:
            builder.add(chunk.cols, chunk.comm)
    except SchemaError as exc:
        raise TraceFileError(trace, str(exc)) from None
    return stream, builder
