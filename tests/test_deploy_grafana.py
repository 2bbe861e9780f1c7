"""deploy/grafana/kvmtrace.json: a Grafana dashboard whose every PromQL expression reads
only metrics kvmtrace check --prom writes (or node_exporter's file mtime), parses as
PromQL (promtool), and whose verdict panel names every verdict prom.py can export."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_support import DEPLOY, NODE_EXPORTER, emitted_metrics, metric_names

DASHBOARD = DEPLOY / "grafana" / "kvmtrace.json"
PROMTOOL = shutil.which("promtool")
PANEL_TYPES = {"stat", "state-timeline", "table", "timeseries", "bargauge", "gauge"}
LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _exprs(d: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]


def test_it_has_the_shape_grafana_imports() -> None:
    d = _dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and ids
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["x"] + g["w"] <= 24
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "instance"]


def test_every_expression_reads_only_metrics_prom_py_writes() -> None:
    d = _dashboard()
    known = emitted_metrics() | NODE_EXPORTER
    used = set()
    for title, expr in _exprs(d):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: {sorted(names - known)} is exported by nobody"
        used |= names
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            m = LABEL_VALUES.fullmatch(var["query"]["query"])
            assert m and m.group(1) in known, var["query"]
    # what the dashboard is for: verdicts, hosts in violation, check age, windows, losses
    assert {"kvmtrace_check_verdict", "node_textfile_mtime_seconds", "kvmtrace_check_windows",
            "kvmtrace_check_lost_events", "kvmtrace_check_guest_flushes_requested"} <= used


def test_the_verdict_panel_names_every_verdict() -> None:
    from kvmtrace.outputs.prom import VERDICTS
    (panel,) = [p for p in _dashboard()["panels"] if p["type"] == "state-timeline"]
    texts = {o["text"] for m in panel["fieldConfig"]["defaults"]["mappings"]
             for o in m["options"].values()}
    assert texts == set(VERDICTS)
    (expr,) = [t["expr"] for t in panel["targets"]]
    coded = set(re.findall(r'verdict="([a-z-]+)"', expr))
    assert coded == set(VERDICTS) - {"pass"}          # pass is 0: none of the others


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                    "(.ci/install-deploy-tools.sh installs it)")
def test_every_expression_is_promql(tmp_path: Path) -> None:
    """promtool has no expression checker of its own: each expression becomes a recording
    rule, which `promtool check rules` parses."""
    def rules(exprs: list[str]) -> Path:
        path = tmp_path / "dash.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:expr{i}", "expr": e.replace("$instance", ".*")}
            for i, e in enumerate(exprs)]}]}))
        return path
    exprs = [e for _, e in _exprs(_dashboard())]
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(rules(exprs))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = subprocess.run([str(PROMTOOL), "check", "rules", str(rules(exprs + ["max by (x"]))],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
