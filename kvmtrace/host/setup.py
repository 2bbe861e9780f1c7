"""Make a fresh host traceable: mount tracefs, link the kernel headers BCC compiles against.

What `trace-cmd` and `perf` do for themselves when run as root, and what a `pip install`
user would otherwise have to learn from `.ci/install-live.sh`:

- tracefs: the kernel creates the empty mount point ``/sys/kernel/tracing`` when tracefs is
  built in (fs/tracefs/inode.c, tracefs_init -> sysfs_create_mount_point); mounting it is
  ``mount -t tracefs nodev /sys/kernel/tracing``.
- headers: BCC compiles against ``/lib/modules/$(uname -r)/build`` (and ``source`` for the
  common half of Debian's split header packages).  A custom kernel has neither; tracepoint
  programs compile against the distribution's headers for another release, so the links
  point at the newest installed ``/usr/src/linux-headers-*-<arch>``.

Nothing here uses the network or installs packages.  ``plan()`` only looks (``doctor``
shows it); ``apply()`` acts and returns one line per action.  Imports: stdlib and
``kvmtrace.host`` only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kvmtrace.host.kernel import release
from kvmtrace.host.tracefs import find_mount

TRACEFS_MOUNT_POINT = "sys/kernel/tracing"
# Debian names its per-architecture header packages by dpkg architecture.
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "i386": "i386"}

Mounter = Callable[[str, str, str], None]     # (source, target, fstype); raises OSError


@dataclass
class Action:
    """One set-up step this host needs: what it would do, and its target path."""

    name: str            # "mount-tracefs" | "link-build" | "link-source"
    target: Path
    source: str          # what is mounted or linked there
    why: str

    def describe(self) -> str:
        if self.name == "mount-tracefs":
            return f"mount -t tracefs nodev {self.target}"
        return f"ln -s {self.source} {self.target}"


def _libc_mount(source: str, target: str, fstype: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _newest_headers(root: Path) -> Optional[Path]:
    arch = DEB_ARCH.get(platform.machine(), platform.machine())
    found = [p for p in (root / "usr/src").glob(f"linux-headers-*-{arch}")
             if (p / "Makefile").exists() or (p / "include").is_dir()]
    if not found:
        return None

    def version_key(p: Path) -> list:
        parts = p.name[len("linux-headers-"):].replace("-", ".").split(".")
        return [(0, int(x)) if x.isdigit() else (1, x) for x in parts]
    return max(found, key=version_key)


def plan(root: Path | str = Path("/")) -> list[Action]:
    """What this host lacks for live tracing that kvmtrace can set up itself."""
    root = Path(root)
    actions: list[Action] = []
    mount_point = root / TRACEFS_MOUNT_POINT
    if find_mount(root) is None and mount_point.is_dir():
        actions.append(Action("mount-tracefs", mount_point, "tracefs",
                              "tracefs is not mounted (tracepoint formats and events live there)"))
    moddir = root / "lib/modules" / release(root)
    build = moddir / "build"
    if not os.path.lexists(build):
        hdr = _newest_headers(root)
        if hdr is not None:
            actions.append(Action("link-build", build, str(hdr),
                                  f"BCC compiles against {build}, which is missing"))
            common = Path(str(hdr)[: -len(hdr.name.rsplit("-", 1)[-1])] + "common")
            if not os.path.lexists(moddir / "source") and common.is_dir():
                actions.append(Action("link-source", moddir / "source", str(common),
                                      "the common half of Debian's split header packages"))
    return actions


def apply(actions: list[Action], mounter: Mounter = _libc_mount) -> list[str]:
    """Carry out the actions; one line each saying what was done or why it was not."""
    lines = []
    for a in actions:
        try:
            if a.name == "mount-tracefs":
                mounter("nodev", str(a.target), "tracefs")
                lines.append(f"mounted tracefs at {a.target}")
            else:
                a.target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(a.source, a.target)
                lines.append(f"linked {a.target} -> {a.source}")
        except OSError as exc:
            lines.append(f"could not {a.describe()}: {exc.strerror or exc}")
    return lines


def prepare(root: Path | str = Path("/"), mounter: Mounter = _libc_mount) -> list[str]:
    """Set up what is missing when running as root; nothing (and no lines) otherwise."""
    if os.geteuid() != 0:
        return []
    return apply(plan(root), mounter)
