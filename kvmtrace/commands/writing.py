"""Writing a command's output file: atomically, and one clear line when it cannot."""
from __future__ import annotations

import os

import click

from kvmtrace import exitcodes
from kvmtrace.errors import fail_line
from kvmtrace.outputs.prom import write_atomically


def write_output(path: str, text: str) -> None:
    """Replace ``path`` with ``text``; exit 2 with one line if that is impossible."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"directory {parent} does not exist")
        write_atomically(path, text)
    except OSError as exc:
        fail_line(f"cannot write {path}: {exc.strerror or exc}")
        raise click.exceptions.Exit(exitcodes.BAD_INPUT)


def check_output_dir(path: str, option: str) -> None:
    """Fail before tracing, not after, when ``path`` cannot be created."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"{path}: directory {parent} does not exist", param_hint=option)


report_option = click.option(
    "--report", "report_file", type=click.Path(dir_okay=False), metavar="FILE",
    help="Also write the HTML report (as `kvmtrace report` makes) of what was seen to FILE.")


def write_session_report(path: str, result, collector, context: dict) -> None:
    """The HTML report of a check or watch: its result and every window it saw."""
    from kvmtrace.outputs.report_html import page
    from kvmtrace.pipeline.visual import visual_of
    write_output(path, page(visual_of(result, collector), context=context))
    click.echo(f"kvmtrace: wrote the report {path}", err=True)
