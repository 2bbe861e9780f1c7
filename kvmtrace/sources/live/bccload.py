"""Import BCC (Debian's python3-bpfcc) and check what it needs: privileges, kernel headers.

BCC is the ``bcc`` package from the distribution (``python3-bpfcc``), installed for the
system Python under /usr/lib/python3/dist-packages; it is pure Python over ctypes and
``libbcc.so``, so another CPython 3 can use it.  The PyPI package named ``bcc`` is an
unrelated project: kvmtrace never depends on it, and rejects it if found.
BCC compiles C at run time against ``/lib/modules/$(uname -r)/build`` (or the kernel's
own /sys/kernel/kheaders.tar.xz with CONFIG_IKHEADERS).

May import: kvmtrace.sources.live.{errors,progcache} (and the standard library).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Iterator

from kvmtrace.sources.live.errors import INSTALL_HINT, LiveUnavailable

DEBIAN_DIST = "/usr/lib/python3/dist-packages"
# include/uapi/linux/capability.h
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_loaded: tuple[ModuleType, str] | None = None

# Compiler flags for the probe program.  -g0: no debug info, so BCC builds no BTF for the
# program (func and line info for bpftool and verifier logs with source lines); nothing
# kvmtrace loads needs it (ring buffer, arrays, hashes, tracepoint and raw-tracepoint
# programs), and the compile took 15 % less CPU without it here (1.06-1.09 s vs 1.22-1.31 s).
CFLAGS = ("-g0",)


def _is_bcc(mod: ModuleType) -> bool:
    return hasattr(mod, "BPF") and hasattr(mod, "lib")


def import_bcc() -> tuple[ModuleType, str]:
    """(the bcc module, how it was found).  Raises LiveUnavailable."""
    global _loaded
    if _loaded is not None:
        return _loaded
    note = "import bcc"
    mod = _try_import()
    if mod is None and os.path.isdir(os.path.join(DEBIAN_DIST, "bcc")):
        # This Python is not the system one: use the distribution's BCC from its path,
        # appended so nothing else there shadows this interpreter's own packages.
        sys.modules.pop("bcc", None)
        if DEBIAN_DIST not in sys.path:
            sys.path.append(DEBIAN_DIST)
        mod = _try_import(prefer=DEBIAN_DIST)
        note = f"bcc from {DEBIAN_DIST} (added to sys.path: this Python is not the system one)"
    if mod is None:
        raise LiveUnavailable("BCC is not importable (python3-bpfcc)", INSTALL_HINT)
    _loaded = (mod, note)
    return _loaded


LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def identity() -> str:
    """What changes when BCC changes (its Python package and libbcc.so.0), found without
    importing it: the import alone costs 0.1-0.15 s here, which a cached program skips."""
    import importlib.util
    from kvmtrace.sources.live.progcache import file_identity
    parts = []
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None and spec.origin else None
    if origin is None or not os.path.exists(origin):
        origin = os.path.join(DEBIAN_DIST, "bcc", "__init__.py")
    version = os.path.join(os.path.dirname(origin), "version.py")
    parts.append(file_identity(origin) + " " + file_identity(version))
    for d in LIB_DIRS:
        lib = os.path.join(d, "libbcc.so.0")
        if os.path.exists(lib):
            parts.append(file_identity(lib))
            break
    return "; ".join(parts) or "bcc not found"


def _try_import(prefer: str | None = None) -> ModuleType | None:
    saved = list(sys.path)
    try:
        if prefer:
            # A PyPI "bcc" earlier on the path must not win over the distribution's.
            sys.path.insert(0, prefer)
        mod = importlib.import_module("bcc")
    except Exception:
        return None
    finally:
        if prefer:
            sys.path[:] = saved
    if not _is_bcc(mod):
        sys.modules.pop("bcc", None)
        return None
    return mod


def privileges() -> tuple[bool, str]:
    """Can this process load and attach BPF tracing programs?

    The effective capability set decides, not the uid: root in a container or under a
    systemd unit with a CapabilityBoundingSet may lack them (bpf(2) then fails with EPERM),
    and a non-root process may hold them (kernel/bpf/syscall.c: bpf_capable(),
    perfmon_capable())."""
    caps = _effective_caps()
    if caps is None:                        # no /proc/self/status: the uid is all we know
        if os.geteuid() == 0:
            return True, "running as root"
        return False, "not root"
    if caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1):
        return True, ("running as root" if os.geteuid() == 0
                      else "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
    who = "root" if os.geteuid() == 0 else "not root"
    return False, f"{who} but without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN (effective set {caps:#x})"


def _effective_caps() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def headers(release: str, root: Path = Path("/")) -> tuple[Path | None, str]:
    """Kernel headers BCC will compile against, and where they come from."""
    build = root / "lib/modules" / release / "build"
    if (build / "include").is_dir() or (build / "Makefile").exists():
        return build, f"{build} -> {os.path.realpath(build)}"
    kheaders = root / "sys/kernel/kheaders.tar.xz"
    if kheaders.exists():
        return kheaders, f"{kheaders} (CONFIG_IKHEADERS)"
    return None, f"{build} missing"


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what libbcc/libbpf print on fd 2 (the kernel's verdict on a load) as lines."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(l for l in tmp.read().decode(errors="replace").splitlines() if l.strip())


def summarize_error(exc: BaseException, stderr: list[str]) -> str:
    """One line: the kernel/libbpf message when there is one, else the exception."""
    for line in stderr:
        if "Failed to load program" in line or "error:" in line or "Permission" in line:
            return line.strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
