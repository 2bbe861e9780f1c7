"""kvmtrace exercise: run the built-in guest that reproduces the flush-before-sync scenario."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time

import click

from kvmtrace import exitcodes
from kvmtrace.errors import fail_line
from kvmtrace.commands.options import no_setup_option, prepare_host
from kvmtrace.exercise import (ExerciseConfig, ExerciseError, ExerciseResult, ExerciseUnavailable,
                        run_exercise)

# kvmtrace.exercise.flushvia.CHOICES, spelt out so that --help imports no numpy/pandas
# (tests/test_flushvia.py checks they agree).
FLUSH_VIA_CHOICES = ("steal-time", "pvm-hypercall", "pvm-load-pgtbl", "cr3", "cr4-pge",
                     "invpcid", "invlpg", "hyperv", "all")

STALE_SHOWN = 10
JSON_STALE_LIMIT = 1000

EPILOG = """\b
vCPU 0 rewrites PTEs in the other vCPUs' last-level page tables while they are parked
outside the guest and sets their steal-time KVM_VCPU_FLUSH_TLB bit, as a Linux guest's
kvm_flush_tlb_multi() does for preempted vCPUs; each then re-enters and reads the
remapped addresses.  A stale value after the flush is a functional failure of the host.
--no-flush is the control: no flush is requested, so stale values are expected.
--address-spaces N gives each reader N page-table trees and switches between them with
a CR3 load at the start of each pass: KVM serves later switches from its cached
prev_roots; even tables are shared by all trees (shadow pages with several parents);
where KVM offers PCIDs every other switch sets the CR3 no-flush bit.
--flush-via picks the guest's flush path (kvmtrace/analysis/flushpaths.py): steal-time
(the default), or each reader flushing by itself before it reads: pvm-hypercall,
pvm-load-pgtbl, cr3 (same CR3, no PCID no-flush bit), cr4-pge (toggle CR4.PGE), invpcid,
invlpg (each remapped address), hyperv.
\b
Examples:
  kvmtrace exercise
  kvmtrace exercise --vcpus 4 --rounds 2000 --pages 8
  kvmtrace exercise --no-flush
  kvmtrace exercise --vcpus 4 --rounds 1000 --record run.parquet
  kvmtrace exercise --vcpus 3 --address-spaces 3 --record multi.parquet
  kvmtrace exercise --flush-via cr3
  kvmtrace exercise --flush-via all --record all.parquet
\b
Exit codes: 0 pass (or: the control saw stale values), 1 stale read after a flush,
            3 the control saw no staleness, 4 this host cannot run it.
"""


def _spaces_line(result) -> list[str]:
    ex = result.extra
    if ex.get("address_spaces", 1) <= 1:
        return []
    pcid = (f"{ex.get('cr3_noflush_loads', 0)} with the PCID no-flush bit" if ex.get("pcid")
            else "no PCID offered by this backend, so no no-flush loads")
    return [f"  address spaces     {ex['address_spaces']} per vCPU; {ex.get('cr3_loads', 0)} CR3 "
            f"loads ({pcid})"]


class _ProgressBar:
    """A one-line bar on a terminal's stderr, redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        filled = self.WIDTH * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} rounds")
        if done == total:
            sys.stderr.write("\r" + " " * (self.WIDTH + 30) + "\r")
        sys.stderr.flush()


def verdict(result: ExerciseResult) -> tuple[str, int]:
    """(verdict word, exit code) of a finished run."""
    if result.flush:
        return ("fail", exitcodes.VIOLATION) if result.stale_reads else ("pass", exitcodes.OK)
    if result.stale_reads:
        return "control-ok", exitcodes.OK
    return "control-saw-nothing", exitcodes.INCONCLUSIVE


def _exposure(result: ExerciseResult) -> str:
    tdp = {True: "on", False: "off", None: "unknown"}[result.tdp]
    if result.exposed:
        return f"{result.backend}, TDP {tdp}: exposed (guests run on the shadow MMU)"
    return f"{result.backend}, TDP {tdp}: not exposed (no shadow MMU to sync)"


def render(result: ExerciseResult, word: str) -> str:
    rate = result.rounds / result.duration_s if result.duration_s > 0 else float("inf")
    lines = {
        "pass": "PASS: every read after a flush saw the new translation",
        "fail": f"FAIL: {len(result.stale_reads)} stale read(s): the host let the guest use "
                "stale translations after a guest TLB flush",
        "control-ok": f"control ok: {len(result.stale_reads)} stale read(s) without a flush "
                      "(the harness detects stale translations)",
        "control-saw-nothing": "control saw NO stale read without a flush: this run cannot "
                               "show that the harness detects staleness",
    }
    out = [f"kvmtrace exercise: {lines[word]}",
           f"  rounds             {result.rounds} ({result.pages} pages/round, "
           f"{result.vcpus} vCPUs, seed {result.seed}{'' if result.flush else ', --no-flush'})",
           f"  flushes requested  {result.flushes_requested}" + _by_path(result),
           *_spaces_line(result),
           f"  reads checked      {result.reads}",
           f"  stale reads        {len(result.stale_reads)}",
           f"  time               {result.duration_s:.3f} s ({rate:.0f} rounds/s)",
           f"  host               {_exposure(result)}"]
    for path, why in result.extra.get("flush_via", {}).get("skipped", {}).items():
        out.append(f"  not used           {path}: {why}")
    if result.flush:
        for s in result.stale_reads[:STALE_SHOWN]:
            out.append(f"  stale read: vCPU {s.vcpu} round {s.round} address {s.address:#x} "
                       f"expected {s.expected:#x} observed {s.observed:#x} "
                       f"({'after the flush' if s.after_flush else 'at round start'})")
        if len(result.stale_reads) > STALE_SHOWN:
            out.append(f"  ... and {len(result.stale_reads) - STALE_SHOWN} more (--json lists them)")
    return "\n".join(out)


def _parse_flush_via(value: str) -> tuple[str, ...]:
    from kvmtrace.exercise.flushvia import parse
    return parse(value)


def _by_path(result: ExerciseResult) -> str:
    by = result.extra.get("flush_via", {}).get("requested_by_path", {})
    if not by or list(by) == ["steal-time"]:
        return ""
    return " (" + ", ".join(f"{p} {n}" for p, n in by.items()) + ")"


def to_json(result: ExerciseResult, word: str, code: int, recording=None) -> str:
    out = result.to_dict()
    if recording is not None:
        out["recording"] = {"path": recording.path, "events": recording.events,
                            "lost": recording.lost, "probes": recording.probes}
    out["stale_reads"] = out["stale_reads"][:JSON_STALE_LIMIT]
    out["stale_reads_truncated"] = len(result.stale_reads) > JSON_STALE_LIMIT
    out["verdict"], out["exit_code"] = word, code
    return json.dumps(out, indent=2)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _sigterm_interrupts() -> None:
    """SIGTERM stops the run like Ctrl-C: the vCPU threads park and the VM is torn down."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


@click.command(epilog=EPILOG)
@click.option("--vcpus", metavar="N", default=2, show_default=True, type=click.IntRange(2, 64),
              help="vCPUs: one writer, the rest readers.")
@click.option("--rounds", metavar="N", default=300, show_default=True, type=click.IntRange(1, None),
              help="Remap-and-flush rounds.")
@click.option("--pages", metavar="N", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Addresses remapped per round, each in its own last-level page table.")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seed for which tables and pages each round uses.")
@click.option("--address-spaces", "address_spaces", metavar="N", default=1, show_default=True,
              type=click.IntRange(1, 16),
              help="Page-table trees per vCPU, switched by CR3 loads between passes.")
@click.option("--no-flush", "no_flush", is_flag=True,
              help="The control: request no flush; stale reads are expected.")
@click.option("--flush-via", "flush_via", default="steal-time", show_default=True,
              type=click.Choice(FLUSH_VIA_CHOICES),
              help="How the guest asks for each flush; 'all' rotates through every path this "
                   "host services and kvmtrace can judge.  A path the host cannot service "
                   "exits 4 with the reason.")
@click.option("--record", "record_to", type=click.Path(dir_okay=False), metavar="FILE",
              help="Record the run with the live recorder (BPF) into FILE (.parquet, .jsonl[.gz]).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@no_setup_option
def exercise(vcpus: int, rounds: int, pages: int, seed: int, address_spaces: int,
             no_flush: bool, flush_via: str, record_to: str | None, as_json: bool,
             no_setup: bool) -> None:
    """Run a tiny built-in guest that remaps pages and requests guest TLB flushes, and
    check from inside it that the host honoured every flush."""
    progress = _ProgressBar() if sys.stderr.isatty() and not as_json else None
    config = ExerciseConfig(vcpus=vcpus, rounds=rounds, pages=pages, seed=seed,
                            flush=not no_flush, progress=progress,
                            address_spaces=address_spaces,
                            flush_via=_parse_flush_via(flush_via))
    try:
        config.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _sigterm_interrupts()
    recording = None
    try:
        if record_to:
            prepare_host(no_setup)
            result, recording = _run_recorded(config, record_to)
        else:
            result = run_exercise(config)
    except ExerciseUnavailable as exc:
        fail_line(f"exercise: cannot run here: {exc}")
        raise click.exceptions.Exit(exitcodes.ENVIRONMENT)
    except ExerciseError as exc:
        fail_line(f"exercise: the guest stopped unexpectedly: {exc}")
        raise click.exceptions.Exit(exitcodes.ENVIRONMENT)
    word, code = verdict(result)
    if as_json:
        click.echo(to_json(result, word, code, recording))
    else:
        click.echo(render(result, word))
        if recording is not None:
            click.echo(f"  recorded           {recording.events} events to {recording.path} "
                       f"({recording.lost} lost)")
    raise click.exceptions.Exit(code)


def _run_recorded(config: ExerciseConfig, output: str):
    """The exercise under the live recorder; a recorder that cannot attach exits 4."""
    from kvmtrace.exercise.recording import run_recorded
    from kvmtrace.sources.live import LiveUnavailable
    from kvmtrace.exercise import unavailable_reason
    reason = unavailable_reason()          # before spending seconds compiling BPF
    if reason:
        raise ExerciseUnavailable(reason)
    from kvmtrace.exercise import resolve_flush_via
    config, via_info = resolve_flush_via(config)   # its probe guests stay out of the file
    try:
        return run_recorded(config, output, via_info=via_info)
    except LiveUnavailable as exc:
        fail_line(f"exercise: cannot record here: {exc}")
        raise click.exceptions.Exit(exitcodes.ENVIRONMENT)
