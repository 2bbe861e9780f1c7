"""The KVM backend the built-in guest runs on: ``kvmtrace.host.backend.Backend`` (one class
and vocabulary with ``doctor``: kvm_intel, kvm_amd, kvm_pvm), found from /sys/module, and
the PVM guest ABI constants (docs/design.md §5).

- ``kvm_intel`` / ``kvm_amd``: the standard x86 API is enough.  Whether guests run on the
  shadow MMU (and so are exposed to flush-before-sync bugs) is ``kvm_intel.ept`` /
  ``kvm_amd.npt`` being off (docs/design.md §2; on 4.19 ``npt`` is the requested value).
- ``kvm_pvm``: always the shadow MMU.  A vCPU runs natively only in 64-bit mode with a
  registered "VIF" page (MSR 0x4b564d10 = page-aligned GPA | 0x400 from the host); a PVM
  host answers the info MSR 0x4b564d11 with the signature 0x4d5650 ("PVM"), which the VM
  confirms at run time.
"""
from __future__ import annotations

import os
from pathlib import Path

from kvmtrace.host.backend import Backend, Quirks, from_sys_module

__all__ = ["Backend", "Quirks", "detect_backend", "PVM"]

PVM_MSR_VIF = 0x4b564d10           # VIF page: GPA | PVM_VIF_HOST_ENABLE
PVM_VIF_HOST_ENABLE = 0x400
PVM_MSR_INFO_SIGNATURE = 0x4b564d11
PVM_SIGNATURE = 0x4d5650           # "PVM"

PVM = "kvm_pvm"


def detect_backend(sys_module: str | os.PathLike = "/sys/module") -> Backend:
    """The loaded KVM vendor module, from /sys/module (no VM needed)."""
    return from_sys_module(Path(sys_module))
