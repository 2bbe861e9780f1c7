"""`pip install .` (a wheel, not the editable checkout) gives a working CLI.

An earlier hand-written package list left out ``kvmtrace.commands``: the editable install
worked, a wheel failed on every command.  This builds the wheel, installs it alone into a
fresh virtual environment (its dependencies come from this interpreter's site-packages
through a .pth file, so nothing is downloaded) and runs the CLI from outside the checkout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt"


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                 "-q", "-w", str(out), str(ROOT)])
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("kvmtrace-*.whl")
    return path


def test_the_wheel_holds_every_package_and_the_bpf_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "kvmtrace").rglob("__init__.py")}
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages left out of the wheel: {missing}"
    assert "kvmtrace/probes/kvmtrace.c" in names


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_venv_analyzes_a_fixture(wheel, tmp_path):
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # This interpreter's packages (pandas, pyarrow, click ...) after the venv's own.
    Path(site.stdout.strip(), "deps.pth").write_text("\n".join(sorted(here)) + "\n")
    proc = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                 "--no-index", "-q", str(wheel)])
    if "no such option: --python" in proc.stderr:        # pip < 22.3
        proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                     "--prefix", str(venv), str(wheel)])
    assert proc.returncode == 0, proc.stderr
    where = _run([str(py), "-c", "import kvmtrace, kvmtrace.commands; print(kvmtrace.__file__)"],
                 cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(venv)), where.stdout      # the wheel, not the checkout
    proc = _run([str(venv / "bin" / "kvmtrace"), "analyze", str(LAB)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("verdict: OK"), proc.stdout
