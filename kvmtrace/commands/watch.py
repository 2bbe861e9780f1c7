"""kvmtrace watch: live online detection -- flush windows judged as they close."""
from __future__ import annotations

import sys
import threading

import click

from kvmtrace import exitcodes
from kvmtrace.commands.writing import check_output_dir, report_option, write_session_report
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import no_setup_option, prefetch_host_facts, prepare_host

EPILOG = """\b
On a terminal the table is refreshed in place and each violation is printed above it
with the shadow pages left unsync and the events around it.  Otherwise a summary line
is printed every --interval seconds; with --json, one JSON object per closed non-ok
window (the same objects as the "findings" of kvmtrace analyze --json) and a periodic
{"type": "summary"} object.
\b
Examples:
  sudo kvmtrace watch
  sudo kvmtrace watch -p 4242 -o vm.parquet
  sudo kvmtrace watch --json | tee -a /var/log/kvmtrace.jsonl
  sudo kvmtrace watch -p 4242 --report watch.html   # an HTML page when it stops
Runs until Ctrl-C or SIGTERM (a --replay until the trace ends).
Exit codes, by the final verdict as for kvmtrace analyze: 0 ok or no flushes seen,
1 violation, 2 bad input, 3 suspect or inconclusive, 4 this host cannot trace.
"""


@click.command(epilog=EPILOG)
@click.option("-p", "--pid", "tgids", multiple=True, type=click.IntRange(1, 2**22 - 1),
              metavar="TGID", help="Watch only this VM process (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines for log pipelines.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the trace to FILE (.parquet, .jsonl, .jsonl.gz).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Summary interval (default: 0.5 on a terminal, 10 otherwise).")
@click.option("--replay", "replay", type=click.Path(dir_okay=False), metavar="TRACE",
              help="Watch a recorded trace replayed through the same online path.")
@report_option
@no_setup_option
def watch(tgids: tuple[int, ...], as_json: bool, output: str | None, interval: float | None,
          replay: str | None, report_file: str | None, no_setup: bool) -> None:
    """Watch guest TLB flush windows live and report each violation as it happens."""
    prefetch_host_facts(live=not replay)
    from kvmtrace.sources.live import LiveUnavailable
    from kvmtrace.outputs.livetable import AnsiTable, JsonLines, PlainLines
    from kvmtrace.pipeline.session import stop_on_signals
    from kvmtrace.sources.chunks import FileSource, LiveSource
    from kvmtrace.pipeline.watch import Watch
    if replay and (tgids or output):
        raise click.UsageError("--replay reads a recorded trace: it takes no -p or -o")
    out = sys.stdout                # click.get_text_stream() is deprecated (Click 8.5 warns)
    tty = out.isatty() and not as_json
    view = JsonLines(out) if as_json else AnsiTable(out) if tty else PlainLines(out)
    if interval is None:
        interval = 0.5 if tty else 10.0
    if not replay:
        prepare_host(no_setup)
        # On a busy host the first chunk of 64 Ki rows would import pandas (factorize.py) in
        # the drain thread: ~0.4 s while the ring buffer fills.  A watch runs for minutes,
        # so it pays that now, before any probe is attached.
        import pandas  # noqa: F401
    source = FileSource(replay) if replay else LiveSource(tgids=tgids, output=output)
    stop = threading.Event()
    collector = None
    if report_file:
        from kvmtrace.pipeline.visual import Collector
        check_output_dir(report_file, "--report")
        collector = Collector(replay or "live")
    w = Watch(source, view, interval, stop, replay_listener=collector)
    with stop_on_signals(stop):
        try:
            info = w.open()
        except LiveUnavailable as exc:
            fail_line(f"watch: cannot trace here: {exc}")
            raise click.exceptions.Exit(exitcodes.ENVIRONMENT)
        if not as_json and info.live:
            click.echo(f"kvmtrace: watching {'VMs ' + ' '.join(map(str, tgids)) if tgids else 'all VMs'}"
                       f" with {len(info.attached)} probes"
                       + (f", writing {output}" if output else "") + "; Ctrl-C to stop", err=True)
        result = w.run()
    if output and not as_json:
        click.echo(f"kvmtrace: wrote {result.events} events to {output}", err=True)
    if report_file:
        write_session_report(report_file, result, collector,
                             {"command": "kvmtrace watch", "verdict": result.verdict})
    raise click.exceptions.Exit(exitcodes.for_verdict(result.verdict))
