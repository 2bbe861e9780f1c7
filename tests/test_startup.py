"""Start-up stays light: help and usage errors never import pandas, pyarrow, numpy or BCC.

(How long they take is measured in bench/startup_bench.py, not asserted here.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kvmtrace.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "pyarrow", "numpy", "bcc")

PROBE = """
import json, sys
from kvmtrace.cli import main
sys.argv = ["kvmtrace", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


def loaded_after(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], [], ["--version"], ["no-such-command"]])
def test_top_level_help_and_usage_errors_load_nothing_heavy(args):
    out = loaded_after(args)
    assert out["heavy"] == [], out
    assert out["code"] in (0, 2)


def test_a_command_that_runs_does_load_what_it_needs():
    """The probe itself can see a heavy import (so the test above could fail)."""
    out = loaded_after(["show", str(ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt")])
    assert out["code"] == 0 and "pandas" in out["heavy"]


def test_the_command_list_matches_each_commands_own_short_help():
    ctx = click.Context(cli)
    for name, short in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=10_000) == short, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_commands_help_and_usage_error_load_nothing_heavy(name):
    for args in ([name, "--help"], [name, "--no-such-option"]):
        out = loaded_after(args)
        assert out["heavy"] == [] and out["code"] in (0, 2), (args, out)
