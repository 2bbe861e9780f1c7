"""The `kvmtrace` command line.  Each command lives in kvmtrace/commands/<name>.py."""
from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

import click

from kvmtrace import __version__, exitcodes
from kvmtrace.errors import fail_line

# Each command lives in kvmtrace/commands/<name>.py and is imported only when it runs, so
# `kvmtrace --help` and usage errors never load pandas, pyarrow or BCC.  The one-line
# summary shown in the command list is kept here (tests/test_startup.py checks it matches).
COMMANDS: dict[str, str] = {
    "show": "Summarise TRACE: events by kind, VMs, vCPUs, time span, lost events, metadata.",
    "analyze": "Find guest TLB flushes completed before the shadow page tables were synced.",
    "convert": "Convert TRACE (native, ftrace, trace-cmd or perf text) to a native trace file.",
    "exercise": "Run a tiny built-in guest that remaps pages and requests guest TLB flushes, and check from inside it that the host honoured every flush.",
    "doctor": "Check everything live tracing needs: KVM backend, TDP/shadow paging, BCC, headers, tracefs, BPF tracepoint programs, kprobes, fentry, KVM functions and tracepoints; then the guest flush paths: which this host services (the built-in guest tries each once) and which kvmtrace sees and judges here.",
    "record": "Record KVM guest-flush, shadow-page and guest-run events with BPF.",
    "check": "Check that this host's KVM syncs shadow page tables on every guest TLB flush.",
    "watch": "Watch guest TLB flush windows live and report each violation as it happens.",
    "report": "Write an HTML report: verdict, windows over time, findings, latency, metadata.",
    "timeline": "Write a timeline of every flush window for Perfetto or chrome://tracing.",
    "fleet": "Analyse a dataset of many hosts' traces: a verdict per host, worst first.",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (see COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS) + [n for n in super().list_commands(ctx) if n not in COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module = importlib.import_module(f"kvmtrace.commands.{name}")
            self.add_command(getattr(module, name))
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))      # as click.Group does
        # A bare Command shortens the summary as click shortens a loaded command's help.
        rows = [(name, click.Command(name, help=COMMANDS[name]).get_short_help_str(limit))
                if name in COMMANDS and name not in self.commands
                else (name, self.commands[name].get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


EPILOG = """\b
Examples:
  kvmtrace analyze fixtures/lab_two_vcpu_flush.ftrace.txt   judge a recorded trace
  kvmtrace report trace.parquet -o report.html    the same, as one HTML page
  kvmtrace timeline trace.parquet -o t.json       every flush window, for Perfetto
  kvmtrace show trace.parquet                     what a trace holds
  kvmtrace convert /sys/kernel/tracing/trace -o t.parquet   text -> native file
  kvmtrace doctor                                 can this host be traced?
  kvmtrace record -o flushes.parquet -d 60        record all VMs for a minute
  kvmtrace exercise                               run the built-in flush guest
  kvmtrace check --exercise --json                post-fix verdict for this host
  kvmtrace watch -p 4242                          live table of one VM's flushes
  kvmtrace fleet fleet/ --engine duckdb           many hosts' traces, a verdict per host
\b
Exit codes: 0 ok/pass, 1 violation or stale read, 2 usage or bad input,
            3 inconclusive or suspect, 4 this host cannot do it.
"""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvmtrace")
def cli() -> None:
    """Find guest TLB flushes that KVM completes before syncing its shadow page tables."""


def _input_error(exc: Exception) -> bool:
    """A bad trace file or value (exit 2).  The classes are looked up only where their
    modules are loaded: an exception cannot come from a module that was never imported."""
    classes = [getattr(sys.modules.get(mod), name, None) for mod, name in
               (("kvmtrace.schema", "SchemaError"), ("kvmtrace.sources.native", "TraceFileError"),
                ("kvmtrace.pipeline.offline", "SelectionError"))]
    return isinstance(exc, tuple(c for c in classes if c is not None))


def main(argv: list[str] | None = None) -> None:
    # Arrow's system allocator: a first pass over a trace ran 35 % slower with mimalloc
    # (sources/native.use_system_memory_pool); set before pyarrow is ever imported.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        code = cli.main(args=argv, prog_name="kvmtrace", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exitcodes.BAD_INPUT
    except click.exceptions.Abort:
        click.echo("kvmtrace: interrupted", err=True)
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as exc:
        if not _input_error(exc):
            raise
        fail_line(str(exc))
        code = exitcodes.BAD_INPUT
    sys.exit(code or 0)


SLOW_EXIT_ENV = "KVMTRACE_SLOW_EXIT"


def console() -> None:
    """The ``kvmtrace`` console script and ``python -m kvmtrace``: main(), then a prompt exit.

    Why: once the report is printed, CPython's own shutdown (Py_FinalizeEx) still clears
    every module and runs the cyclic GC over the whole heap -- pandas, pyarrow, numpy, BCC
    and the recorder's buffers, a few hundred thousand objects -- and frees them one by one:
    110-130 ms of CPU here (perf: gc_collect_main, visit_decref, *_dealloc), after the last
    write and before exit_group, that the user waits for and nothing needs.  The kernel
    takes the whole address space back at exit in a few ms anyway.

    So, only here (never under main(argv), CliRunner or pytest): if no non-daemon thread is
    left (Python would join it, so the normal exit is kept), flush stdout and stderr, run the
    atexit handlers (tempfile finalizers, logging, multiprocessing, kvmtrace.phases), and end
    with os._exit.  Every file a command writes is closed (and fsynced, see
    sources/native.TraceWriter) before main() returns; BPF programs, perf events and the
    built-in guest's VM are released by their owners' close() before the report.
    KVMTRACE_SLOW_EXIT=1 keeps CPython's full shutdown (bench/check_bench.py compares).
    """
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:                                         # main() always exits; keep Python's rules
        code = 0
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if _other_threads() or os.environ.get(SLOW_EXIT_ENV):
        sys.exit(code)                            # Python joins the threads: its shutdown
    _exit_now(code)


def _other_threads() -> list[threading.Thread]:
    """Live non-daemon threads besides this one: the interpreter's shutdown would wait."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]


def _exit_now(code: int) -> None:
    code = _flush_stdio(code)
    atexit._run_exitfuncs()                       # what Py_FinalizeEx would run first
    code = _flush_stdio(code)                     # handlers may print
    os._exit(code & 0xFF)


def _flush_stdio(code: int) -> int:
    """Flush stdout and stderr; an output that cannot take the rest is an error (exit 120,
    as CPython's shutdown reports it), except a reader that went away (main() ignores it)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:
            _silence(stream)
        except (OSError, ValueError) as exc:
            _silence(stream)
            if stream is sys.stdout:
                try:
                    print(f"kvmtrace: cannot write the output: {exc}", file=sys.stderr, flush=True)
                except (OSError, ValueError):
                    pass
            code = code or 120
    return code


def _silence(stream) -> None:
    """Point a stream that failed at /dev/null, so no later flush raises again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass
