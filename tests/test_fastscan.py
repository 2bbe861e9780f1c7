"""The compiled text scanner (_fastscan.c) and the pure-Python path give identical results.

The extension is built on install when a C compiler is present; when it is not importable
here, this module builds it from the source into a temporary directory with the machine's
compiler, so the comparison always runs where ``cc`` exists.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import shutil
import subprocess
import sysconfig
from pathlib import Path

import re

import numpy as np
import pytest

from kvmtrace.sources.text import decode as D
from kvmtrace.sources.text.text import TextReader
from kvmtrace.sources.native import TraceFileError

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "fixtures"
SOURCE = REPO / "kvmtrace" / "sources" / "text" / "_fastscan.c"
TS = re.compile(r"(?<=\s)\d+\.\d{6,9}(?=:)")
TEXT_FIXTURES = sorted((FIX / "text").glob("*.txt")) + [FIX / "lab_two_vcpu_flush.ftrace.txt"] \
    + sorted((FIX / "real").glob("*.ftrace.txt.gz")) + sorted((FIX / "shapes").glob("*.txt"))


def _installed():
    try:
        from kvmtrace.sources.text import _fastscan as module   # type: ignore[attr-defined]
    except ImportError:
        return None
    return module


CC = shutil.which("cc") or shutil.which("gcc")
INCLUDE = sysconfig.get_paths()["include"]
pytestmark = pytest.mark.skipif(
    _installed() is None and (CC is None or not (Path(INCLUDE) / "Python.h").exists()),
    reason="no C compiler or Python headers: the compiled scanner cannot be built here "
           "(the pure-Python path is then the only one)")


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A scan function backed by the compiled module (built here if need be)."""
    module = _installed()
    if module is None:
        include = INCLUDE
        cc = CC
        out = tmp_path_factory.mktemp("fastscan") / ("_fastscan" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(out)],
                       check=True)
        loader = importlib.machinery.ExtensionFileLoader("_fastscan", str(out))
        spec = importlib.util.spec_from_file_location("_fastscan", str(out), loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    module.reset()
    return D.fast_scanner(module)


def read(path, scan, block_bytes: int = 1 << 16, **kw):
    """Everything a reader yields and says, for comparison."""
    reader = TextReader(path, scan=scan, block_bytes=block_bytes, **kw)
    try:
        reader.open()
        chunks = list(reader.chunks())
    except TraceFileError as exc:
        return ("error", str(exc))
    cols = {k: np.concatenate([c[k] for c, _ in chunks]) for k in chunks[0][0]} if chunks else {}
    comm = [reader.comm_names[i] for _, cc in chunks for i in cc._indices.tolist()]
    return cols, comm, reader.meta.to_dict(), reader.skipped_lines, reader.doubts()


def same(a, b) -> bool:
    if a[0] == "error" or b[0] == "error":
        return a == b
    return (a[0].keys() == b[0].keys() and all(np.array_equal(a[0][k], b[0][k]) for k in a[0])
            and a[1:] == b[1:])


@pytest.mark.parametrize("path", TEXT_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_same_with_and_without_the_compiled_scanner(fast, path):
    compiled = read(path, fast)
    assert same(compiled, read(path, D.py_scan))
    assert compiled[0] != "error" and len(compiled[0]["ts"]) > 0


def test_the_compiled_scanner_decodes_most_lines_itself(fast):
    block = (FIX / "lab_two_vcpu_flush.ftrace.txt").read_bytes()
    scan = fast(block, 0, False, {}, [])
    decided = np.count_nonzero(scan.status != D.DEFER)
    # Everything but the '#' header lines: the fast path is the path (a test that would
    # pass with a scanner deferring every line would prove nothing).
    headers = sum(1 for line in block.splitlines() if line.startswith(b"#"))
    assert decided == scan.nlines - headers


def _mutations(lines: list[str], rng: random.Random) -> list[str]:
    """Damaged variants of real lines: cut, widened, renumbered, joined, doubled."""
    out = []
    for k in range(300):
        line = rng.choice(lines)
        op = rng.randrange(9)
        if op == 0:
            line = line[:rng.randrange(len(line))]
        elif op == 1:
            m = TS.search(line)
            i = rng.randrange(m.end() if m else 0, len(line))
            line = line[:i] + " " * rng.randrange(1, 40) + line[i:]
        elif op == 2:
            head, sep, body = line.partition(": ")
            line = head + sep + "".join(str(rng.randrange(10)) if c.isdigit() and rng.random() < 0.3
                                        else c for c in body)
        elif op == 3:
            line = line + " " + rng.choice(lines).strip()
        elif op == 4:
            line = line.replace(" ", "  ", 1)
        elif op == 5:
            line = "> " + line
        elif op == 6:
            # Damage after the timestamp (a timestamp going back is refused as a whole).
            m = TS.search(line)
            i = rng.randrange(m.end() if m else 0, len(line))
            line = line[:i] + rng.choice("[]():.-/!#\t9f0x") + line[i + 1:]
        elif op == 7:
            line = line.replace("0x", "0x" + "f" * rng.randrange(1, 20), 1)
        else:
            line = line.upper() if rng.random() < 0.2 else line.replace("l1", "l" + "9" * rng.randrange(1, 4))
        # Every timestamp rises (a file in time order, whatever the damage joined).
        out.append(TS.sub(lambda m: f"{1000 + k}.{rng.randrange(10**6):06d}", line))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_damaged_lines_same_with_and_without_the_compiled_scanner(fast, tmp_path, seed):
    rng = random.Random(seed)
    lines = []
    for path in TEXT_FIXTURES[:12]:
        # Lines without TGID (several VMs with unattributed threads are an error).
        lines += [l for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")
                  and not re.search(r"\(\s*\d+\)|\d/\d+\s+\[", l)]
    # Keep every CPU's timestamps rising: damaged lines each get their own CPU and time.
    text = "\n".join(_mutations(lines, rng)) + "\n"
    path = tmp_path / "damaged.txt"
    path.write_text("# tracer: nop\n" + text)
    a, b = read(path, fast), read(path, D.py_scan)
    assert same(a, b), (a if a[0] == "error" else a[3], b if b[0] == "error" else b[3])
    assert a[0] != "error" and a[3]["total"] > 20 and len(a[0]["ts"]) > 100


def test_block_boundaries_do_not_change_the_result(fast):
    path = FIX / "real" / "exercise_2vcpu.ftrace.txt.gz"
    whole = read(path, fast, block_bytes=8 << 20)
    for size in (4096, 10_007, 65_536):
        assert same(read(path, fast, block_bytes=size), whole)
        assert same(read(path, D.py_scan, block_bytes=size), whole)
