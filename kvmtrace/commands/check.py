"""kvmtrace check: one command, one verdict, one exit code -- is this host safe now?"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import click

from kvmtrace import exitcodes, phases
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import (StatusLine, no_setup_option, prefetch_host_facts, prepare_host,
                                       warn_absent_tgids)
from kvmtrace.commands.writing import check_output_dir, report_option, write_session_report

EPILOG = """\b
Verdicts and exit codes:
  pass          0  enough meaningful flush windows, KVM synced in every one
  not-exposed   0  TDP (EPT/NPT) is on and no VM runs on the shadow MMU
  fail          1  a flush let a vCPU run before its shadow pages were synced,
                   or the built-in guest read a stale value after a flush
  inconclusive  3  too few meaningful windows, lost events, or only suspect ones
  (cannot trace) 4 no root, BCC, headers, tracefs or KVM: the message says what to do
\b
Examples:
  sudo kvmtrace check --exercise                 # seconds; proves the flush path
  sudo kvmtrace check -d 60 -p 4242              # watch one VM for a minute
  sudo kvmtrace check --exercise --json --prom /var/lib/node_exporter/kvmtrace.prom
  kvmtrace check --replay trace.parquet          # judge a recorded trace the same way
  sudo kvmtrace check --exercise --report check.html   # and an HTML page of what it saw
"""


@click.command(epilog=EPILOG)
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), default=30.0,
              metavar="SECONDS",
              show_default=True, help="Trace for at most this many seconds.")
@click.option("-p", "--pid", "tgids", multiple=True, type=click.IntRange(1, 2**22 - 1),
              metavar="TGID", help="Trace only this VM process (repeatable). With --exercise "
              "the built-in guest is traced as well.")
@click.option("--exercise", is_flag=True, help="Run the built-in guest meanwhile (it requests "
              "guest TLB flushes with unsync shadow pages) and stop once there is enough evidence.")
@click.option("--min-windows", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Meaningful flush windows needed for a pass.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--prom", "prom_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write node_exporter textfile-collector metrics to FILE (atomically).")
@click.option("--replay", "replay", metavar="TRACE",
              help="Judge a recorded trace instead of tracing live (same online analysis).")
@report_option
@no_setup_option
def check(duration: float, tgids: tuple[int, ...], exercise: bool, min_windows: int,
          as_json: bool, prom_file: str | None, replay: str | None,
          report_file: str | None, no_setup: bool) -> None:
    """Check that this host's KVM syncs shadow page tables on every guest TLB flush.

    Traces KVM live (BPF on its tracepoints) and replays the events through the same
    shadow-MMU model as `kvmtrace analyze` while they arrive.  A check that saw no
    meaningful flush window never passes: use --exercise to make one happen.
    With --prom, every run rewrites FILE: a run that cannot judge (exit 2 or 4) exports
    kvmtrace_check_verdict{verdict="error"} and its reason, never the last run's verdict.
    """
    if prom_file:
        _check_prom_dir(prom_file)
    try:
        _check(duration, tgids, exercise, min_windows, as_json, prom_file, replay, report_file,
               no_setup)
    except click.exceptions.Exit as exc:
        if prom_file and exc.exit_code not in (0, 1, 3):
            _write_prom_error(prom_file, _FAILURE[0] or "the check could not run", exc.exit_code)
        raise
    except BaseException as exc:
        if prom_file:
            code = 130 if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)) else exitcodes.BAD_INPUT
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _write_prom_error(prom_file, why if code != 130 else "interrupted", code)
        raise


_FAILURE: list[str] = [""]        # why the run could not judge (the line fail_line printed)


def _fail(message: str, code: int) -> None:
    _FAILURE[0] = message
    fail_line(message)
    raise click.exceptions.Exit(code)


def _check(duration: float, tgids: tuple[int, ...], exercise: bool, min_windows: int,
           as_json: bool, prom_file: str | None, replay: str | None,
           report_file: str | None, no_setup: bool) -> None:
    prefetch_host_facts(live=not replay)
    from kvmtrace.pipeline.check import CheckConfig, run_check
    from kvmtrace.sources.live import LiveUnavailable
    from kvmtrace.pipeline.session import stop_on_signals
    _FAILURE[0] = ""
    if replay and (exercise or tgids):
        raise click.UsageError("--replay judges a recorded trace: it takes no --exercise or -p")
    collector = None
    if report_file:
        from kvmtrace.pipeline.visual import Collector
        check_output_dir(report_file, "--report")
        collector = Collector(replay or "live")
    tty = sys.stderr.isatty() and not as_json
    cfg = CheckConfig(duration=duration, min_windows=min_windows, exercise=exercise,
                      other_vms=bool(tgids) or not exercise,
                      status=StatusLine() if tty else None, replay_listener=collector)
    phases.mark("setup")
    if exercise:
        _exercise_possible()
    warn_absent_tgids(tgids, "tracing")
    if not replay:
        prepare_host(no_setup)
    phases.mark("imports")
    source = _source(replay, tgids, exercise)
    stop = threading.Event()
    if cfg.status is not None and not replay:
        cfg.status("check: compiling and attaching the probes ...")
    try:
        with stop_on_signals(stop):
            report = run_check(source, cfg, stop)
    except LiveUnavailable as exc:
        _fail(f"check: cannot trace here: {exc}", exitcodes.ENVIRONMENT)
    finally:
        if cfg.status is not None:
            cfg.status.clear()
    for note in report.info.notes:
        if note.startswith("recovered"):     # a killed recorder's FILE.part was read
            click.echo(f"kvmtrace: warning: {replay}: {note}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report))
    if prom_file:
        _write_prom(prom_file, report)
    if report_file:
        write_session_report(report_file, report.result, collector, {
            "command": "kvmtrace check", "verdict": report.verdict,
            "reasons": report.check.reasons + [f"next: {s}" for s in report.check.next_steps]})
    phases.mark("exit")
    raise click.exceptions.Exit(report.exit_code)


def _source(replay: str | None, tgids: tuple[int, ...], exercise: bool):
    from kvmtrace.sources.chunks import FileSource, LiveSource
    if replay:
        return FileSource(replay)
    traced = set(tgids)
    if exercise:
        traced.add(os.getpid())          # the built-in guest runs in this process
    return LiveSource(tgids=sorted(traced))


def _exercise_possible() -> None:
    from kvmtrace.exercise import unavailable_reason
    reason = unavailable_reason()
    if reason:
        _fail(f"check: cannot run the built-in guest here: {reason}", exitcodes.ENVIRONMENT)


def _check_prom_dir(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"{path}: directory {parent} does not exist",
                                 param_hint="--prom")


def _write_prom(path: str, report) -> None:
    from kvmtrace.outputs.prom import Measured, render_metrics
    d = report.to_dict()
    reason = d["reasons"][0] if d.get("reasons") else ""
    ex = report.exercise or {}
    measured = Measured(events=report.result.events,
                        # what the verdict counted (pipeline.check.evidence): the larger tally
                        lost_events=max(report.result.lost_events, report.snapshot.lost_events),
                        duration_seconds=report.duration_s,
                        guest_flushes_requested=ex.get("flushes_requested"))
    _write_prom_text(path, render_metrics(report.verdict, report.windows(), report.stale_reads,
                                          time.time(), reason=reason,
                                          exit_code=report.exit_code, measured=measured))


def _write_prom_error(path: str, reason: str, code: int) -> None:
    """The run could not judge: the file says so (verdict "error"), never stays stale."""
    from kvmtrace.outputs.prom import render_metrics
    try:
        _write_prom_text(path, render_metrics("error", {}, 0, time.time(), reason=reason,
                                              exit_code=code))
    except click.exceptions.Exit:
        pass                      # already said why; keep the run's own exit code


def _write_prom_text(path: str, text: str) -> None:
    from kvmtrace.outputs.prom import write_atomically
    try:
        write_atomically(path, text)
    except OSError as exc:
        fail_line(f"check: cannot write {path}: {exc.strerror or exc}")
        raise click.exceptions.Exit(exitcodes.BAD_INPUT)


def _tdp_word(tdp) -> str:
    return {True: "on", False: "off (guests run on the shadow MMU)", None: "unknown"}[tdp]


def render(report) -> str:
    d = report.to_dict()
    w = d["windows"]
    host = d["host"]
    lines = [f"kvmtrace check: {d['verdict'].upper()}"]
    lines += [f"  - {r}" for r in d["reasons"]]
    lines += [f"  next: {s}" for s in d["next_steps"]]
    lines.append("")
    lines.append(f"  host      kernel {host['kernel'] or '?'}, backend {host['backend'] or '?'}, "
                 f"TDP {_tdp_word(host['tdp'])}")
    src = "live" if d["source"] == "live" else f"replay of {d['source']}"
    traced = (", VMs " + " ".join(map(str, d["traced_tgids"]))) if d["traced_tgids"] else ", all VMs"
    lines.append(f"  traced    {d['duration_s']:.1f} s {src}{traced if d['source'] == 'live' else ''}: "
                 f"{d['events']} events, {d['lost_events']} lost")
    probes = d["probes"]
    if d["source"] == "live":
        lines.append(f"  probes    {len(probes['attached'])} attached, "
                     f"{len(probes['not_attached'])} not attached (kvmtrace doctor says why)")
    else:
        lines.append(f"  probes    {len(probes['attached'])} in the trace's metadata")
    lines.append(f"  windows   {w['total']} closed, {w['meaningful']} meaningful "
                 f"({w['meaningful_ok']} ok, {d['min_windows']} needed); {w['ok']} ok, "
                 f"{w['violation']} violation, {w['suspect']} suspect, {w['inconclusive']} "
                 f"inconclusive, {w['open']} open")
    e = d["evidence"]
    lines.append(f"  evidence  {e['exact']} exact (KVM's own root state), {e['inferred']} "
                 f"inferred (the event stream), {e['none']} none")
    lines.append(f"  pattern   {d['pattern']}")
    ex = d.get("exercise")
    if ex is not None:
        if ex.get("finished"):
            lines.append(f"  guest     {ex['rounds']} rounds, {ex['flushes_requested']} flushes "
                         f"requested, {ex['reads']} reads, {ex['stale_read_count']} stale, "
                         f"{ex['duration_s']:.2f} s")
        else:
            lines.append(f"  guest     stopped after {ex['rounds_done']}/{ex['rounds']} rounds: {ex['error']}")
    return "\n".join(lines)
