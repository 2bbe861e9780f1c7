"""Mutation testing of the model and the verdict code with mutmut.

    python -m bench.mutation [--json] [--scope verdict|model|all] [--jobs N] [--workdir DIR]
                             [--only PATH]

mutmut (``pip install -e '.[mutation]'``; configured in pyproject.toml ``[tool.mutmut]``)
makes one small change at a time to ``kvmtrace/analysis/`` and
``kvmtrace/pipeline/check_rules.py`` and runs, for each, only the tests that reach the
changed function (its own coverage map, from ``pytest_add_cli_args_test_selection``: the
fast model and verdict tests).  A mutant no test fails is a behaviour nothing checks.

The run happens in a copy of the checkout (``--workdir``, default
``$XDG_CACHE_HOME/kvmtrace-mutation``) so the worktree is never touched; mutmut keeps
results per function hash there, so a second run re-tests only what changed.

Counted apart, and not run:
- text mutants: a change only to a string literal with a space in it (a human-readable
  reason or note; keys such as ``"violation"`` are mutated and run);
- documented equivalents: ``bench/mutation_equivalent.txt``, one ``name  reason`` a line.
Scopes: ``verdict`` window.py + report.py + check_rules.py (the default, minutes),
``model`` all of kvmtrace/analysis/ + check_rules.py (about an hour on 2 cores), ``all``
the same as model.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT = REPO / "bench" / "mutation_equivalent.txt"
SCOPES = {
    "verdict": ("kvmtrace/analysis/window.py", "kvmtrace/analysis/report.py",
                "kvmtrace/pipeline/check_rules.py"),
    "model": ("kvmtrace/analysis/", "kvmtrace/pipeline/check_rules.py"),
}
SCOPES["all"] = SCOPES["model"]
NONE = "kvmtrace.no_such_function__mutmut_0"     # generate and map tests, run nothing
KILLED = {1, 3, 36, 37, -24, 24, 152, 255, -11, -9}   # mutmut: killed, timeout, crash
MUTANT = re.compile(r"^(.*)__mutmut_(\d+|orig)$")
BATCH = 4000          # mutant names per mutmut command line (~100 bytes each)


def copy_checkout(work: Path) -> None:
    """The tracked files (and untracked, not ignored ones) as they are in the worktree."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    keep = {"mutants", ".mutmut-cache"}
    for child in work.iterdir() if work.exists() else []:
        if child.name not in keep:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src, dst = REPO / rel, work / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def mutmut(work: Path, names: list[str], jobs: int) -> int:
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names]
    env = {**os.environ, "PYTHONPATH": ""}
    with open(work / "mutmut.log", "ab") as log:
        return subprocess.run(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


class _Text(ast.NodeTransformer):
    """Blanks string literals that are human-readable text (they contain whitespace)."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and (not node.value.strip("X") or " " in node.value):
            return ast.copy_location(ast.Constant("<text>"), node)
        return node


def _shape(fn: ast.AST) -> str:
    body = ast.Module(body=[*fn.body], type_ignores=[])   # without the name
    return ast.dump(_Text().visit(ast.parse(ast.unparse(body))))


def classify(work: Path, module_path: str) -> dict[str, bool]:
    """mutant name -> True when it changes only human-readable text."""
    src = work / "mutants" / module_path
    module = module_path[:-3].replace("/", ".")
    tree = ast.parse(src.read_text())
    origs, mutants = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            m = MUTANT.match(node.name)
            if m:
                (origs if m.group(2) == "orig" else mutants)[node.name] = (m.group(1), node)
    orig_shape = {base: _shape(fn) for base, fn in origs.values()}
    return {f"{module}.{name}": _shape(fn) == orig_shape.get(base)
            for name, (base, fn) in mutants.items()}


def in_scope(path: str, scope: str) -> bool:
    return any(path == s or (s.endswith("/") and path.startswith(s)) for s in SCOPES[scope])


def equivalents() -> dict[str, str]:
    out = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, reason = line.strip().partition(" ")
                out[name] = reason.strip()
    return out


def results(work: Path, paths: list[str]) -> dict[str, object]:
    codes: dict[str, object] = {}
    for p in paths:
        meta = work / "mutants" / (p + ".meta")
        if meta.exists():
            codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--scope", choices=sorted(SCOPES), default="verdict")
    ap.add_argument("--only", action="append", default=[], metavar="PATH",
                    help="only this module of the scope (repeatable), e.g. kvmtrace/analysis/window.py")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report-only", action="store_true",
                    help="summarise the last run's results in the work directory, run nothing "
                         "(e.g. after documenting equivalents)")
    ap.add_argument("--workdir", type=Path,
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "kvmtrace-mutation")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("mutmut") is None:
        print("bench.mutation: mutmut is not installed: pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        copy_checkout(work)
        mutmut(work, [NONE], args.jobs)          # generate mutants, map tests to functions
    elif not (work / "mutants").is_dir():
        print(f"bench.mutation: no run to report in {work}", file=sys.stderr)
        return 2
    paths = sorted(str(p.relative_to(work / "mutants")) for p in (work / "mutants").rglob("*.py")
                   if in_scope(str(p.relative_to(work / "mutants")), args.scope)
                   and (p.with_name(p.name + ".meta")).exists())
    if args.only:
        paths = [p for p in paths if p in args.only]
    text: dict[str, bool] = {}
    for p in paths:
        text.update(classify(work, p))
    equiv = equivalents()
    run = sorted(n for n, t in text.items() if not t and n not in equiv)
    # One mutmut run for all (each run starts with a clean run of the selected tests and a
    # forced-fail check, minutes on a loaded machine); batches only bound the command line.
    for i in range(0, len(run), BATCH) if not args.report_only else ():
        mutmut(work, run[i:i + BATCH], args.jobs)
    codes = results(work, paths)
    killed = sorted(n for n in run if codes.get(n) in KILLED)
    survived = sorted(n for n in run if n not in set(killed))
    scored = len(killed) + len(survived)
    by_module = {}
    for p in paths:
        prefix = p[:-3].replace("/", ".") + "."
        k = sum(1 for n in killed if n.startswith(prefix))
        s = sum(1 for n in survived if n.startswith(prefix))
        if k + s:
            by_module[p] = {"killed": k, "survived": s, "score": round(k / (k + s), 4)}
    out = {"scope": args.scope, "modules": paths, "mutants": len(text),
           "killed": len(killed), "survived": len(survived),
           "equivalent": sum(1 for n in text if n in equiv),
           "text_only": sum(1 for t in text.values() if t),
           "score": round(len(killed) / scored, 4) if scored else None,
           "by_module": by_module,
           "survivors": [{"name": n, "status": codes.get(n)} for n in survived]}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        score = f"{out['score']:.1%}" if scored else "no mutant run"
        print(f"mutation ({args.scope}): {out['killed']} killed, {out['survived']} survived "
              f"({score} of {scored} non-equivalent), {out['equivalent']} documented "
              f"equivalent, {out['text_only']} text-only not run")
        for p, m in by_module.items():
            print(f"  {p}: {m['killed']} of {m['killed'] + m['survived']} ({m['score']:.1%})")
        for s in out["survivors"]:
            print(f"  survived: {s['name']}  (mutmut show {s['name']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
