"""Fixtures shared by several test modules."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# In CI (CI=true) the property and fuzz tests draw the same examples every run: a landing
# must not pass or fail by the luck of the draw.  Locally they stay random, to find more.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Compiled probe programs (sources/live/progcache.py) go to one cache per test session, not
# the host's /var/cache/kvmtrace: each distinct program is compiled once per run, and a
# test never loads an object an earlier checkout compiled.  Tests of the cache set their own.
if "KVMTRACE_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["KVMTRACE_CACHE_DIR"] = tempfile.mkdtemp(prefix="kvmtrace-test-cache-")
    atexit.register(shutil.rmtree, os.environ["KVMTRACE_CACHE_DIR"], True)

from cli_support import LAB
from host_facts import facts, require_live


@pytest.fixture
def lab_without_sync(tmp_path: Path) -> Path:
    """The real lab capture with its one kvm_mmu_sync_page line removed: a violation."""
    lines = LAB.read_text().splitlines(keepends=True)
    kept = [line for line in lines if "kvm_mmu_sync_page" not in line]
    assert len(kept) == len(lines) - 1
    path = tmp_path / "lab_no_sync.ftrace.txt"
    path.write_text("".join(kept))
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under KVMTRACE_REQUIRE_LIVE=1 (.ci/run sets it where tests/host_facts.py finds root,
    /dev/kvm, tracefs and BPF) a skipped ``live`` test is a failure: the live tier cannot
    silently vanish from a host that must run it."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and require_live() and item.get_closest_marker("live") is not None:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"live test skipped under KVMTRACE_REQUIRE_LIVE=1 ({reason}); "
                        f"host facts: {facts()}")
