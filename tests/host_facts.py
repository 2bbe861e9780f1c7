"""What this host can do for the live tests, found by the tests themselves.

The live tier must not be switched off by the code it tests: if kvmtrace's own host probing
(``kvmtrace.host.gather``, ``privileges()``, ``unavailable_reason()``) broke and said "no
backend" or "not root", a suite that asked the product would turn every live test into a
skip and stay green.  So nothing here imports kvmtrace.  Each fact is checked the plainest
way the kernel offers:

- root: ``os.geteuid() == 0``;
- ``/dev/kvm`` opened read-write (what KVM_CREATE_VM needs);
- tracefs: mounted (``/proc/mounts``), or its mount point ``/sys/kernel/tracing`` exists and
  we are root (``.ci/install-live.sh`` mounts it);
- BPF: a two-instruction socket filter (``r0 = 0; exit``) loaded with the raw ``bpf(2)``
  syscall (BPF_PROG_LOAD, include/uapi/linux/bpf.h) through ctypes;
- BCC importable (Debian's python3-bpfcc) and kernel headers for BCC to compile against;
- KVM's tracepoints: ``events/kvm`` and ``events/kvmmmu`` in tracefs;
- shadow paging: the kvm_pvm module (shadow MMU only), or kvm_intel ``ept``=N /
  kvm_amd ``npt``=0 (arch/x86/kvm/vmx/vmx.c enable_ept, svm/svm.c npt_enabled).

``python3 tests/host_facts.py`` prints the facts and exits 0 when the host must run the
live tier (``.ci/run`` then sets ``KVMTRACE_REQUIRE_LIVE=1``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

TRACEFS = Path("/sys/kernel/tracing")
SYS_BPF_X86_64 = 321                 # arch/x86/entry/syscalls/syscall_64.tbl
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
BCC_DIST = Path("/usr/lib/python3/dist-packages")


@dataclass(frozen=True)
class HostFacts:
    root: bool
    kvm_dev: Optional[str]           # None when /dev/kvm opened, else why not
    tracefs: Optional[str]           # None when mounted or mountable, else why not
    tracefs_mounted: bool
    bpf: Optional[str]               # None when a socket filter loaded, else why not
    bcc: Optional[str]               # None when BCC is importable, else why not
    headers: Optional[str]           # None when /lib/modules/<release>/build exists
    kvm_events: Optional[str]        # None when tracefs lists kvm and kvmmmu events
    kvm_module: str                  # kvm_pvm / kvm_intel / kvm_amd / ""
    shadow_paging: Optional[bool]    # guests run on the shadow MMU (None: no KVM module)

    @property
    def live(self) -> bool:
        """The host must run the whole live tier."""
        return all(r is None for r in (self.bpf_reason(), self.kvm_reason()))

    def bpf_reason(self) -> Optional[str]:
        if not self.root:
            return "not root (os.geteuid() != 0): BPF and tracefs need root"
        for why in (self.tracefs, self.bpf, self.bcc, self.headers):
            if why:
                return why
        return None

    def kvm_tracing_reason(self) -> Optional[str]:
        return self.bpf_reason() or self.kvm_events

    def kvm_reason(self) -> Optional[str]:
        return self.kvm_tracing_reason() or self.kvm_dev

    def tracefs_kvm_reason(self) -> Optional[str]:
        """The guest traced through a tracefs instance (no BPF): root, tracefs, KVM."""
        if not self.root:
            return "not root (os.geteuid() != 0): tracefs instances need root"
        return self.tracefs or self.kvm_events or self.kvm_dev

    def exercise_reason(self) -> Optional[str]:
        """The built-in guest alone needs only /dev/kvm."""
        return self.kvm_dev


def _open_kvm() -> Optional[str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm cannot be opened read-write: {exc.strerror}"
    os.close(fd)
    return None


def _tracefs_mounted() -> bool:
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[2:3] == ["tracefs"] for line in f)
    except OSError:
        return False


def _tracefs(root: bool, mounted: bool) -> Optional[str]:
    if mounted:
        return None
    if TRACEFS.is_dir() and root:
        return None                  # mountable: .ci/install-live.sh mounts it
    return f"tracefs is not mounted and {TRACEFS} cannot be mounted here"


def _load_socket_filter() -> Optional[str]:
    """BPF_PROG_LOAD of ``mov64 r0, 0; exit`` with the raw syscall."""
    if platform.machine() != "x86_64":
        return f"the BPF check knows the bpf(2) number only for x86_64, not {platform.machine()}"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    insns = (ctypes.c_uint64 * 2)(0x00000000000000b7, 0x0000000000000095)
    license_ = ctypes.create_string_buffer(b"GPL")

    class Attr(ctypes.Structure):           # the BPF_PROG_LOAD prefix of union bpf_attr
        _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                    ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                    ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                    ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                    ("pad", ctypes.c_uint8 * 68)]

    attr = Attr(BPF_PROG_TYPE_SOCKET_FILTER, 2, ctypes.addressof(insns),
                ctypes.addressof(license_))
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(SYS_BPF_X86_64, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return f"the kernel refused a trivial BPF socket filter: {os.strerror(err)}"
    os.close(fd)
    return None


def _bcc() -> Optional[str]:
    if importlib.util.find_spec("bcc") is not None or (BCC_DIST / "bcc" / "__init__.py").exists():
        return None
    return "BCC (Debian's python3-bpfcc) is not installed (run .ci/install-live.sh)"


def _headers() -> Optional[str]:
    build = Path("/lib/modules") / os.uname().release / "build"
    if build.exists():
        return None
    return f"no kernel headers at {build} for BCC (run .ci/install-live.sh)"


def _kvm_events(mounted: bool) -> Optional[str]:
    if not mounted:
        return "tracefs is not mounted, so KVM's tracepoints cannot be listed"
    absent = [s for s in ("kvm", "kvmmmu") if not (TRACEFS / "events" / s).is_dir()]
    if absent:
        return f"tracefs has no {' or '.join(absent)} events (is a KVM module loaded?)"
    return None


def _param(module: str, name: str) -> str:
    try:
        return (Path("/sys/module") / module / "parameters" / name).read_text().strip()
    except OSError:
        return ""


def _paging() -> tuple[str, Optional[bool]]:
    mods = Path("/sys/module")
    if (mods / "kvm_pvm").is_dir():
        return "kvm_pvm", True               # PVM has only the shadow MMU
    if (mods / "kvm_intel").is_dir():
        return "kvm_intel", _param("kvm_intel", "ept") in ("N", "n", "0")
    if (mods / "kvm_amd").is_dir():
        return "kvm_amd", _param("kvm_amd", "npt") in ("N", "n", "0")
    return "", None


@lru_cache(maxsize=1)
def facts() -> HostFacts:
    root = os.geteuid() == 0
    mounted = _tracefs_mounted()
    module, shadow = _paging()
    return HostFacts(root=root, kvm_dev=_open_kvm(), tracefs=_tracefs(root, mounted),
                     tracefs_mounted=mounted, bpf=_load_socket_filter() if root else "not root",
                     bcc=_bcc(), headers=_headers(), kvm_events=_kvm_events(mounted),
                     kvm_module=module, shadow_paging=shadow)


def require_live() -> bool:
    """KVMTRACE_REQUIRE_LIVE=1: every live test must run; a skip is a failure."""
    return os.environ.get("KVMTRACE_REQUIRE_LIVE", "") == "1"


if __name__ == "__main__":
    f = facts()
    print(json.dumps({**asdict(f), "live": f.live}, indent=1))
    sys.exit(0 if f.live else 1)
