"""The KVM tracepoints kvmtrace records, and how each maps onto a schema row.

Each entry names a tracepoint, the ``Kind`` it becomes, how the kernel side treats it
(``handler``, see kvmtrace/probes/kvmtrace.c) and C expressions for the schema columns it fills.
Expressions name tracepoint fields as ``{field}``; a column lists alternatives, the first
whose fields all exist in the running kernel's ``format`` file wins (field sets differ by
kernel version: ``kvm_exit.requests`` is 6.14+).  The mapping must give the same row as
the text importer gives for the same event, so that analysis treats both alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmtrace.schema import KVM_EXIT_INTR, Kind

# Kernel-side treatment (functions in kvmtrace/probes/kvmtrace.c).
ALWAYS = "kt_always"        # emit every event
OPEN = "kt_open"            # emit, and open a flush window on this thread
PV_FLUSH = "kt_pv_flush"    # need_flush=1: open a window; need_flush=0: first per thread only
EVIDENCE = "kt_evidence"    # emit only inside an open window, else count
GUEST_EXIT = "kt_guest_exit"  # evidence; also a flush request when it shows one pending
OPEN_CR = "kt_cr_write"      # kvm_cr: a CR3/CR4 write opens (kind set from cr)
EMULATE = "kt_emulate"      # evidence; an emulated MOV CR3/CR4, INVLPG or INVPCID also opens

# arch/x86/include/asm/kvm_host.h: KVM_REQ_TLB_FLUSH_GUEST = KVM_ARCH_REQ_FLAGS(27, ...)
# and KVM_REQUEST_ARCH_BASE = 8 (include/linux/kvm_host.h), so a pending guest flush is
# bit 35 of vcpu->requests, which kvm_exit prints since 6.14.
KVM_REQ_TLB_FLUSH_GUEST_BIT = 35

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fields_of(expr: str) -> list[str]:
    return _PLACEHOLDER.findall(expr)


@dataclass(frozen=True)
class TracepointProbe:
    system: str
    event: str
    kind: Kind
    handler: str
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Extra handler argument (alternatives, like a column).  EVIDENCE: a condition that is
    # false for events recorded without using up the window (they do not prove the guest
    # ran).  GUEST_EXIT: true when a guest TLB flush request is pending.
    arg: tuple[str, ...] = ("1",)

    @property
    def name(self) -> str:
        return f"{self.system}:{self.event}"


def _sp(kind: Kind, created: bool = False) -> dict[str, tuple[str, ...]]:
    # kvmmmu KVM_MMU_PAGE_FIELDS (arch/x86/kvm/mmu/mmutrace.h): gfn, role (u32 word of
    # union kvm_mmu_page_role; level = bits 0-3), root_count, unsync.
    cols = {"gfn": ("{gfn}",), "role": ("{role}",), "level": ("{role} & 0xf",),
            "root_count": ("{root_count}",), "unsync": ("{unsync} != 0",)}
    if created:
        cols["created"] = ("{created} != 0",)
    return cols


TRACEPOINTS: tuple[TracepointProbe, ...] = (
    # Flush requests.
    TracepointProbe("kvm", "kvm_pv_tlb_flush", Kind.FLUSH_REQUEST_PV, PV_FLUSH,
                    {"vcpu": ("{vcpu_id}",), "need_flush": ("{need_flush_tlb} != 0",)}),
    TracepointProbe("kvm", "kvm_hv_flush_tlb", Kind.FLUSH_REQUEST_HYPERV, OPEN,
                    {"value": ("{processor_mask}", "0")}),
    TracepointProbe("kvm", "kvm_hv_flush_tlb_ex", Kind.FLUSH_REQUEST_HYPERV, OPEN,
                    {"value": ("{valid_bank_mask}", "0")}),
    # Shadow pages (VM-wide).
    TracepointProbe("kvmmmu", "kvm_mmu_get_page", Kind.SP_GET, ALWAYS, _sp(Kind.SP_GET, True)),
    TracepointProbe("kvmmmu", "kvm_mmu_unsync_page", Kind.SP_UNSYNC, ALWAYS, _sp(Kind.SP_UNSYNC)),
    TracepointProbe("kvmmmu", "kvm_mmu_sync_page", Kind.SP_SYNC, ALWAYS, _sp(Kind.SP_SYNC)),
    TracepointProbe("kvmmmu", "kvm_mmu_prepare_zap_page", Kind.SP_ZAP, ALWAYS, _sp(Kind.SP_ZAP)),
    # Guest-run evidence.
    TracepointProbe("kvm", "kvm_entry", Kind.GUEST_ENTRY, EVIDENCE,
                    {"vcpu": ("{vcpu_id}",), "value": ("{rip}", "0")}),
    TracepointProbe("kvm", "kvm_exit", Kind.GUEST_EXIT, GUEST_EXIT,
                    {"vcpu": ("{vcpu_id}", "-1"), "value": ("{requests}", "-1")},
                    arg=(f"({{requests}} >> {KVM_REQ_TLB_FLUSH_GUEST_BIT}) & 1", "0")),
    TracepointProbe("kvmmmu", "kvm_mmu_set_spte", Kind.SPTE_INSTALL, EVIDENCE,
                    {"gfn": ("{gfn}",), "level": ("{level}",), "value": ("{spte}",)}),
    # On PVM the guest kernel runs at CPL 3, so its MOV to CR3/CR4 and INVLPG trap and are
    # emulated: the instruction bytes name the flush path (kvmtrace/analysis/flushpaths.py).
    TracepointProbe("kvm", "kvm_emulate_insn", Kind.EMULATE, EMULATE, {"value": ("{rip}",)},
                    arg=("{failed} ? 0 : kt_insn_flush({insn})", "kt_insn_flush({insn})",
                         "0")),
    # VMX handle_cr() / SVM cr_interception(): trace_kvm_cr_write(cr, val).  CR3 without
    # the PCID no-flush bit 63, and CR4 (a PGE/PCIDE toggle), are guest flushes.
    TracepointProbe("kvm", "kvm_cr", Kind.FLUSH_CR3, OPEN_CR,
                    {"value": ("{val}",)}, arg=("{rw} ? {cr} : 0",)),
    TracepointProbe("kvm", "kvm_pio", Kind.PIO, EVIDENCE, {"value": ("{port}",)}),
    TracepointProbe("kvm", "kvm_mmio", Kind.MMIO, EVIDENCE, {"value": ("{gpa}",)}),
    TracepointProbe("kvm", "kvm_hypercall", Kind.HYPERCALL, EVIDENCE, {"value": ("{nr}",)}),
    # include/uapi/linux/kvm.h: a KVM_RUN that returned for a signal (errno < 0, or
    # reason KVM_EXIT_INTR) did not necessarily run the guest.
    TracepointProbe("kvm", "kvm_userspace_exit", Kind.USERSPACE_EXIT, EVIDENCE,
                    {"value": ("(s32){errno} < 0 ? (s64)(s32){errno} : (s64){reason}",)},
                    arg=(f"!((s32){{errno}} < 0 || {{reason}} == {KVM_EXIT_INTR})",)),
    TracepointProbe("kvm", "kvm_page_fault", Kind.PAGE_FAULT, EVIDENCE,
                    {"vcpu": ("{vcpu_id}", "-1"), "value": ("{fault_address}",)}),
    TracepointProbe("kvmmmu", "kvm_mmu_pagetable_walk", Kind.WALK_START, EVIDENCE,
                    {"value": ("{addr}",)}),
)

BY_NAME: dict[str, TracepointProbe] = {tp.name: tp for tp in TRACEPOINTS}

# Without these no verdict can be trusted: no flush request opens a window, or a sync KVM
# did is invisible and an ok window would look like a violation.  doctor requires them;
# a live check refuses to judge without them.
REQUIRED = ("kvm:kvm_pv_tlb_flush", "kvmmmu:kvm_mmu_sync_page")


def attached(name: str, probes: list[str] | tuple[str, ...]) -> bool:
    """Is tracepoint ``system:event`` among the attached probe names, as a tracepoint or
    (exact mode, kvmtrace/probes/exact.c) as a raw tracepoint?"""
    event = name.split(":", 1)[-1]
    return f"tracepoint:{name}" in probes or f"raw_tracepoint:{event}" in probes
