"""The live tier cannot hide: its skip conditions come from facts the tests check
themselves, and under KVMTRACE_REQUIRE_LIVE=1 a skipped live test fails."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

PROBE = '''
import pytest

@pytest.mark.live
def test_skips_in_its_body():
    pytest.skip("cannot record")

@pytest.mark.live
@pytest.mark.skipif(True, reason="no BPF")
def test_skipped_by_a_condition():
    pass

def test_not_live():
    pytest.skip("not a live test")
'''


def _run_probe(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "KVMTRACE_REQUIRE_LIVE": require,
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "conftest", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


def test_a_live_skip_fails_when_the_live_tier_is_required(tmp_path):
    proc = _run_probe(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout
    assert "live test skipped under KVMTRACE_REQUIRE_LIVE=1 (Skipped: cannot record)" in proc.stdout
    assert "no BPF" in proc.stdout
    assert "1 failed, 1 skipped, 1 error" in proc.stdout       # the non-live skip stays one


def test_live_skips_are_skips_when_the_tier_is_not_required(tmp_path):
    proc = _run_probe(tmp_path, "")
    assert proc.returncode == 0 and "3 skipped" in proc.stdout, proc.stdout


def test_host_facts_never_ask_kvmtrace():
    # A bug in kvmtrace's host probing must fail live tests, not skip them.
    for name in ("host_facts.py", "live_support.py"):
        tree = ast.parse((TESTS / name).read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.split(".")[0] == "kvmtrace" for m in imported), (name, imported)


def _skips_in_bodies(path: Path) -> list[str]:
    """pytest.skip(...) calls inside test functions and fixtures."""
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for call in ast.walk(fn):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in ("skip", "importorskip")
                        and isinstance(call.func.value, ast.Name) and call.func.value.id == "pytest"):
                    out.append(f"{path.name}:{call.lineno} in {fn.name}")
    return out


def test_no_test_turns_a_failure_into_a_skip():
    # Skips are decided up front from host facts (skipif); a body that skips after the code
    # under test ran would hide that code's errors.
    found = [s for p in sorted(TESTS.glob("test_*.py")) if p.name != Path(__file__).name
             for s in _skips_in_bodies(p)]
    assert found == []


def test_this_host_runs_the_live_tier_when_it_can():
    from host_facts import facts
    f = facts()
    if f.live:
        # .ci/run exports KVMTRACE_REQUIRE_LIVE=1 exactly then.
        proc = subprocess.run([sys.executable, str(TESTS / "host_facts.py")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and '"live": true' in proc.stdout
    ci = (REPO / ".ci" / "run").read_text()
    assert "tests/host_facts.py" in ci and "KVMTRACE_REQUIRE_LIVE=1" in ci
