"""kvmtrace report: one self-contained HTML page of an analysis."""
from __future__ import annotations

import click

from kvmtrace import exitcodes
from kvmtrace.commands.options import pid_filter_option, tgid_map_option
from kvmtrace.commands.writing import write_output


@click.command(epilog="""\b
Examples:
  kvmtrace report fixtures/lab_two_vcpu_flush.ftrace.txt -o report.html
  kvmtrace report --vm 4242 part1.parquet part2.parquet -o vm4242.html
The page needs no network and reads with JavaScript off.
Exit codes (the analysis verdict, as analyze): 0 ok or no flushes, 1 violation,
            2 bad input or unwritable output, 3 suspect or inconclusive.
""")
@click.argument("traces", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="TRACE...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              metavar="OUT.html", help="Write the HTML page here.")
@pid_filter_option
@click.option("--vcpu", "vcpu", type=click.IntRange(min=0), metavar="N",
              help="Only windows of vCPU N.")
@tgid_map_option
def report(traces: tuple[str, ...], output: str, vm: int | None, vcpu: int | None,
           tgid_map: dict[int, int] | None) -> None:
    """Write an HTML report: verdict, windows over time, findings, latency, metadata.

    The same analysis as `kvmtrace analyze` (its --json is embedded in the page), drawn:
    a strip of every flush window per vCPU coloured by verdict, the per-vCPU table, each
    finding with the shadow pages it left unsync and the events around it, flush->sync
    latency histograms, the trace's metadata and lost events.
    """
    from kvmtrace.outputs.report_html import page
    from kvmtrace.pipeline.visual import collect_paths
    data = collect_paths(traces, vm=vm, vcpu=vcpu, tgid_map=tgid_map)
    write_output(output, page(data))
    click.echo(f"kvmtrace: wrote {output}: verdict {data.result.verdict}, "
               f"{data.result.windows['total']} flush windows", err=True)
    raise click.exceptions.Exit(exitcodes.for_verdict(data.result.verdict))
