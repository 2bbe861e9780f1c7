"""kvmtrace record: trace KVM's flush and shadow-MMU events live into a trace file."""
from __future__ import annotations

import sys
import threading

import click

from kvmtrace import exitcodes
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import (StatusLine, no_setup_option, prefetch_host_facts, prepare_host,
                                       warn_absent_tgids)


@click.command(epilog="""\b
Examples:
  sudo kvmtrace record -o trace.parquet -d 30
  sudo kvmtrace record -o vm.parquet -p 4242 -p 4243
  sudo kvmtrace record --ebpf            # print the generated BPF program
  sudo kvmtrace record --probes exact -o t.parquet -d 10   # insist on the exact mode
  sudo kvmtrace record --dataset /var/lib/kvmtrace/fleet -d 60   # for kvmtrace fleet
--dataset DIR records to a hidden file in DIR and, when the recording ends, adds
it to the dataset: one new part per VM, DIR/host=<host>/vm=<tgid>/part-*.parquet
(host: --host, else this machine's name).  A killed recorder leaves the hidden
DIR/.record-*.parquet.part; kvmtrace convert it with --dataset DIR.
Probe modes: exact reads KVM's shadow-MMU state (SP links, the vCPU's roots) through
raw tracepoints at BTF offsets; auto takes it where BTF and raw tracepoints allow
(kvmtrace doctor says), else the tracepoints (and kprobes where they exist).
Ctrl-C or SIGTERM stop the recording and finish the file; a killed recorder leaves
FILE.part, which every kvmtrace command reads.
Exit codes: 0 recorded, 2 usage (or a --host with '/', '=' or '..'),
            4 this host cannot record (privileges, BPF, KVM:
            the message says what to install or enable).
""")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Output file: .parquet (default choice), .jsonl or .jsonl.gz.  [required "
                   "unless --ebpf]")
@click.option("--dataset", type=click.Path(file_okay=False), metavar="DIR",
              help="Add the recording to the partitioned dataset DIR (one part per VM) "
                   "instead of -o FILE.")
@click.option("--host", metavar="NAME", help="Host name in the dataset (default: this "
              "machine's name).")
@click.option("-p", "--pid", "tgids", multiple=True, type=click.IntRange(1, 2**22 - 1),
              metavar="TGID", help="Record only this VM process (repeatable); filtered in the kernel.")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--probes", type=click.Choice(["auto", "exact", "tracepoints", "functions"]), default="auto",
              show_default=True, help="Which probe kinds to attach.")
@click.option("--ebpf", is_flag=True, help="Print the generated BPF program and exit.")
@no_setup_option
def record(output: str | None, tgids: tuple[int, ...], duration: float | None, probes: str,
           ebpf: bool, no_setup: bool, dataset: str | None = None,
           host: str | None = None) -> None:
    """Record KVM guest-flush, shadow-page and guest-run events with BPF."""
    prefetch_host_facts()
    from kvmtrace.sources.live import LiveUnavailable, Recorder
    from kvmtrace.pipeline.session import stop_on_signals
    if output and dataset:
        raise click.UsageError("give one of -o/--output FILE and --dataset DIR")
    if host is not None and not dataset:
        raise click.UsageError("--host names the host in a dataset: use it with --dataset")
    if dataset and not ebpf:
        output = _dataset_recording(dataset, host)
    if not ebpf and not output:
        raise click.UsageError("-o/--output is required (or --dataset, or --ebpf)")
    if not ebpf:
        prepare_host(no_setup)
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            rec = Recorder(None if ebpf else output, tgids=tgids, probes=probes)
            if ebpf:
                click.echo(f"/* {rec.plan().exact_line()} */")
                click.echo(f"/* {rec.plan().transport_line()} */")
                if tgids:
                    click.echo(f"/* kt_tgid_filter (written before attaching): "
                               f"{', '.join(map(str, rec.tgids))} */")
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
    if dataset:
        _add_to_dataset(output, dataset, host)


def _dataset_recording(dataset: str, host: str | None) -> str:
    """The hidden file a --dataset recording goes to first (no reader of the dataset
    lists it): DIR/.record-<pid>-<random>.parquet."""
    import os
    import secrets
    from kvmtrace.sources.dataset import check_host_name
    if host is not None:
        check_host_name(host)
    try:
        os.makedirs(dataset, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"{dataset}: cannot create: {exc.strerror or exc}",
                                 param_hint="--dataset") from None
    return os.path.join(dataset, f".record-{os.getpid()}-{secrets.token_hex(4)}.parquet")


def _add_to_dataset(recording: str, dataset: str, host: str | None) -> None:
    """Split the finished recording into the dataset's (host, VM) parts, then remove it."""
    import os
    from kvmtrace.sources.dataset import write_dataset
    from kvmtrace.sources.stream import load
    trace = load(recording)
    if len(trace.events):
        try:
            parts = write_dataset(dataset, trace.events, trace.meta, host=host)
        except Exception:
            click.echo(f"kvmtrace: the recording stays in {recording}", err=True)
            raise
        for part in parts:
            click.echo(f"kvmtrace: added {part.events} events of VM {part.vm} to {part.path}",
                       err=True)
    else:
        click.echo(f"kvmtrace: no event recorded: nothing added to {dataset}", err=True)
    os.unlink(recording)


