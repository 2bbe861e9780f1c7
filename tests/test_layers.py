"""The layer rule (CONTRIBUTING.md): no module imports a layer above its own.

Layers, lowest first: the event contract (``kvmtrace.schema``, ``kvmtrace.functions``,
``kvmtrace.exitcodes``); ``kvmtrace.host`` (facts about this machine); ``kvmtrace.analysis``
(the model: the contract only); ``kvmtrace.sources`` (native files, text importers, the BPF
recorder); ``kvmtrace.exercise`` (the built-in guest); ``kvmtrace.pipeline`` (source ->
model -> verdict); ``kvmtrace.outputs``; ``kvmtrace.commands`` and ``kvmtrace.cli``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kvmtrace"

LAYERS = [
    ("contract", ("kvmtrace", "kvmtrace.schema", "kvmtrace.kinds", "kvmtrace.functions",
                  "kvmtrace.exitcodes")),
    ("host", ("kvmtrace.host",)),
    ("analysis", ("kvmtrace.analysis",)),
    ("sources", ("kvmtrace.sources", "kvmtrace.probes")),
    ("exercise", ("kvmtrace.exercise",)),
    ("pipeline", ("kvmtrace.pipeline",)),
    ("outputs", ("kvmtrace.outputs",)),
    ("commands", ("kvmtrace.commands", "kvmtrace.cli", "kvmtrace.__main__", "kvmtrace.errors")),
]
# The model sees nothing but the contract (not even host facts).
ONLY = {"analysis": {"contract", "analysis"}}


def layer_of(module: str) -> int:
    best, rank = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    return rank


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[str]:
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]
    return [m for m in out if m == "kvmtrace" or m.startswith("kvmtrace.")]


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)) >= 0, f"{path}: no layer in tests/test_layers.py"


def test_no_module_imports_upward():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        allowed = ONLY.get(LAYERS[mine][0])
        for target in imported(path):
            theirs = layer_of(target)
            if theirs < 0 or target == "kvmtrace":
                continue
            if theirs > mine or (allowed and LAYERS[theirs][0] not in allowed):
                bad.append(f"{me} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not bad, "\n".join(sorted(set(bad)))


def test_importing_the_model_loads_no_io_live_or_cli_module():
    code = ("import sys, kvmtrace.analysis; "
            "print('\\n'.join(m for m in sys.modules if m.startswith(('kvmtrace', 'bcc', 'click'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True).stdout.split()
    loaded = set(out)
    assert "kvmtrace.analysis.replay" in loaded          # the probe itself worked
    # (pyarrow may come in through pandas itself; the model never imports it.)
    forbidden = [m for m in loaded if m.startswith(("bcc", "click"))
                 or layer_of(m) > layer_of("kvmtrace.analysis")
                 or m.startswith("kvmtrace.host")]
    assert not forbidden, forbidden
