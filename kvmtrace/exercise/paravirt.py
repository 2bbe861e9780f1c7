"""The KVM paravirtual guest ABI the exercise uses: steal time and the PV TLB flush.

From ``arch/x86/include/uapi/asm/kvm_para.h``:
- CPUID ``0x40000001`` (KVM_CPUID_FEATURES) eax bit 5 ``KVM_FEATURE_STEAL_TIME`` and bit 9
  ``KVM_FEATURE_PV_TLB_FLUSH``.  ``KVM_GET_SUPPORTED_CPUID`` reports them
  (arch/x86/kvm/cpuid.c, ``__do_cpuid_func``; steal time only when ``sched_info_on()``),
  and they must stay in what ``KVM_SET_CPUID2`` gives the guest: ``record_steal_time()``
  checks ``guest_pv_has(vcpu, KVM_FEATURE_PV_TLB_FLUSH)`` before honouring the flush bit.
- ``MSR_KVM_STEAL_TIME`` (0x4b564d03) = 64-byte-aligned GPA | ``KVM_MSR_ENABLED`` (1).
- ``struct kvm_steal_time`` {u64 steal; u32 version; u32 flags; u8 preempted; ...}: the
  ``preempted`` byte at offset 16; bit 0 ``KVM_VCPU_PREEMPTED``, bit 1 ``KVM_VCPU_FLUSH_TLB``.

A Linux guest's ``kvm_flush_tlb_multi()`` (arch/x86/kernel/kvm.c) sets KVM_VCPU_FLUSH_TLB
in a preempted target's ``preempted`` byte instead of sending an IPI; on that vCPU's next
entry ``record_steal_time()`` (arch/x86/kvm/x86.c) exchanges the byte with 0, emits
``kvm:kvm_pv_tlb_flush`` and calls ``kvm_vcpu_flush_tlb_guest()``.  Every ``KVM_RUN``
loads the vCPU, and ``kvm_arch_vcpu_load()`` requests that steal-time update.
"""
from __future__ import annotations

KVM_CPUID_SIGNATURE = 0x40000000       # ebx,ecx,edx = "KVMKVMKVM\0\0\0"
KVM_CPUID_FEATURES = 0x40000001
KVM_FEATURE_STEAL_TIME = 5
KVM_FEATURE_PV_TLB_FLUSH = 9

MSR_KVM_STEAL_TIME = 0x4b564d03
KVM_MSR_ENABLED = 1

STEAL_TIME_SIZE = 64                   # sizeof(struct kvm_steal_time), and its alignment
STEAL_TIME_PREEMPTED_OFFSET = 16
KVM_VCPU_PREEMPTED = 1 << 0
KVM_VCPU_FLUSH_TLB = 1 << 1

REQUIRED_FEATURES = {KVM_FEATURE_STEAL_TIME: "KVM_FEATURE_STEAL_TIME",
                     KVM_FEATURE_PV_TLB_FLUSH: "KVM_FEATURE_PV_TLB_FLUSH"}


def missing_features(features_eax: int | None) -> list[str]:
    """Names of the PV features the exercise needs that CPUID 0x40000001 eax lacks."""
    if features_eax is None:
        return ["KVM_CPUID_FEATURES leaf"]
    return [name for bit, name in REQUIRED_FEATURES.items() if not features_eax >> bit & 1]


def steal_time_msr_value(gpa: int) -> int:
    """The MSR_KVM_STEAL_TIME value that enables steal time at ``gpa``."""
    if gpa % STEAL_TIME_SIZE:
        raise ValueError(f"steal-time area {gpa:#x} is not {STEAL_TIME_SIZE}-byte aligned")
    return gpa | KVM_MSR_ENABLED
