"""What several test modules share: fixture paths and running the real CLI entry point."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GEN = FIXTURES / "generations"
LAB = FIXTURES / "lab_two_vcpu_flush.ftrace.txt"
REAL = FIXTURES / "real" / "exercise_2vcpu.parquet"


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `kvmtrace ARGV` through main() (exit codes, one-line errors): (code, out, err)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
