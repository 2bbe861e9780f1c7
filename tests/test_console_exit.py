"""cli.console (the `kvmtrace` script, `python -m kvmtrace`) ends with os._exit once stdio is
flushed and the atexit handlers ran; main(argv) keeps raising SystemExit (tests, CliRunner)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from kvmtrace import cli

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt"


class _Exited(Exception):
    def __init__(self, code: int):
        self.code = code


@pytest.fixture
def fake_exit(monkeypatch):
    """os._exit and atexit._run_exitfuncs replaced (pytest's own handlers must not run)."""
    calls: list[str] = []
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: calls.append("atexit"))

    def _exit(code: int):
        calls.append(f"exit {code}")
        raise _Exited(code)
    monkeypatch.setattr(cli.os, "_exit", _exit)
    monkeypatch.delenv(cli.SLOW_EXIT_ENV, raising=False)
    return calls


def _main_exiting(code):
    def main():
        print("report")
        sys.exit(code)
    return main


def test_console_runs_atexit_then_exits_with_the_code(monkeypatch, fake_exit):
    monkeypatch.setattr(cli, "main", _main_exiting(3))
    with pytest.raises(_Exited):
        cli.console()
    assert fake_exit == ["atexit", "exit 3"]


def test_console_keeps_the_normal_exit_while_a_thread_runs(monkeypatch, fake_exit):
    monkeypatch.setattr(cli, "main", _main_exiting(1))
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    try:
        with pytest.raises(SystemExit) as exc:
            cli.console()
    finally:
        release.set()
        worker.join()
    assert exc.value.code == 1 and fake_exit == []      # Python joins the thread


def test_main_with_argv_still_raises_systemexit(fake_exit, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["show", "/nonexistent/trace.parquet"])
    assert exc.value.code == 2 and fake_exit == []


def test_script_and_module_enter_through_console():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kvmtrace"] == "kvmtrace.cli:console"
    assert "console()" in (ROOT / "kvmtrace" / "__main__.py").read_text()


def _run(args, slow: bool, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(cli.SLOW_EXIT_ENV, None)
    if slow:
        env[cli.SLOW_EXIT_ENV] = "1"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "kvmtrace", *args], capture_output=True,
                          env=env, cwd=ROOT, timeout=120, **kw)


@pytest.mark.parametrize("args", [["analyze", "--json", str(FIXTURE)], ["show", "/nonexistent.parquet"]])
def test_fast_exit_prints_and_exits_as_the_full_shutdown(args):
    fast, slow = _run(args, slow=False), _run(args, slow=True)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)
    assert fast.stdout or fast.stderr


def test_atexit_handlers_run_before_the_fast_exit(tmp_path):
    marks = tmp_path / "marks.json"
    proc = _run(["check", "--replay", str(FIXTURE)], slow=False,
                env_extra={"KVMTRACE_PHASES": str(marks)})
    assert proc.returncode in (0, 3), proc.stderr
    assert json.loads(marks.read_text())["marks"][-1][0] == "end"     # phases' atexit dump


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".jsonl.gz"])
def test_converted_file_is_whole_after_the_fast_exit(tmp_path, suffix):
    out = tmp_path / f"t{suffix}"
    proc = _run(["convert", str(FIXTURE), "-o", str(out)], slow=False)
    assert proc.returncode == 0, proc.stderr
    if suffix == ".jsonl.gz":
        assert gzip.decompress(out.read_bytes()).decode().splitlines()[-1].startswith('{"kvmtrace_end"')
    check = _run(["show", "--json", str(out)], slow=False)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["recovery"] is None and check.stderr == b""


def test_a_reader_that_goes_away_is_no_error():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(f"{sys.executable} -m kvmtrace analyze --json {FIXTURE} | head -c 1",
                          shell=True, capture_output=True, env=env, cwd=ROOT, timeout=120)
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".jsonl.gz"])
def test_trace_writer_close_leaves_nothing_to_the_garbage_collector(tmp_path, monkeypatch, suffix):
    """After close() the file is whole on disk (fsynced, its directory too) while the
    writer object still lives: nothing waits in a buffer for a finalizer os._exit skips."""
    from kvmtrace.schema import TraceMeta
    from kvmtrace.sources import native
    from kvmtrace.sources.stream import load
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(native.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    out = tmp_path / f"w{suffix}"
    events = load(FIXTURE).events
    writer = native.TraceWriter(out, TraceMeta(source="recorded"))
    writer.write(events)
    writer.close()
    assert len(synced) >= 2                                  # the file, then its directory
    if suffix == ".jsonl.gz":
        gzip.decompress(out.read_bytes())                    # the CRC trailer is there
    back = load(out)
    assert back.recovery is None and len(back.events) == len(events)
    del writer
