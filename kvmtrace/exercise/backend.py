"""Which KVM backend runs the guest (VMX, SVM or PVM), whether it uses TDP, and its quirks.

- ``kvm_intel`` / ``kvm_amd``: the standard x86 API is enough.  Whether guests run on the
  shadow MMU (and so are exposed to flush-before-sync bugs) is ``kvm_intel.ept`` /
  ``kvm_amd.npt`` being off (DESIGN.md §2; on 4.19 ``npt`` is the requested value).
- ``kvm_pvm`` (Pagetable-based VM): no hardware virtualisation, always the shadow MMU.  A
  vCPU runs natively only in 64-bit mode with a registered "VIF" page (MSR 0x4b564d10 =
  page-aligned GPA | 0x400 from the host); every present paging entry at every level needs
  the User bit because the guest kernel really runs at CPL3.  A PVM host answers the info
  MSR 0x4b564d11 with the signature 0x4d5650 ("PVM"), which the VM confirms at run time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvmtrace.host.backend import tdp_param

PVM_MSR_VIF = 0x4b564d10           # VIF page: GPA | PVM_VIF_HOST_ENABLE
PVM_VIF_HOST_ENABLE = 0x400
PVM_MSR_INFO_SIGNATURE = 0x4b564d11
PVM_SIGNATURE = 0x4d5650           # "PVM"

VMX, SVM, PVM, UNKNOWN = "vmx", "svm", "pvm", "unknown"
_MODULES = {PVM: "kvm_pvm", VMX: "kvm_intel", SVM: "kvm_amd"}


@dataclass(frozen=True)
class Quirks:
    """What a backend needs beyond the standard KVM x86 API."""

    user_bit_everywhere: bool = False  # set U in every present paging entry
    vif_page: bool = False             # register a VIF page with PVM_MSR_VIF


QUIRKS = {PVM: Quirks(user_bit_everywhere=True, vif_page=True), VMX: Quirks(), SVM: Quirks()}


@dataclass(frozen=True)
class Backend:
    name: str                # vmx, svm, pvm or unknown
    module: str | None       # the kernel module providing it
    tdp: bool | None         # two-dimensional paging (EPT/NPT) on; None when unknown

    @property
    def exposed(self) -> bool:
        """Guests run on the shadow MMU: the flush-before-sync bug class can bite."""
        return self.tdp is False

    @property
    def quirks(self) -> Quirks | None:
        return QUIRKS.get(self.name)


def detect_backend(sys_module: str | os.PathLike = "/sys/module") -> Backend:
    """The loaded KVM vendor module, from /sys/module (no VM needed)."""
    root = Path(sys_module)
    if (root / _MODULES[PVM]).is_dir():
        return Backend(PVM, _MODULES[PVM], tdp=False)
    for name in (VMX, SVM):
        if (root / _MODULES[name]).is_dir():
            return Backend(name, _MODULES[name], tdp_param(root, _MODULES[name])[0])
    return Backend(UNKNOWN, None, None)
