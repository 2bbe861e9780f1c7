"""deploy/prometheus: the alerting rules pass `promtool check rules` and their own
`promtool test rules` unit tests, the unit tests fail when a rule is broken, and every
expression reads only metrics kvmtrace check --prom writes (or node_exporter's own)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_support import DEPLOY, NODE_EXPORTER, emitted_metrics, metric_names

RULES = DEPLOY / "prometheus" / "kvmtrace-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "kvmtrace-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = ("promtool is not installed (Debian's prometheus package; "
               ".ci/install-deploy-tools.sh installs it)")
ALERTS = {"KvmtraceViolation", "KvmtraceCheckError", "KvmtraceCheckInconclusive",
          "KvmtraceCheckStale", "KvmtraceCheckMissing"}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_the_rules_name_each_alert_with_a_severity_and_a_summary() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    assert {r["alert"]: r["labels"]["severity"] for r in rules}["KvmtraceViolation"] == "critical"


def test_every_expression_reads_only_metrics_that_exist() -> None:
    known = emitted_metrics() | NODE_EXPORTER
    used = set()
    for r in _rules():
        names = metric_names(r["expr"])
        assert names, f"{r['alert']}: no metric found in {r['expr']!r}"
        assert names <= known, f"{r['alert']} reads {sorted(names - known)}, which nobody exports"
        used |= names
    assert "node_textfile_mtime_seconds" in used          # staleness from the collector


def test_the_name_parser_finds_what_it_must() -> None:
    assert metric_names('sum by (instance) (rate(a_b{x="y(z)"}[5m])) > on(i) group_left c'
                        ' unless count(d offset 1h) * 1e3 and time() - 3 * 3600') == \
        {"a_b", "c", "d"}
    assert metric_names('max(kvmtrace_x{instance=~"$instance"}) or vector(0)') == {"kvmtrace_x"}


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_check_rules_accepts_them() -> None:
    proc = _promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_unit_tests_pass() -> None:
    proc = _promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


BROKEN = {
    "violation on the wrong verdict": ('{verdict="fail"} == 1', '{verdict="pass"} == 1'),
    "error fires too early": ("for: 90m", "for: 30m"),
    "inconclusive never fires": ("for: 6h", "for: 8h"),
    "stale threshold in minutes": ("> 3 * 3600", "> 3 * 60"),
    "stale regex misses the base name": ('file=~"(.*/)?kvmtrace\\\\.prom"',
                                         'file=~".*/kvmtrace\\\\.prom"'),
    "missing fires for every host": ("unless on(instance, job)", "or on(instance, job)"),
}


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
@pytest.mark.parametrize("what", list(BROKEN))
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, what: str) -> None:
    old, new = BROKEN[what]
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert _promtool("check", "rules", RULES.name, cwd=tmp_path).returncode == 0
    proc = _promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr, proc.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_check_rules_rejects_a_bad_expression(tmp_path: Path) -> None:
    (tmp_path / RULES.name).write_text(
        RULES.read_text().replace('{verdict="fail"} == 1', '{verdict="fail"} == == 1'))
    assert _promtool("check", "rules", RULES.name, cwd=tmp_path).returncode != 0
