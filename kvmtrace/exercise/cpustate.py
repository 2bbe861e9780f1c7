"""The vCPU's initial architectural state: 64-bit long mode with paging on.

KVM_SET_SREGS loads the segment registers' hidden parts directly, so no GDT is needed as
long as the guest never reloads a selector.  Selectors follow Linux's flat layout
(arch/x86/include/asm/segment.h: __KERNEL_CS = 0x10, __KERNEL_DS = 0x18), the one PVM's
guest ABI expects; VMX and SVM accept any.
"""
from __future__ import annotations

from kvmtrace.exercise.kvmabi import KvmRegs, KvmSegment, KvmSregs

KERNEL_CS, KERNEL_DS = 0x10, 0x18

# Intel SDM vol. 3A §2.5 (CR0/CR4), §2.2.1 (EFER).
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PCIDE = 1 << 5, 1 << 9, 1 << 10, 1 << 17
# CR3 with CR4.PCIDE: bits 11:0 the PCID; bit 63 "no flush" (SDM vol. 3A §4.10.4.1).
CR3_PCID_MASK = 0xFFF
CR3_NOFLUSH = 1 << 63
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11

CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
EFER = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
RFLAGS_FIXED = 1 << 1           # bit 1 always reads as 1


def _flat_segment(selector: int, seg_type: int, long_mode: bool) -> KvmSegment:
    return KvmSegment(base=0, limit=0xFFFFFFFF, selector=selector, type=seg_type, present=1,
                      dpl=0, db=0 if long_mode else 1, s=1, l=1 if long_mode else 0, g=1)


def long_mode_sregs(sregs: KvmSregs, cr3: int) -> KvmSregs:
    """Turn KVM's reset-state sregs into 64-bit supervisor mode on page tables at ``cr3``
    (TR, LDT, GDT and IDT keep KVM's reset values)."""
    sregs.cs = _flat_segment(KERNEL_CS, 0xB, long_mode=True)        # execute/read, accessed
    data = _flat_segment(KERNEL_DS, 0x3, long_mode=False)           # read/write, accessed
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.cr0, sregs.cr4, sregs.efer, sregs.cr3 = CR0, CR4, EFER, cr3
    return sregs


def entry_regs(rip: int, rbx: int) -> KvmRegs:
    """General registers at entry: rip at the guest code, rbx = the control block."""
    return KvmRegs(rip=rip, rbx=rbx, rflags=RFLAGS_FIXED)
