"""Facts about the host kvmtrace runs on: kernel, KVM backend, TDP, symbols, tracefs.

Everything here reads files only (no BPF, no BCC), so it works unprivileged as far as the
files allow, and takes a ``root`` so tests can point it at a recorded sysroot under
tests/data/.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmtrace.host import backend as _backend
from kvmtrace.host.backend import Backend
from kvmtrace.host.kallsyms import Kallsyms, Symbol
from kvmtrace.host.kernel import KernelConfig, release
from kvmtrace.host.tracefs import FormatError, TraceField, TracepointFormat, Tracefs, find_mount, parse_format

__all__ = ["HostFacts", "gather", "Backend", "Kallsyms", "Symbol", "KernelConfig", "Tracefs",
           "TracepointFormat", "TraceField", "FormatError", "find_mount", "parse_format"]


@dataclass
class HostFacts:
    root: Path
    kernel_release: str
    config: KernelConfig
    kallsyms: Kallsyms | None
    backend: Backend
    tracefs: Tracefs | None

    @property
    def kvm_backend(self) -> str:
        return self.backend.name

    @property
    def tdp(self) -> bool | None:
        return self.backend.tdp


def gather(root: Path | str = Path("/")) -> HostFacts:
    root = Path(root)
    rel = release(root)
    ksyms = Kallsyms.load(root)
    mount = find_mount(root)
    return HostFacts(root=root, kernel_release=rel, config=KernelConfig.load(root, rel),
                     kallsyms=ksyms, backend=_backend.detect(root, ksyms),
                     tracefs=Tracefs(mount) if mount else None)
