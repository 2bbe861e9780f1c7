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
Exit 0 when a recording is possible, 4 when not.
""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--fix", is_flag=True, help="First set up what kvmtrace can itself (as root): "
              "mount tracefs, link /lib/modules/$(uname -r)/{build,source} to installed headers.")
def doctor(as_json: bool, fix: bool) -> None:
    """Check everything live tracing needs: KVM backend, TDP/shadow paging, BCC, headers,
    tracefs, BPF tracepoint programs, kprobes, fentry, KVM functions and tracepoints."""
    from kvmtrace.sources.live.doctor import diagnose, render
    if fix:
        from kvmtrace.host.setup import plan, apply
        if os.geteuid() != 0:
            click.echo("kvmtrace: doctor --fix needs root; showing what it would do", err=True)
        else:
            for line in apply(plan()) or ["nothing to set up"]:
                click.echo(f"kvmtrace: {line}", err=True)
    d = diagnose()
    click.echo(json.dumps(d.to_dict(), indent=2) if as_json else render(d))
    raise click.exceptions.Exit(exitcodes.OK if d.recording_possible else exitcodes.ENVIRONMENT)
