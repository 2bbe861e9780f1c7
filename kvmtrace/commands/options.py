"""Options shared by several commands."""
from __future__ import annotations

import os
import sys

import click


def _parse_tgid_map(ctx, param, value: tuple[str, ...]) -> dict[int, int] | None:
    """--tgid-map TID=TGID (repeatable): assign threads to VMs when the source has no TGID."""
    if not value:
        return None
    out: dict[int, int] = {}
    for item in value:
        tid, sep, tgid = item.partition("=")
        if not sep or not tid.strip().isdigit() or not tgid.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not TID=TGID", ctx=ctx, param=param)
        out[int(tid)] = int(tgid)
    return out


tgid_map_option = click.option(
    "--tgid-map", multiple=True, callback=_parse_tgid_map, metavar="TID=TGID",
    help="Assign thread TID to the VM process TGID (repeatable) when the trace has no TGID column.")


class StatusLine:
    """One status line on a terminal's stderr, rewritten in place (padded over the last)."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, text: str) -> None:
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = len(text)

    def clear(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


def warn_absent_tgids(tgids, verb: str) -> None:
    """-p names a process that is not running (yet): say so, and trace it if it appears."""
    for tgid in tgids:
        if not os.path.exists(f"/proc/{tgid}"):
            click.echo(f"kvmtrace: warning: no process {tgid} now; {verb} it if it appears", err=True)


no_setup_option = click.option(
    "--no-setup", is_flag=True,
    help="Do not mount tracefs or link kernel headers when they are missing (done by default "
         "when run as root; each action is reported on one line).")


def prepare_host(no_setup: bool) -> None:
    """Mount tracefs and link kernel headers where missing (as root), one line per action."""
    if no_setup:
        return
    from kvmtrace.host.setup import prepare
    for line in prepare():
        click.echo(f"kvmtrace: {line}", err=True)


pid_filter_option = click.option(
    "-p", "--pid", "--vm", "vm", type=click.IntRange(min=0), metavar="TGID",
    help="Only the VM whose VMM process is TGID (--vm is the same option).")
vcpu_filter_option = click.option(
    "--vcpu", "vcpu", type=click.IntRange(min=0), metavar="N",
    help="Only vCPU N: the events of its host threads.")


def selected(trace, loaded, vm: int | None, vcpu: int | None):
    """``loaded.events`` narrowed by -p/--vcpu; a filter that matches nothing exits 2."""
    if vm is None and vcpu is None:
        return loaded.events
    from kvmtrace.errors import fail_line
    from kvmtrace.sources.frame import SelectionError, select_events
    try:
        return select_events(loaded.events, vm=vm, vcpu=vcpu, source=str(trace))
    except SelectionError as exc:
        fail_line(str(exc))
        raise click.exceptions.Exit(2)


def prefetch_host_facts(live: bool = True) -> None:
    """Start reading what the probe plan needs and the kernel is slow to produce
    (/proc/kallsyms: host.kallsyms.prefetch), while the command imports its pipeline."""
    if live:
        from kvmtrace.host.kallsyms import prefetch
        prefetch()
