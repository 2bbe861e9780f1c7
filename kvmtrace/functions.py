"""The KVM functions kvmtrace probes (kprobe/kretprobe, fentry/fexit) and the event kind each maps to.

One table for every consumer: the text importers recognise a probe by the function it names
(``NAME: (kvm_mmu_load+0x0/0x1d0)``, ``probe:kvm_mmu_load__return:``), and the live recorder
chooses its attach points from the same list.  Which of these symbols exist is a property of
the running kernel: discover them in ``/proc/kallsyms`` / ``available_filter_functions``, never
from the version number.  Versions below are where the function first/last appeared upstream
(see docs/design.md §2 for the flush paths they make up).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kvmtrace.schema import Kind


@dataclass(frozen=True)
class ProbedFunction:
    name: str
    entry: Kind | None        # kind of a probe at function entry
    ret: Kind | None          # kind of a return probe (None: returns carry nothing we use)
    role: str                 # what the function does in the guest-flush path
    versions: str             # upstream kernels that have it (and inlining caveats)


PROBED_FUNCTIONS: tuple[ProbedFunction, ...] = (
    ProbedFunction(
        "kvm_vcpu_flush_tlb_guest", Kind.FLUSH_GUEST_ENTRY, Kind.FLUSH_GUEST_RETURN,
        "arch/x86/kvm/x86.c: services a guest TLB flush (PV steal-time flag, "
        "KVM_REQ_TLB_FLUSH_GUEST); since 5.13 it must unload or sync shadow roots first",
        "5.7+ (static, usually inlined: absent from kallsyms on Debian 6.1 and on 6.18)"),
    ProbedFunction(
        "kvm_service_local_tlb_flush_requests", Kind.FLUSH_SERVICE, None,
        "arch/x86/kvm/x86.c: handles pending KVM_REQ_TLB_FLUSH_CURRENT/_GUEST before entry",
        "5.16+, backported to 5.15.y"),
    ProbedFunction(
        "kvm_mmu_unload", Kind.MMU_UNLOAD, None,
        "arch/x86/kvm/mmu/mmu.c: frees the vCPU's roots (the 5.13-5.15 flush path)",
        "all versions"),
    ProbedFunction(
        "kvm_mmu_load", Kind.MMU_LOAD_ENTRY, Kind.MMU_LOAD_RETURN,
        "arch/x86/kvm/mmu/mmu.c: allocates roots before entry and calls kvm_mmu_sync_roots(); "
        "returns 0 or -errno",
        "all versions"),
    ProbedFunction(
        "kvm_mmu_sync_roots", Kind.SYNC_ROOTS, None,
        "arch/x86/kvm/mmu/mmu.c: syncs unsync SPs reachable from the current root",
        "all versions"),
    ProbedFunction(
        "kvm_mmu_sync_prev_roots", Kind.SYNC_PREV_ROOTS, None,
        "arch/x86/kvm/mmu/mmu.c: syncs the cached previous roots (the 5.16+ flush path)",
        "5.16+"),
    # Vendor hardware flushes (kvm_x86_ops.flush_tlb_guest and its predecessors).
    ProbedFunction(
        "vmx_flush_tlb_guest", Kind.HW_FLUSH, None,
        "arch/x86/kvm/vmx/vmx.c: INVVPID/INVEPT of the guest's context", "5.7+"),
    ProbedFunction(
        "vmx_flush_tlb", Kind.HW_FLUSH, None,
        "arch/x86/kvm/vmx/vmx.c: the one VMX flush hook before tlb_flush_guest existed",
        "up to 5.6"),
    ProbedFunction(
        "svm_flush_tlb", Kind.HW_FLUSH, None,
        "arch/x86/kvm/svm/svm.c: new ASID / TLB_CONTROL flush", "up to 5.17"),
    ProbedFunction(
        "svm_flush_tlb_current", Kind.HW_FLUSH, None,
        "arch/x86/kvm/svm/svm.c: flush of the current ASID", "6.0-6.1"),
    ProbedFunction(
        "svm_flush_tlb_asid", Kind.HW_FLUSH, None,
        "arch/x86/kvm/svm/svm.c: flush of the current ASID", "6.6+"),
    ProbedFunction(
        "svm_flush_tlb_guest", Kind.HW_FLUSH, None,
        "arch/x86/kvm/svm/svm.c: the SVM tlb_flush_guest hook", "kernels that define it"),
    ProbedFunction(
        "pvm_flush_tlb_guest", Kind.HW_FLUSH, None,
        "kvm_pvm backend (out of tree): hardware flush for the PVM guest", "PVM hosts"),
)

BY_NAME: dict[str, ProbedFunction] = {f.name: f for f in PROBED_FUNCTIONS}

# Any other backend's kvm_x86_ops.flush_tlb_guest implementation (e.g. a new vendor
# module) is a hardware flush too; kvm_vcpu_flush_tlb_guest itself is matched exactly first.
_VENDOR_FLUSH = re.compile(r"^[a-z0-9]+_flush_tlb_guest$")

# perf probe names its events after the function, adding "__return" for return probes and
# "_N" when the same function is probed twice (tools/perf/util/probe-event.c).
_PERF_RETURN = "__return"
_PERF_DUP = re.compile(r"^(.*)_\d+$")


def lookup(func: str) -> ProbedFunction | None:
    """The probed function called ``func`` (a symbol, without offset or module).

    A compiler clone (``kvm_mmu_load.isra.0``, ``.constprop.0``, ``.part.0``) is the same
    function for our purposes: calls through it are calls of the original.
    """
    known = BY_NAME.get(func)
    if known is not None:
        return known
    base = func.split(".", 1)[0]
    if base != func:
        return lookup(base)
    if _VENDOR_FLUSH.match(func):
        return ProbedFunction(func, Kind.HW_FLUSH, None, "vendor flush_tlb_guest hook", "")
    return None


def kind_for(func: str, is_return: bool) -> Kind | None:
    """Event kind of a probe on ``func``; None for an unknown function or an unused return."""
    f = lookup(func)
    if f is None:
        return None
    return f.ret if is_return else f.entry


def perf_probe_function(event: str) -> tuple[str, bool] | None:
    """(function, is_return) named by a perf probe event such as ``kvm_mmu_load__return``."""
    is_return = event.endswith(_PERF_RETURN)
    name = event[: -len(_PERF_RETURN)] if is_return else event
    if lookup(name) is not None:
        return name, is_return
    dup = _PERF_DUP.match(name)
    if dup and lookup(dup.group(1)) is not None:
        return dup.group(1), is_return
    return None
