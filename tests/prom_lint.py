"""A strict checker of node_exporter textfile-collector files (what tests hold --prom to).

The Prometheus text format (exposition_formats.md, "Text-based format") plus the textfile
collector's own rules, checked line by line where ``prometheus_client``'s parser is lenient
(it accepts samples with timestamps, families without TYPE, split families):

- each line is ``# HELP name text``, ``# TYPE name type`` or a sample; the file ends in
  a newline and has no blank lines;
- a family's HELP and TYPE come once, before its first sample; its samples are contiguous;
- metric and label names are valid, every metric has the required prefix;
- label values are quoted with only ``\\\\``, ``\\"`` and ``\\n`` escapes; no series twice;
- a sample value is a float, with no timestamp after it (the collector rejects those);
- names carry base units: no ``_ms``/``_milliseconds``/``_bytes_kb`` style suffixes, and
  ``_total`` only on counters.

``lint(text, prefix)`` returns the problems as "line N: what" strings (empty: clean);
``samples(text)`` the parsed samples.
"""
from __future__ import annotations

import math
import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
NON_BASE_UNITS = ("_ms", "_milliseconds", "_microseconds", "_us", "_ns", "_nanoseconds",
                  "_minutes", "_hours", "_days", "_kb", "_kilobytes", "_mb", "_megabytes",
                  "_percent")
MAX_LINE = 4096


class LintError(ValueError):
    pass


def _labels(text: str, pos: int) -> tuple[list[tuple[str, str]], int]:
    """Parse ``{a="x",b="y"}`` from text[pos] == "{"; return the pairs and the end index."""
    pairs: list[tuple[str, str]] = []
    pos += 1
    while True:
        if pos < len(text) and text[pos] == "}":
            return pairs, pos + 1
        m = LABEL.match(text, pos)
        if not m:
            raise LintError(f"bad label name at column {pos + 1}")
        name, pos = m.group(), m.end()
        if text[pos:pos + 2] != '="':
            raise LintError(f"label {name}: expected =\" at column {pos + 1}")
        pos += 2
        value = []
        while True:
            if pos >= len(text):
                raise LintError(f"label {name}: unterminated value")
            c = text[pos]
            if c == "\\":
                nxt = text[pos + 1:pos + 2]
                if nxt not in ("\\", '"', "n"):
                    raise LintError(f"label {name}: bad escape \\{nxt}")
                value.append("\n" if nxt == "n" else nxt)
                pos += 2
            elif c == '"':
                pos += 1
                break
            else:
                value.append(c)
                pos += 1
        pairs.append((name, "".join(value)))
        if text[pos:pos + 1] == ",":
            pos += 1
        elif text[pos:pos + 1] != "}":
            raise LintError(f"label {name}: expected , or }} at column {pos + 1}")


def _sample(line: str) -> tuple[str, tuple, float]:
    m = NAME.match(line)
    if not m:
        raise LintError("a sample must start with a metric name")
    name, pos = m.group(), m.end()
    labels: list[tuple[str, str]] = []
    if line[pos:pos + 1] == "{":
        labels, pos = _labels(line, pos)
    if line[pos:pos + 1] != " ":
        raise LintError("expected one space before the value")
    fields = line[pos + 1:].split(" ")
    if len(fields) != 1:
        raise LintError("a timestamp (or more than one value) after the sample: the "
                        "textfile collector rejects client-side timestamps")
    try:
        value = float(fields[0])
    except ValueError:
        raise LintError(f"value {fields[0]!r} is not a number") from None
    if math.isnan(value) and fields[0] != "NaN":
        raise LintError(f"NaN must be spelled NaN, not {fields[0]!r}")
    names = [k for k, _ in labels]
    if len(set(names)) != len(names):
        raise LintError(f"a label appears twice in {names}")
    return name, tuple(sorted(labels)), value


def _check_name(name: str, prefix: str, mtype: str) -> None:
    if not NAME.fullmatch(name):
        raise LintError(f"invalid metric name {name!r}")
    if not name.startswith(prefix):
        raise LintError(f"{name} lacks the {prefix} prefix")
    for suffix in NON_BASE_UNITS:
        if name.endswith(suffix) or f"{suffix}_" in name:
            raise LintError(f"{name}: not a base unit ({suffix}); use seconds or bytes")
    if name.endswith("_total") and mtype != "counter":
        raise LintError(f"{name}: _total is for counters, this is a {mtype}")


def _parse(text: str, prefix: str) -> dict[tuple[str, tuple], float]:
    if not text.endswith("\n"):
        raise LintError("line 0: the file does not end with a newline")
    seen_help: set[str] = set()
    types: dict[str, str] = {}
    done: set[str] = set()           # families whose samples are over
    current = ""
    out: dict[tuple[str, tuple], float] = {}
    for n, line in enumerate(text[:-1].split("\n"), 1):
        try:
            if len(line) > MAX_LINE:
                raise LintError("line too long")
            if not line.strip():
                raise LintError("blank line")
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
                    raise LintError("a comment other than HELP or TYPE")
                kind, name = parts[1], parts[2]
                if name in done or name in out_names(out):
                    raise LintError(f"{kind} for {name} after its samples")
                if kind == "HELP":
                    if name in seen_help or len(parts) < 4 or not parts[3].strip():
                        raise LintError(f"HELP for {name} twice or empty")
                    seen_help.add(name)
                else:
                    if name in types or len(parts) != 4 or parts[3] not in TYPES:
                        raise LintError(f"TYPE for {name} twice or of an unknown type")
                    if name not in seen_help:
                        raise LintError(f"TYPE for {name} before its HELP")
                    types[name] = parts[3]
                    _check_name(name, prefix, parts[3])
                continue
            name, labels, value = _sample(line)
            if name not in types:
                raise LintError(f"sample of {name} without a TYPE line before it")
            if name != current:
                if current:
                    done.add(current)
                if name in done:
                    raise LintError(f"samples of {name} are not contiguous")
                current = name
            if (name, labels) in out:
                raise LintError(f"series {name}{dict(labels)} twice")
            out[(name, labels)] = value
        except LintError as exc:
            raise LintError(f"line {n}: {exc}") from None
    missing = set(types) - out_names(out)
    if missing:
        raise LintError(f"line {n}: TYPE without samples: {sorted(missing)}")
    return out


def out_names(out: dict) -> set[str]:
    return {name for name, _ in out}


def lint(text: str, prefix: str = "kvmtrace_") -> list[str]:
    """The first problem of text as a one-element list, or [] when it is clean."""
    try:
        _parse(text, prefix)
    except LintError as exc:
        return [str(exc)]
    return []


def samples(text: str, prefix: str = "kvmtrace_") -> dict[tuple[str, tuple], float]:
    """The samples of a clean file: {(name, sorted label pairs): value}; LintError if not."""
    return _parse(text, prefix)
