"""Fixtures shared by several test modules."""
from __future__ import annotations

from pathlib import Path

import pytest

from cli_support import LAB


@pytest.fixture
def lab_without_sync(tmp_path: Path) -> Path:
    """The real lab capture with its one kvm_mmu_sync_page line removed: a violation."""
    lines = LAB.read_text().splitlines(keepends=True)
    kept = [line for line in lines if "kvm_mmu_sync_page" not in line]
    assert len(kept) == len(lines) - 1
    path = tmp_path / "lab_no_sync.ftrace.txt"
    path.write_text("".join(kept))
    return path
