"""The exercise guest: a VM with the layout's memory, page tables, code and vCPUs set up.

Standard KVM x86 API only (KVM_SET_CPUID2, KVM_SET_SREGS, KVM_SET_REGS, KVM_SET_MSRS),
plus the backend quirks ``backend.Quirks`` names once the backend is known.
"""
from __future__ import annotations

from dataclasses import dataclass

from kvmtrace.exercise import backend as be
from kvmtrace.exercise.cpustate import CR4_PCIDE, entry_regs, long_mode_sregs
from kvmtrace.exercise.guestcode import CODE
from kvmtrace.exercise.layout import CODE_GPA, Layout
from kvmtrace.exercise.paravirt import MSR_KVM_STEAL_TIME, missing_features, steal_time_msr_value
from kvmtrace.exercise.vm import Kvm, Vcpu, Vm, cpuid_leaf, pv_features

CPUID_1_ECX_PCID = 1 << 17       # Intel SDM vol. 2A, CPUID leaf 01H ECX bit 17


def offers_pcid(cpuid) -> bool:
    """Does KVM offer PCIDs to guests (KVM_GET_SUPPORTED_CPUID leaf 1 ECX.PCID)?
    PVM on the development host does not; VMX and SVM hosts usually do."""
    leaf = cpuid_leaf(cpuid, 1)
    return leaf is not None and bool(leaf.ecx & CPUID_1_ECX_PCID)


class GuestSetupError(RuntimeError):
    """The host refused part of the guest's setup (the exercise cannot run here)."""


@dataclass
class Guest:
    kvm: Kvm
    vm: Vm
    layout: Layout
    backend: be.Backend
    pvm_signature: bool
    pcid: bool = False           # CR4.PCIDE on: CR3 loads carry a PCID and may set NOFLUSH

    @property
    def vcpus(self) -> list[Vcpu]:
        return self.vm.vcpus

    def close(self) -> None:
        self.vm.close()
        self.kvm.close()


def _confirm_pvm(vcpu: Vcpu) -> bool:
    """PVM answers its info MSR with the "PVM" signature; other backends do not know it."""
    return vcpu.get_msr(be.PVM_MSR_INFO_SIGNATURE) == be.PVM_SIGNATURE


def _setup_vcpu(vcpu: Vcpu, layout: Layout, cpuid, quirks: be.Quirks, pcid: bool) -> None:
    vcpu.set_cpuid(cpuid)       # first: CR4 and MSR checks depend on the guest's CPUID
    sregs = long_mode_sregs(vcpu.get_sregs(), layout.spaces[vcpu.index].pml4)
    if pcid:
        sregs.cr4 |= CR4_PCIDE
    vcpu.set_sregs(sregs)
    vcpu.set_regs(entry_regs(CODE_GPA, layout.ctl(vcpu.index)))
    msrs = [(MSR_KVM_STEAL_TIME, steal_time_msr_value(layout.steal_time(vcpu.index)))]
    if quirks.vif_page:
        msrs.append((be.PVM_MSR_VIF, layout.vif(vcpu.index) | be.PVM_VIF_HOST_ENABLE))
    vcpu.set_msrs(msrs)


def build_guest(vcpus: int, tables: int, device: str = "/dev/kvm",
                address_spaces: int = 1) -> Guest:
    """Create and set up the VM; the caller must ``close()`` it.  With several address
    spaces, PCIDs are turned on where KVM offers them."""
    layout = Layout.build(vcpus, tables, address_spaces)
    kvm = Kvm(device)
    vm = None
    try:
        cpuid = kvm.supported_cpuid()
        missing = missing_features(pv_features(cpuid))
        if missing:
            raise GuestSetupError("KVM does not offer " + ", ".join(missing))
        vm = Vm(kvm, layout.memory_size)
        first = vm.create_vcpu(0)
        pvm = _confirm_pvm(first)
        backend = be.detect_backend()
        if pvm and backend.name != be.PVM:
            backend = be.Backend(name=be.PVM, present=[be.PVM], kvm_present=True, tdp=False,
                                 tdp_source="the vCPU answered the PVM signature")
        quirks = backend.quirks
        if quirks is None:
            raise GuestSetupError("no supported KVM backend (kvm_intel, kvm_amd or kvm_pvm) found")
        layout.write_page_tables(vm.mem, user=quirks.user_bit_everywhere)
        vm.mem[CODE_GPA:CODE_GPA + len(CODE)] = CODE
        for index in range(1, vcpus):
            vm.create_vcpu(index)
        pcid = address_spaces > 1 and offers_pcid(cpuid)
        for vcpu in vm.vcpus:
            try:
                _setup_vcpu(vcpu, layout, cpuid, quirks, pcid)
            except OSError as exc:
                raise GuestSetupError(f"setting up vCPU {vcpu.index}: {exc}") from exc
        return Guest(kvm, vm, layout, backend, pvm, pcid)
    except BaseException:
        if vm is not None:
            vm.close()
        kvm.close()
        raise
