"""kvmtrace timeline: flush windows and shadow-MMU events as a Perfetto / chrome://tracing trace."""
from __future__ import annotations

import click

from kvmtrace import exitcodes

from kvmtrace.commands.options import pid_filter_option, tgid_map_option
from kvmtrace.commands.writing import write_output


@click.command(epilog="""\b
Examples:
  kvmtrace timeline fixtures/lab_two_vcpu_flush.ftrace.txt -o timeline.json
  kvmtrace timeline --vm 4242 recording.parquet -o vm4242.json
Open the file in the Perfetto UI ("Open trace file") or chrome://tracing ("Load").
Exit codes (the analysis verdict, as analyze and report; the file is written in every
            case but 2): 0 ok or no flushes, 1 violation, 2 bad input or unwritable
            output, 3 suspect or inconclusive.
""")
@click.argument("traces", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="TRACE...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="OUT.json",
              help="Write the Chrome trace-event JSON here.")
@pid_filter_option
@click.option("--vcpu", "vcpu", type=click.IntRange(min=0), metavar="N",
              help="Only windows of vCPU N.")
@tgid_map_option
def timeline(traces: tuple[str, ...], output: str, vm: int | None, vcpu: int | None,
             tgid_map: dict[int, int] | None) -> None:
    """Write a timeline of every flush window for Perfetto or chrome://tracing.

    One process per VM (its VMM's TGID), one thread per vCPU, one slice per flush window
    named after its verdict ("violation flush window", ...) with its reason, pattern,
    evidence, unsync pages and flush->sync latency, and instants for shadow-page sync,
    unsync and zap, flush requests and lost events.  Timestamps are microseconds from the
    trace start; the metadata holds the absolute start.
    """
    from kvmtrace.outputs.timeline import dumps
    from kvmtrace.pipeline.visual import collect_paths
    data = collect_paths(traces, vm=vm, vcpu=vcpu, tgid_map=tgid_map)
    write_output(output, dumps(data))
    w = data.result.windows
    click.echo(f"kvmtrace: wrote {output}: {w['total']} flush windows "
               f"({w['violation']} violation), verdict {data.result.verdict}", err=True)
    raise click.exceptions.Exit(exitcodes.for_verdict(data.result.verdict))
