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
  kvmtrace convert web17.parquet --dataset fleet/ --host web-17
--dataset DIR appends the trace to a dataset for kvmtrace fleet: one new part
per VM, DIR/host=<host>/vm=<tgid>/part-*.parquet (written under a hidden name
and renamed: never a partial file; several writers may append at once).  The
host is --host, else the trace's own, else this machine's name.
Exit codes: 0 written, 2 usage or bad input (unreadable or corrupt input,
            another kvmtrace writing OUT, a full disk: nothing of OUT is left;
            a -p/--vcpu that selects nothing; a host name with '/', '=' or '..').
""")
@click.argument("trace", metavar="TRACE")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file; the format follows the suffix: .parquet, .jsonl, .jsonl.gz")
@click.option("--dataset", type=click.Path(file_okay=False), metavar="DIR",
              help="Append to the partitioned dataset DIR instead (one part per VM).")
@click.option("--host", metavar="NAME", help="Host name of the trace in the dataset (default: "
              "the trace's metadata, else this machine's name).")
@pid_filter_option
@vcpu_filter_option
@tgid_map_option
@click.option("--salvage", is_flag=True, help="Read what precedes corruption instead of "
              "refusing the file; the verdict is then at best inconclusive.")
def convert(trace: str, output: str | None, vm: int | None, vcpu: int | None,
            tgid_map: dict[int, int] | None, salvage: bool, dataset: str | None = None,
            host: str | None = None) -> None:
    """Convert TRACE (native, ftrace, trace-cmd or perf text) to a native trace file."""
    if (output is None) == (dataset is None):
        raise click.UsageError("give one of -o/--output FILE and --dataset DIR")
    if host is not None and dataset is None:
        raise click.UsageError("--host names the host in a dataset: use it with --dataset")
    if dataset is not None:
        _to_dataset(trace, dataset, host, vm, vcpu, tgid_map, salvage)
        return
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


def _to_dataset(trace: str, dataset: str, host: str | None, vm: int | None, vcpu: int | None,
                tgid_map: dict[int, int] | None, salvage: bool) -> None:
    from kvmtrace.sources.dataset import check_host_name, write_dataset
    from kvmtrace.sources.stream import load
    if host is not None:
        check_host_name(host)          # refuse before reading a large trace
    loaded = load(trace, tgid_map=tgid_map, salvage=salvage)
    for warning in loaded.warnings:
        click.echo(f"kvmtrace: warning: {trace}: {warning}", err=True)
    if loaded.recovery is not None:
        click.echo(f"kvmtrace: warning: {trace}: {loaded.recovery.describe()}", err=True)
    events = selected(trace, loaded, vm, vcpu)
    for part in write_dataset(dataset, events, loaded.meta, host=host):
        click.echo(f"wrote {part.events} events of VM {part.vm} to {part.path}", err=True)
