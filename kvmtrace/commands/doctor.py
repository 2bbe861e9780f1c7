"""kvmtrace doctor: can this host record, and what is missing if not."""
from __future__ import annotations

import json

import click

from kvmtrace import exitcodes


@click.command(epilog="""\b
Examples:
  sudo kvmtrace doctor
  sudo kvmtrace doctor --json | jq .recording_possible
Exit 0 when a recording is possible, 4 when not.
""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor(as_json: bool) -> None:
    """Check everything live tracing needs: KVM backend, TDP/shadow paging, BCC, headers,
    tracefs, BPF tracepoint programs, kprobes, fentry, KVM functions and tracepoints."""
    from kvmtrace.sources.live.doctor import diagnose, render
    d = diagnose()
    click.echo(json.dumps(d.to_dict(), indent=2) if as_json else render(d))
    raise click.exceptions.Exit(exitcodes.OK if d.recording_possible else exitcodes.ENVIRONMENT)
