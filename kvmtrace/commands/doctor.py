"""kvmtrace doctor: can this host record, and what is missing if not."""
from __future__ import annotations

import json
import os

import click

from kvmtrace import exitcodes


@click.command(epilog="""\b
Examples:
  sudo kvmtrace doctor
  sudo kvmtrace doctor --json | jq .recording_possible
  sudo kvmtrace doctor --fix             # mount tracefs, link kernel headers
  sudo kvmtrace doctor --json | jq '.flush_paths[] | {path, serviced, seen, judged}'
  kvmtrace doctor --no-guest
Exit 0 when a recording is possible, 4 when not.
""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--fix", is_flag=True, help="First set up what kvmtrace can itself (as root): "
              "mount tracefs, link /lib/modules/$(uname -r)/{build,source} to installed headers.")
@click.option("--no-guest", "no_guest", is_flag=True,
              help="Do not run the built-in guest to find which flush paths this host services.")
def doctor(as_json: bool, fix: bool, no_guest: bool) -> None:
    """Check everything live tracing needs: KVM backend, TDP/shadow paging, BCC, headers,
    tracefs, BPF tracepoint programs, kprobes, fentry, KVM functions and tracepoints; then
    the guest flush paths: which this host services (the built-in guest tries each once)
    and which kvmtrace sees and judges here."""
    from kvmtrace.sources.live.doctor import diagnose, render
    if fix:
        from kvmtrace.host.setup import plan, apply
        if os.geteuid() != 0:
            click.echo("kvmtrace: doctor --fix needs root; showing what it would do", err=True)
        else:
            for line in apply(plan()) or ["nothing to set up"]:
                click.echo(f"kvmtrace: {line}", err=True)
    d = diagnose()
    paths = _flush_paths(no_guest)
    if as_json:
        click.echo(json.dumps({**d.to_dict(), "flush_paths": [r.to_dict() for r in paths]},
                              indent=2))
    else:
        click.echo(render(d))
        click.echo("\n".join(_coverage_lines(paths)))
    raise click.exceptions.Exit(exitcodes.OK if d.recording_possible else exitcodes.ENVIRONMENT)


def _flush_paths(no_guest: bool):
    """The coverage table of the guest flush paths (kvmtrace/exercise/coverage.py): the
    built-in guest tries each path once, unless --no-guest or it cannot run here."""
    from kvmtrace.analysis.flushpaths import EXERCISE_PATHS
    from kvmtrace.exercise import flush_support, tracefs_events, unavailable_reason
    from kvmtrace.exercise.backend import detect_backend
    from kvmtrace.exercise.coverage import coverage, raw_problem
    support = None
    if not no_guest and unavailable_reason() is None:
        try:
            support = flush_support(EXERCISE_PATHS)
        except Exception:        # the guest could not even start: say "not tried"
            support = None
    return coverage(detect_backend().name, support, tracefs_events(), raw_problem())


def _coverage_lines(rows) -> list[str]:
    from kvmtrace.exercise.coverage import render as render_coverage
    return [""] + render_coverage(rows)
