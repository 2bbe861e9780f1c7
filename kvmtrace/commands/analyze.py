"""kvmtrace analyze: replay traces through the shadow-MMU model and give a verdict."""
from __future__ import annotations

import json
import shlex
import sys
import time

import click

from kvmtrace import exitcodes
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import StatusLine, pid_filter_option, tgid_map_option


class _Progress:
    """A one-line progress report on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.line = StatusLine() if sys.stderr.isatty() else None
        self.start = time.monotonic()

    def __call__(self, path: str, events: int) -> None:
        elapsed = time.monotonic() - self.start
        if self.line is None or elapsed < 1.0:
            return
        self.line(f"{path}: {events:,} events ({events / elapsed / 1e6:.1f} M/s)")

    def done(self) -> None:
        if self.line is not None and self.line.width:
            click.echo("", err=True)


def report_command(traces, vm: int | None, vcpu: int | None,
                   tgid_map: dict[int, int] | None) -> str:
    """The `kvmtrace report` command line for the same selection."""
    args = ["kvmtrace", "report"]
    if vm is not None:
        args += ["-p", str(vm)]
    if vcpu is not None:
        args += ["--vcpu", str(vcpu)]
    for tid, tgid in (tgid_map or {}).items():
        args += ["--tgid-map", f"{tid}={tgid}"]
    return " ".join(shlex.quote(a) for a in [*args, *traces, "-o", "kvmtrace-report.html"])


@click.command(epilog="""\b
Examples:
  kvmtrace analyze fixtures/lab_two_vcpu_flush.ftrace.txt
  kvmtrace analyze --json recording.parquet
  kvmtrace analyze -p 4242 --vcpu 1 part1.parquet part2.parquet
  ssh host cat /sys/kernel/tracing/trace | kvmtrace analyze -
Exit codes: 0 ok or no flushes seen, 1 violation, 2 bad input (unreadable
            or corrupt file, a -p/--vcpu that selects nothing),
            3 suspect or inconclusive.
On a violation it prints the `kvmtrace report` command that draws it.
""")
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pid_filter_option
@click.option("--vcpu", "vcpu", type=click.IntRange(min=0), metavar="N",
              help="Only report windows of vCPU N.")
@tgid_map_option
@click.option("--salvage", is_flag=True, help="Read what precedes corruption instead of "
              "refusing the file; the verdict is then at best inconclusive.")
@click.option("--strict", is_flag=True,
              help="Reject a text trace at its first line that cannot be decoded (default: "
                   "skip and count such lines; the verdict is inconclusive if they could "
                   "change it).")
def analyze(traces: tuple[str, ...], as_json: bool, vm: int | None, vcpu: int | None,
            tgid_map: dict[int, int] | None, salvage: bool, strict: bool = False) -> None:
    """Find guest TLB flushes completed before the shadow page tables were synced.

    Replays each TRACE (kvmtrace Parquet / JSON Lines, ftrace, trace-cmd or perf text)
    through a model of KVM's shadow MMU.  Each serviced guest flush opens a window on its
    vCPU that closes when the vCPU runs guest code again; the window is a violation when an
    unsync shadow page reachable from the vCPU's root was left unsync.
    """
    from kvmtrace.outputs.text import render
    from kvmtrace.pipeline.offline import SelectionError, analyze_paths
    from kvmtrace.schema import SchemaError
    from kvmtrace.sources.native import TraceFileError
    progress = _Progress()
    try:
        result = analyze_paths(traces, vm=vm, vcpu=vcpu, progress=progress, tgid_map=tgid_map,
                               salvage=salvage, strict=strict)
    except (TraceFileError, SchemaError, SelectionError) as exc:
        if not as_json:
            raise
        # --json promises one JSON object on stdout, also when the input is bad.
        click.echo(json.dumps({"error": str(exc), "verdict": None}, indent=2))
        fail_line(str(exc))
        raise click.exceptions.Exit(exitcodes.BAD_INPUT) from None
    finally:
        progress.done()
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else render(result))
    if result.verdict == "violation":
        hint = report_command(traces, vm, vcpu, tgid_map)
        if as_json:
            click.echo(f"kvmtrace: to see it: {hint}", err=True)
        else:
            click.echo(f"see it: {hint}")
    raise click.exceptions.Exit(exitcodes.for_verdict(result.verdict))
