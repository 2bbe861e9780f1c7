"""One-line error reporting for the command line."""
from __future__ import annotations

import click


def fail_line(message: str) -> None:
    """Print one line to stderr, prefixed with the program name."""
    click.echo(f"kvmtrace: {message.splitlines()[0] if message else 'error'}", err=True)
