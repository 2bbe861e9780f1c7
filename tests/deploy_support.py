"""What the deploy/ tests share: the metric names `kvmtrace check --prom` really emits, the
node_exporter metrics the rules and dashboard may use besides, and the metric names a
PromQL expression reads."""
from __future__ import annotations

import re
from pathlib import Path

from prom_lint import samples

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
# node_exporter's textfile collector adds these for every directory/file it reads.
NODE_EXPORTER = {"node_textfile_mtime_seconds", "node_textfile_scrape_error"}
NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
               "or", "unless", "offset", "inf", "nan", "Inf", "NaN"}
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]{0,100}\}|\$\w+|\[\[\w+\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)"
                     r"(?![\w:])")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def emitted_metrics() -> set[str]:
    """Every metric name render_metrics writes, over all its shapes (judged, with the
    built-in guest's figures, error)."""
    from kvmtrace.outputs.prom import VERDICTS, Measured, render_metrics
    names: set[str] = set()
    for verdict in VERDICTS:
        text = render_metrics(verdict, {"ok": 1}, 0, 1.0, reason="r", exit_code=0,
                              measured=Measured(guest_flushes_requested=1))
        names |= {name for name, _ in samples(text)}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names in
    by/on lists, label matchers, strings, numbers and Grafana variables left out)."""
    s = _STRING.sub('""', expr)
    s = _GRAFANA_VAR.sub("1", s)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _LABEL_LIST.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        after = s[m.end():].lstrip()
        if after.startswith("(") or m.group() in NOT_METRICS:
            continue                    # a function or aggregation, or a keyword
        names.add(m.group())
    return names
