"""kvmtrace record: trace KVM's flush and shadow-MMU events live into a trace file."""
from __future__ import annotations

import sys
import threading

import click

from kvmtrace import exitcodes
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import StatusLine, no_setup_option, prepare_host, warn_absent_tgids


@click.command(epilog="""\b
Examples:
  sudo kvmtrace record -o trace.parquet -d 30
  sudo kvmtrace record -o vm.parquet -p 4242 -p 4243
  sudo kvmtrace record --ebpf            # print the generated BPF program
  sudo kvmtrace record --probes exact -o t.parquet -d 10   # insist on the exact mode
Probe modes: exact reads KVM's shadow-MMU state (SP links, the vCPU's roots) through
raw tracepoints at BTF offsets; auto takes it where BTF and raw tracepoints allow
(kvmtrace doctor says), else the tracepoints (and kprobes where they exist).
Ctrl-C or SIGTERM stop the recording and finish the file; a killed recorder leaves
FILE.part, which every kvmtrace command reads.
Exit codes: 0 recorded, 2 usage, 4 this host cannot record (privileges, BPF, KVM:
            the message says what to install or enable).
""")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Output file: .parquet (default choice), .jsonl or .jsonl.gz.  [required "
                   "unless --ebpf]")
@click.option("-p", "--pid", "tgids", multiple=True, type=click.IntRange(1, 2**22 - 1),
              metavar="TGID", help="Record only this VM process (repeatable); filtered in the kernel.")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--probes", type=click.Choice(["auto", "exact", "tracepoints", "functions"]), default="auto",
              show_default=True, help="Which probe kinds to attach.")
@click.option("--ebpf", is_flag=True, help="Print the generated BPF program and exit.")
@no_setup_option
def record(output: str | None, tgids: tuple[int, ...], duration: float | None, probes: str,
           ebpf: bool, no_setup: bool) -> None:
    """Record KVM guest-flush, shadow-page and guest-run events with BPF."""
    from kvmtrace.sources.live import LiveUnavailable, Recorder
    from kvmtrace.pipeline.session import stop_on_signals
    if not ebpf and not output:
        raise click.UsageError("-o/--output is required (or --ebpf)")
    if not ebpf:
        prepare_host(no_setup)
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            rec = Recorder(None if ebpf else output, tgids=tgids, probes=probes)
            if ebpf:
                click.echo(f"/* {rec.plan().exact_line()} */")
                click.echo(rec.program_text(), nl=False)
                return
            warn_absent_tgids(tgids, "recording")
            report = rec.attach()
        except LiveUnavailable as exc:
            fail_line(str(exc))
            raise click.exceptions.Exit(exitcodes.ENVIRONMENT)
        for line in report.lines():
            click.echo(f"kvmtrace: {line}", err=True)
        status = StatusLine() if sys.stderr.isatty() else None
        try:
            stats = rec.run(duration=duration, stop=stop,
                            progress=(lambda s: status(s.line())) if status else None)
        finally:
            meta = rec.close()
    if status:
        click.echo("", err=True)        # keep the last status line on screen
    lost = meta.lost_events if meta else stats.lost
    click.echo(f"kvmtrace: wrote {stats.events} events to {output} in {stats.elapsed:.1f} s "
               f"({lost} lost)", err=True)


