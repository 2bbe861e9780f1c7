"""One CLI vocabulary: -p/--pid TGID (alias --vm) and --vcpu N wherever events are read,
readable metavars, and doctor telling "absent" from "not readable without root"."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from kvmtrace.cli import cli
from kvmtrace.sources.stream import load

from cli_support import FIXTURES, run_main

REAL = FIXTURES / "real" / "exercise_2vcpu.parquet"
REAL_TGID = 17316


def _help(name: str) -> str:
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("name", ["analyze", "show", "convert", "report", "timeline"])
def test_commands_reading_a_trace_take_pid_vm_and_vcpu(name):
    text = _help(name)
    assert "-p, --pid, --vm TGID" in text and "--vcpu N" in text


def test_no_help_shows_a_raw_type_name_as_metavar():
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        text = _help(name)
        assert "FLOAT RANGE" not in text and "INTEGER RANGE" not in text, name


@pytest.mark.parametrize("flag", ["-p", "--pid", "--vm"])
def test_a_vm_that_is_not_in_the_trace_is_one_line_naming_the_vms(flag, capsys):
    code, out, err = run_main(["show", flag, "12345", str(REAL)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"kvmtrace: no VM 12345 in {REAL}; VMs: {REAL_TGID}"


def test_a_vcpu_that_is_not_in_the_trace_names_the_vcpus(capsys):
    code, _, err = run_main(["show", "--vcpu", "7", str(REAL)], capsys)
    assert code == 2 and err.strip() == f"kvmtrace: no vCPU 7 in {REAL}; vCPUs: 0, 1"


def test_convert_keeps_only_the_selected_vcpus_threads(tmp_path, capsys):
    whole = load(REAL).events
    out = tmp_path / "vcpu1.parquet"
    code, _, _ = run_main(["convert", "-p", str(REAL_TGID), "--vcpu", "1", str(REAL),
                           "-o", str(out)], capsys)
    assert code == 0
    part = load(out).events
    tids = set(whole.loc[whole["vcpu"] == 1, "tid"])
    assert 0 < len(part) < len(whole)
    assert set(part["tid"]) <= tids
    assert set(part.loc[part["vcpu"] >= 0, "vcpu"]) == {1}
    # Shadow-page events of vCPU 1's threads come along (they carry no vCPU id).
    assert (part["vcpu"] == -1).any()


def test_doctor_says_not_readable_rather_than_absent(monkeypatch):
    from kvmtrace.host.tracefs import Tracefs
    from kvmtrace.sources.live import doctor
    monkeypatch.setattr(Tracefs, "access_problem", lambda self: "Permission denied")
    monkeypatch.setattr(Tracefs, "format", lambda self, s, e: None)
    monkeypatch.setattr(Tracefs, "exists", lambda self, s, e: False)
    d = doctor.diagnose()
    check = next(c for c in d.checks if c.name == "kvm-tracepoints")
    assert check.status == "missing" and "not readable without root" in check.detail
    assert all(i["present"] is None for i in check.items)
    lines = doctor.render(d).splitlines()
    start = next(i for i, line in enumerate(lines) if "kvm-tracepoints" in line)
    names = [i["name"] for i in check.items]
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(("[", "=>")))
    item_lines = [line for line in lines[start + 1:end] if any(f" {n} " in line for n in names)]
    assert len(item_lines) >= len(names)
    assert all(line.rstrip().endswith("not readable without root") for line in item_lines), item_lines


@pytest.mark.parametrize("name", ["report", "timeline"])
def test_report_and_timeline_refuse_a_vm_that_is_not_in_the_trace(name, tmp_path, capsys):
    code, _, err = run_main([name, "-p", "12345", str(REAL), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and err.strip() == f"kvmtrace: no VM 12345 in {REAL}; VMs: {REAL_TGID}"
