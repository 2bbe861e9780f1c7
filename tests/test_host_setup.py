"""Self-setup of a fresh host: tracefs mounted and kernel-header links made, one line each."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmtrace.host import setup

ROOT_DIR = Path(__file__).resolve().parent.parent
RELEASE = "6.18.44-test"
ARCH = setup.DEB_ARCH.get(platform.machine(), platform.machine())


def fresh_sysroot(tmp_path: Path, headers: tuple[str, ...] = ("6.1.0-56", "6.1.0-9")) -> Path:
    """A sysroot like a fresh host: tracefs mount point empty, no /lib/modules links."""
    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(RELEASE + "\n")
    (root / "proc/mounts").write_text("sysfs /sys sysfs rw 0 0\n")
    (root / setup.TRACEFS_MOUNT_POINT).mkdir(parents=True)
    for version in headers:
        arch_dir = root / f"usr/src/linux-headers-{version}-{ARCH}"
        arch_dir.mkdir(parents=True)
        (arch_dir / "Makefile").write_text("")
        (root / f"usr/src/linux-headers-{version}-common/include").mkdir(parents=True)
    return root


def test_plan_on_a_fresh_host_mounts_tracefs_and_links_the_newest_headers(tmp_path):
    root = fresh_sysroot(tmp_path)
    actions = {a.name: a for a in setup.plan(root)}
    assert set(actions) == {"mount-tracefs", "link-build", "link-source"}
    assert actions["mount-tracefs"].target == root / "sys/kernel/tracing"
    assert actions["link-build"].target == root / f"lib/modules/{RELEASE}/build"
    # 6.1.0-56 is newer than 6.1.0-9 (numeric, not string, order).
    assert actions["link-build"].source.endswith(f"linux-headers-6.1.0-56-{ARCH}")
    assert actions["link-source"].source.endswith("linux-headers-6.1.0-56-common")
    assert actions["mount-tracefs"].describe() == f"mount -t tracefs nodev {root}/sys/kernel/tracing"


def test_apply_reports_each_action_and_leaves_nothing_to_do(tmp_path):
    root = fresh_sysroot(tmp_path)
    mounted = []

    def fake_mount(source, target, fstype):
        mounted.append((source, target, fstype))
        (Path(target) / "events").mkdir()          # what a real tracefs shows

    lines = setup.apply(setup.plan(root), fake_mount)
    assert mounted == [("nodev", str(root / "sys/kernel/tracing"), "tracefs")]
    assert lines[0] == f"mounted tracefs at {root}/sys/kernel/tracing"
    assert lines[1].startswith(f"linked {root}/lib/modules/{RELEASE}/build -> ")
    assert os.readlink(root / f"lib/modules/{RELEASE}/build").endswith(f"6.1.0-56-{ARCH}")
    assert len(lines) == 3
    assert setup.plan(root) == []


def test_a_failed_action_says_why_in_one_line(tmp_path):
    root = fresh_sysroot(tmp_path, headers=())

    def refuse(source, target, fstype):
        raise PermissionError(1, "Operation not permitted")

    lines = setup.apply(setup.plan(root), refuse)
    assert lines == [f"could not mount -t tracefs nodev {root}/sys/kernel/tracing: "
                     "Operation not permitted"]


def test_nothing_to_do_where_everything_is_in_place(tmp_path):
    root = fresh_sysroot(tmp_path)
    (root / "sys/kernel/tracing/events").mkdir()
    moddir = root / f"lib/modules/{RELEASE}"
    moddir.mkdir(parents=True)
    (moddir / "build").symlink_to("/nonexistent")     # a dangling link is the admin's choice
    assert setup.plan(root) == []


def _fresh_host_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces)"
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not Path("/sys/kernel/tracing/events").is_dir():
        return "tracefs not mounted on this host"
    return None


@pytest.mark.live
@pytest.mark.skipif(_fresh_host_unavailable() is not None, reason=str(_fresh_host_unavailable()))
def test_check_exercise_on_a_fresh_host_needs_no_other_step(tmp_path):
    """In a private mount namespace, tracefs unmounted and /lib/modules/$(uname -r) empty:
    `kvmtrace check --exercise` sets both up itself, says so, and passes."""
    moddir = f"/lib/modules/{os.uname().release}"
    script = (f"umount /sys/kernel/tracing && mkdir -p {moddir} && mount -t tmpfs none {moddir} "
              f"&& exec {sys.executable} -m kvmtrace check --exercise --json")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300, cwd=ROOT_DIR,
                          env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})
    assert "kvmtrace: mounted tracefs at /sys/kernel/tracing" in proc.stderr, proc.stderr
    assert f"kvmtrace: linked {moddir}/build -> /usr/src/linux-headers-" in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["verdict"] == "pass", proc.stderr
    assert report["windows"]["meaningful_ok"] >= 1
    # The host's own mounts were never touched.
    assert Path("/sys/kernel/tracing/events").is_dir()
