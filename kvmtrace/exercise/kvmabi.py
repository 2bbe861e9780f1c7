"""The /dev/kvm ioctl ABI: ioctl numbers, the structures they take, and a GIL-free ioctl.

Layouts are those of ``include/uapi/linux/kvm.h`` (``struct kvm_run``,
``kvm_userspace_memory_region``, ``kvm_msrs``, ``kvm_cpuid2``) and
``arch/x86/include/uapi/asm/kvm.h`` (``struct kvm_regs``, ``kvm_sregs``, ``kvm_segment``,
``kvm_dtable``, ``kvm_msr_entry``, ``kvm_cpuid_entry2``).  They are UAPI: stable since
KVM_API_VERSION 12 (Linux 2.6.22), which is why they can be written down here rather than
discovered.  Only what the exercise guest needs is modelled.
"""
from __future__ import annotations

import ctypes as C
import errno
import os

KVMIO = 0xAE
KVM_API_VERSION = 12

# _IOC() of include/uapi/asm-generic/ioctl.h: dir(2) | size(14) | type(8) | nr(8).
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


class KvmRegs(C.Structure):
    """struct kvm_regs (arch/x86/include/uapi/asm/kvm.h)."""
    _fields_ = [(n, C.c_uint64) for n in
                "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()]


class KvmSegment(C.Structure):
    """struct kvm_segment: a segment register's hidden (descriptor cache) part."""
    _fields_ = ([("base", C.c_uint64), ("limit", C.c_uint32), ("selector", C.c_uint16)]
                + [(n, C.c_uint8) for n in "type present dpl db s l g avl unusable padding".split()])


class KvmDtable(C.Structure):
    """struct kvm_dtable: GDTR/IDTR."""
    _fields_ = [("base", C.c_uint64), ("limit", C.c_uint16), ("padding", C.c_uint16 * 3)]


class KvmSregs(C.Structure):
    """struct kvm_sregs: segments, control registers, EFER."""
    _fields_ = ([(n, KvmSegment) for n in "cs ds es fs gs ss tr ldt".split()]
                + [("gdt", KvmDtable), ("idt", KvmDtable)]
                + [(n, C.c_uint64) for n in "cr0 cr2 cr3 cr4 cr8 efer apic_base".split()]
                + [("interrupt_bitmap", C.c_uint64 * 4)])


class KvmMsrEntry(C.Structure):
    """struct kvm_msr_entry."""
    _fields_ = [("index", C.c_uint32), ("reserved", C.c_uint32), ("data", C.c_uint64)]


class KvmMsrsHeader(C.Structure):
    """struct kvm_msrs without its flexible array (the size encoded in the ioctl number)."""
    _fields_ = [("nmsrs", C.c_uint32), ("pad", C.c_uint32)]


def kvm_msrs(entries: list[tuple[int, int]]) -> C.Structure:
    """A struct kvm_msrs holding (index, data) pairs."""
    class KvmMsrs(C.Structure):
        _fields_ = [("nmsrs", C.c_uint32), ("pad", C.c_uint32),
                    ("entries", KvmMsrEntry * max(1, len(entries)))]
    out = KvmMsrs(nmsrs=len(entries))
    for i, (index, data) in enumerate(entries):
        out.entries[i].index, out.entries[i].data = index, data
    return out


class KvmCpuidEntry2(C.Structure):
    """struct kvm_cpuid_entry2: one CPUID leaf/subleaf."""
    _fields_ = [(n, C.c_uint32) for n in
                "function index flags eax ebx ecx edx padding0 padding1 padding2".split()]


class KvmCpuid2Header(C.Structure):
    """struct kvm_cpuid2 without its flexible array."""
    _fields_ = [("nent", C.c_uint32), ("padding", C.c_uint32)]


CPUID_MAX_ENTRIES = 256


class KvmCpuid2(C.Structure):
    """struct kvm_cpuid2 with room for CPUID_MAX_ENTRIES leaves."""
    _fields_ = [("nent", C.c_uint32), ("padding", C.c_uint32),
                ("entries", KvmCpuidEntry2 * CPUID_MAX_ENTRIES)]


class KvmUserspaceMemoryRegion(C.Structure):
    """struct kvm_userspace_memory_region: one memory slot."""
    _fields_ = [("slot", C.c_uint32), ("flags", C.c_uint32), ("guest_phys_addr", C.c_uint64),
                ("memory_size", C.c_uint64), ("userspace_addr", C.c_uint64)]


# ioctl numbers (include/uapi/linux/kvm.h).
KVM_GET_API_VERSION = _ioc(_IOC_NONE, 0x00, 0)
KVM_CREATE_VM = _ioc(_IOC_NONE, 0x01, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(_IOC_NONE, 0x04, 0)
KVM_GET_SUPPORTED_CPUID = _ioc(_IOC_READ | _IOC_WRITE, 0x05, C.sizeof(KvmCpuid2Header))
KVM_CREATE_VCPU = _ioc(_IOC_NONE, 0x41, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, C.sizeof(KvmUserspaceMemoryRegion))
KVM_RUN = _ioc(_IOC_NONE, 0x80, 0)
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, C.sizeof(KvmRegs))
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, C.sizeof(KvmRegs))
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, C.sizeof(KvmSregs))
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, C.sizeof(KvmSregs))
KVM_GET_MSRS = _ioc(_IOC_READ | _IOC_WRITE, 0x88, C.sizeof(KvmMsrsHeader))
KVM_SET_MSRS = _ioc(_IOC_WRITE, 0x89, C.sizeof(KvmMsrsHeader))
KVM_SET_CPUID2 = _ioc(_IOC_WRITE, 0x90, C.sizeof(KvmCpuid2Header))

# struct kvm_run: exit_reason is the u32 at offset 8; for KVM_EXIT_IO the union at offset
# 32 holds {u8 direction; u8 size; u16 port; u32 count; u64 data_offset}.
RUN_EXIT_REASON_OFFSET = 8
RUN_IO_PORT_OFFSET = 32 + 2
EXIT_REASONS = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT",
                6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR",
                17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT"}
KVM_EXIT_IO = 2
KVM_EXIT_INTR = 10

_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_void_p]
_libc.ioctl.restype = C.c_int
_libc.prctl.argtypes = [C.c_int, C.c_char_p, C.c_ulong, C.c_ulong, C.c_ulong]


class KvmIoctlError(OSError):
    """An ioctl on /dev/kvm, a VM or a vCPU failed."""


def ioctl(fd: int, request: int, arg: C.Structure | int | None = None) -> int:
    """ioctl(2) through ctypes, which releases the GIL for the call: a vCPU thread blocked
    in KVM_RUN does not stop other Python threads (a recorder, say) from running."""
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = C.addressof(arg)
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = C.get_errno()
        raise KvmIoctlError(err, f"ioctl {request:#x}: {os.strerror(err)}")
    return ret


def is_eintr(exc: OSError) -> bool:
    return exc.errno == errno.EINTR


PR_SET_NAME = 15     # include/uapi/linux/prctl.h


def set_thread_name(name: str) -> None:
    """Name the calling thread (its /proc/<pid>/task/<tid>/comm, at most 15 bytes)."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
