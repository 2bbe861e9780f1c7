"""The VM and its vCPUs: /dev/kvm file descriptors, guest memory, register state.

A ``Vm`` is the fd ``KVM_CREATE_VM`` returns plus one anonymous mapping registered as
memory slot 0 at GPA 0.  A ``Vcpu`` is the fd ``KVM_CREATE_VCPU`` returns plus its mmap'ed
``struct kvm_run``.  No in-kernel irqchip: the guest takes no interrupts.
"""
from __future__ import annotations

import ctypes as C
import mmap
import os
import struct

from kvmtrace.exercise import kvmabi as abi
from kvmtrace.exercise.paravirt import KVM_CPUID_FEATURES


class Kvm:
    """An open /dev/kvm (the system fd)."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            version = abi.ioctl(self.fd, abi.KVM_GET_API_VERSION)
            if version != abi.KVM_API_VERSION:
                raise OSError(f"{path}: KVM API version {version}, expected {abi.KVM_API_VERSION}")
            self.vcpu_mmap_size = abi.ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE)
        except Exception:
            os.close(self.fd)
            raise

    def supported_cpuid(self) -> abi.KvmCpuid2:
        cpuid = abi.KvmCpuid2(nent=abi.CPUID_MAX_ENTRIES)
        abi.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, cpuid)
        return cpuid

    def close(self) -> None:
        os.close(self.fd)


def cpuid_leaf(cpuid: abi.KvmCpuid2, function: int, index: int = 0) -> abi.KvmCpuidEntry2 | None:
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        if e.function == function and e.index == index:
            return e
    return None


def pv_features(cpuid: abi.KvmCpuid2) -> int | None:
    """eax of KVM_CPUID_FEATURES (0x40000001), or None when KVM does not offer the leaf."""
    leaf = cpuid_leaf(cpuid, KVM_CPUID_FEATURES)
    return None if leaf is None else leaf.eax


class Vm:
    def __init__(self, kvm: Kvm, memory_size: int) -> None:
        self.kvm = kvm
        self.vcpus: list[Vcpu] = []
        self.fd = abi.ioctl(kvm.fd, abi.KVM_CREATE_VM, 0)
        try:
            self.mem = mmap.mmap(-1, memory_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            self._mem_ptr = C.c_char.from_buffer(self.mem)
            region = abi.KvmUserspaceMemoryRegion(slot=0, flags=0, guest_phys_addr=0,
                                                  memory_size=memory_size,
                                                  userspace_addr=C.addressof(self._mem_ptr))
            abi.ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region)
        except BaseException:
            self.close()                 # the caller never gets a Vm to close
            raise

    def create_vcpu(self, index: int) -> "Vcpu":
        vcpu = Vcpu(self, index)
        self.vcpus.append(vcpu)
        return vcpu

    def read64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.mem, gpa)[0]

    def write64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, gpa, value)

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        os.close(self.fd)
        if hasattr(self, "_mem_ptr"):
            del self._mem_ptr            # the exported buffer must go before the mmap
        if hasattr(self, "mem"):
            self.mem.close()


class GuestStopped(RuntimeError):
    """KVM_RUN returned for a reason other than the guest's park OUT."""


class Vcpu:
    def __init__(self, vm: Vm, index: int) -> None:
        self.index = index
        self.fd = abi.ioctl(vm.fd, abi.KVM_CREATE_VCPU, index)
        self.run_area = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)

    # -- state -----------------------------------------------------------------------
    def set_cpuid(self, cpuid: abi.KvmCpuid2) -> None:
        abi.ioctl(self.fd, abi.KVM_SET_CPUID2, cpuid)

    def get_sregs(self) -> abi.KvmSregs:
        sregs = abi.KvmSregs()
        abi.ioctl(self.fd, abi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: abi.KvmSregs) -> None:
        abi.ioctl(self.fd, abi.KVM_SET_SREGS, sregs)

    def get_regs(self) -> abi.KvmRegs:
        regs = abi.KvmRegs()
        abi.ioctl(self.fd, abi.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: abi.KvmRegs) -> None:
        abi.ioctl(self.fd, abi.KVM_SET_REGS, regs)

    def set_msrs(self, entries: list[tuple[int, int]]) -> None:
        """KVM_SET_MSRS returns how many it set; it stops at the first MSR it refuses."""
        done = abi.ioctl(self.fd, abi.KVM_SET_MSRS, abi.kvm_msrs(entries))
        if done != len(entries):
            index = entries[done][0]
            raise OSError(f"KVM_SET_MSRS refused MSR {index:#x} = {entries[done][1]:#x}")

    def get_msr(self, index: int) -> int | None:
        """An MSR's value, or None when KVM does not know it."""
        msrs = abi.kvm_msrs([(index, 0)])
        done = abi.ioctl(self.fd, abi.KVM_GET_MSRS, msrs)
        return msrs.entries[0].data if done == 1 else None

    # -- running ---------------------------------------------------------------------
    def run_until_port(self, port: int) -> None:
        """KVM_RUN until the guest executes OUT to ``port``.  A signal interrupting the
        ioctl (EINTR, or KVM_EXIT_INTR) just re-enters: the guest state is intact."""
        while True:
            try:
                abi.ioctl(self.fd, abi.KVM_RUN)
            except OSError as exc:
                if abi.is_eintr(exc):
                    continue
                raise
            reason = struct.unpack_from("<I", self.run_area, abi.RUN_EXIT_REASON_OFFSET)[0]
            if reason == abi.KVM_EXIT_INTR:
                continue
            if reason == abi.KVM_EXIT_IO:
                got = struct.unpack_from("<H", self.run_area, abi.RUN_IO_PORT_OFFSET)[0]
                if got == port:
                    return
                raise GuestStopped(f"vCPU {self.index}: OUT to unexpected port {got:#x}"
                                   f" at rip {self.get_regs().rip:#x}")
            name = abi.EXIT_REASONS.get(reason, str(reason))
            raise GuestStopped(f"vCPU {self.index}: KVM_EXIT_{name} at rip {self.get_regs().rip:#x}")

    def close(self) -> None:
        self.run_area.close()
        os.close(self.fd)
