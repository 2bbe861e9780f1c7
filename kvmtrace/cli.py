"""The `kvmtrace` command line.  Each command lives in kvmtrace/commands/<name>.py."""
from __future__ import annotations

import sys

import click

from kvmtrace import __version__, exitcodes
from kvmtrace.commands.analyze import analyze
from kvmtrace.commands.convert import convert
from kvmtrace.commands.exercise import exercise
from kvmtrace.commands.show import show
from kvmtrace.commands.doctor import doctor
from kvmtrace.commands.record import record
from kvmtrace.commands.check import check
from kvmtrace.commands.watch import watch
from kvmtrace.commands.report import report
from kvmtrace.commands.timeline import timeline
from kvmtrace.errors import fail_line
from kvmtrace.pipeline.offline import SelectionError
from kvmtrace.schema import SchemaError
from kvmtrace.sources.native import TraceFileError, use_system_memory_pool

EPILOG = """\b
Examples:
  kvmtrace analyze fixtures/lab_two_vcpu_flush.ftrace.txt   judge a recorded trace
  kvmtrace report trace.parquet -o report.html    the same, as one HTML page
  kvmtrace timeline trace.parquet -o t.json       every flush window, for Perfetto
  kvmtrace show trace.parquet                     what a trace holds
  kvmtrace convert /sys/kernel/tracing/trace -o t.parquet   text -> native file
  kvmtrace doctor                                 can this host be traced?
  kvmtrace record -o flushes.parquet -d 60        record all VMs for a minute
  kvmtrace exercise                               run the built-in flush guest
  kvmtrace check --exercise --json                post-fix verdict for this host
  kvmtrace watch -p 4242                          live table of one VM's flushes
\b
Exit codes: 0 ok/pass, 1 violation or stale read, 2 usage or bad input,
            3 inconclusive or suspect, 4 this host cannot do it.
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvmtrace")
def cli() -> None:
    """Find guest TLB flushes that KVM completes before syncing its shadow page tables."""


cli.add_command(show)
cli.add_command(analyze)
cli.add_command(convert)
cli.add_command(exercise)
cli.add_command(doctor)
cli.add_command(record)
cli.add_command(check)
cli.add_command(watch)
cli.add_command(report)
cli.add_command(timeline)


def main(argv: list[str] | None = None) -> None:
    use_system_memory_pool()
    try:
        code = cli.main(args=argv, prog_name="kvmtrace", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exitcodes.BAD_INPUT
    except click.exceptions.Abort:
        click.echo("kvmtrace: interrupted", err=True)
        code = 130
    except (TraceFileError, SchemaError, SelectionError) as exc:
        fail_line(str(exc))
        code = exitcodes.BAD_INPUT
    except BrokenPipeError:
        code = 0
    sys.exit(code or 0)
