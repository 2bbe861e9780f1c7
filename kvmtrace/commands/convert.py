"""kvmtrace convert: any readable trace -> a native Parquet or JSON Lines file."""
from __future__ import annotations

import click

from kvmtrace.commands.options import pid_filter_option, selected, tgid_map_option, vcpu_filter_option


@click.command(epilog="""\b
Examples:
  kvmtrace convert /sys/kernel/tracing/trace -o capture.parquet
  kvmtrace convert perf-script.txt -o small.jsonl
  kvmtrace convert recording.parquet -o recording.jsonl.gz
  kvmtrace convert - -o capture.parquet < /sys/kernel/tracing/trace
  kvmtrace convert -p 4242 all-vms.parquet -o one-vm.parquet
Exit codes: 0 written, 2 usage or bad input (unreadable or corrupt input,
            another kvmtrace writing OUT, a full disk: nothing of OUT is left;
            a -p/--vcpu that selects nothing).
""")
@click.argument("trace", metavar="TRACE")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file; the format follows the suffix: .parquet, .jsonl, .jsonl.gz")
@pid_filter_option
@vcpu_filter_option
@tgid_map_option
@click.option("--salvage", is_flag=True, help="Read what precedes corruption instead of "
              "refusing the file; the verdict is then at best inconclusive.")
def convert(trace: str, output: str, vm: int | None, vcpu: int | None,
            tgid_map: dict[int, int] | None, salvage: bool) -> None:
    """Convert TRACE (native, ftrace, trace-cmd or perf text) to a native trace file."""
    from kvmtrace.sources.stream import load
    from kvmtrace.sources.native import OutputLock, native_format, write_trace
    fmt = native_format(output)
    lock = OutputLock.acquire(output)      # refuse at once if another kvmtrace writes OUT
    try:
        loaded = load(trace, tgid_map=tgid_map, salvage=salvage)
    except BaseException:
        lock.release()
        raise
    for warning in loaded.warnings:
        click.echo(f"kvmtrace: warning: {trace}: {warning}", err=True)
    if loaded.recovery is not None:
        click.echo(f"kvmtrace: warning: {trace}: {loaded.recovery.describe()}", err=True)
    events = selected(trace, loaded, vm, vcpu)
    write_trace(output, events, loaded.meta, fmt, lock=lock)
    click.echo(f"wrote {len(events)} events to {output} ({fmt})", err=True)
