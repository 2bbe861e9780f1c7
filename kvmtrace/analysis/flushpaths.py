"""Every way a guest asks KVM to flush its TLB, and what KVM must sync before it runs again.

One row per guest flush path: the guest action, the host function that services it (file,
function, the kernel versions it holds for), the events that reveal it on each backend, and
the sync obligation it carries under shadow paging.  Each row has its own opener kind
(``schema.Kind``); a window opened by that kind is named after the row (``FlushWindow.opener``)
and carries the row's obligation.  The replay (replay.py) opens the windows; window.py
judges them.

Obligations (what "synced" means when the window closes):

- ``full``: nothing reachable from the vCPU's roots may stay unsync.
  ``kvm_vcpu_flush_tlb_guest()`` (arch/x86/kvm/x86.c; 5.16+ ``kvm_mmu_sync_roots()`` +
  ``kvm_mmu_sync_prev_roots()``, 5.13-5.15 ``kvm_mmu_unload()``).
- ``root``: the root the vCPU runs on after the action (the new CR3's) must be synced:
  ``kvm_set_cr3()`` -> ``kvm_invalidate_pcid()`` raises ``KVM_REQ_MMU_SYNC``
  (``kvm_mmu_sync_roots``) for the active PCID (arch/x86/kvm/x86.c, 5.12+; before, the
  same through ``kvm_mmu_new_pgd(..., skip_tlb_flush=false)``).
- ``address``: only the SPTEs that map the flushed address in unsync SPs: 6.4+
  ``kvm_mmu_invalidate_addr()`` -> ``mmu->sync_spte()`` per unsync SP on the walk; before,
  ``FNAME(invlpg)`` (mmu/paging_tmpl.h) zapped the leaf SPTE.  No tracepoint shows the
  per-SPTE sync; the guest's next access to the address faulting in again shows the stale
  SPTE is gone.

Observed on this project's PVM host (kernel 6.18, kvm_pvm built in), with kvmtrace's own
guest: MOV to CR3 / CR4 and INVLPG trap (CPL 3) and are emulated (``kvm:kvm_emulate_insn``
prints the bytes; ``kvm:kvm_cr`` does not fire); CR3 and CR4.PGE writes were followed by
``kvm_mmu_sync_page`` of the unsync SP, INVLPG by a re-fault on the address without a
``sync_page``; INVPCID failed to emulate (KVM_EXIT_INTERNAL_ERROR).  Its hypercalls are
``int 0x1b`` with the number in RAX: 0x1007 (flush TLB) and 0x100e (flush TLB multi) synced
the unsync SP, 0x1008 (one address) re-faulted it; the upstream PVM numbers 0x17088200 -
0x17088205 returned -ENOSYS.

How a PVM flush hypercall is seen (the same host; kvm_pvm has no published source, so this
is what its BTF and its tracepoints show, not a reading of its code):
- no ``kvm:*`` or ``kvmmmu:*`` event fires for the hypercall itself: ``kvm:kvm_exit`` /
  ``kvm_entry`` are emitted by the VMX/SVM run loops only and never fire here, and
  ``kvm:kvm_hypercall`` comes only from ``kvm_emulate_hypercall()`` (arch/x86/kvm/x86.c),
  which PVM's own hypercalls never reach.  A raw tracepoint on every kvm/kvmmmu event of the
  vCPU thread saw, per hypercall, only the ``kvm_mmu_sync_page`` it causes, and nothing when
  nothing is unsync (or when a broken host skips the sync);
- with every tracefs event enabled for one exercise process, the vCPU thread shows a fixed
  pattern around each guest run: ``msr:write_msr`` 0x140 (MSR_MISC_FEATURES_ENABLES, CPUID
  faulting) = 1 before the entry and = 0 right after the exit, before KVM handles the exit
  (with ``rcu:rcu_utilization`` context-switch pairs from ``guest_context_enter/exit_irqoff()``
  in between);
- at that ``write_msr``, the running vCPU (``current->preempt_notifiers``, as the exact mode
  finds it) is inside ``struct vcpu_pvm`` (its ``vcpu`` member at offset 0) whose switcher
  save area ``n`` holds the exit: ``n.exit.vector`` = 0x1b and ``n.regs[0]`` (RAX) = 0x1007
  on each hypercall exit, with ``kvm_vcpu.stat.exits`` not yet counting it; at the write
  before the next entry RAX is the result (0; -ENOSYS 0xffffffffffffffda for 0x17088203).
  ``kvm_vcpu.requests`` shows no KVM_REQ_TLB_FLUSH_GUEST at any event (it is raised and
  serviced between events), ``stat.tlb_flush`` also counts KVM_REQ_TLB_FLUSH(_CURRENT)
  flushes (every new shadow page), and the vcpu_pvm debug counters (``vec_hist``,
  ``xtop``, ``trace``) stay zero: none of them reveals the hypercall.
So the exact mode's ``write_msr`` raw tracepoint (kvmtrace/probes/exact.c) opens a
FLUSH_PVM_HYPERCALL window when that save area shows int 0x1b with a flush number, once per
exit; every offset comes from BTF (kvmtrace/host/exactlayout.py) and without those fields
(another backend, another kvm_pvm) that revealer is off and says why.  Three 300-round exercises
saw one window per requested flush and 302-306 flush-hypercall exits: a second exit a few
microseconds after a serviced one, with no guest-run event between, joins the open window
(guest repeat or host re-run: the trace cannot tell).

May import: kvmtrace.schema only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kvmtrace.schema import Kind

FULL = "full"
ROOT = "root"
ADDRESS = "address"

OBLIGATIONS = {
    FULL: "nothing reachable from the vCPU's roots may stay unsync",
    ROOT: "the root loaded by the action must be synced",
    ADDRESS: "the SPTEs mapping the flushed address must be synced or dropped",
}

VMX, SVM, PVM = "vmx", "svm", "pvm"
# This host's kvm_pvm (observed, see the module docstring): the guest's hypercall gate is
# ``int 0x1b`` with the number in RAX; these numbers request a full guest TLB flush.
PVM_HC_VECTOR = 0x1B
PVM_HC_FLUSH_TLB = 0x1007
PVM_HC_FLUSH_TLB_MULTI = 0x100E
PVM_FLUSH_HYPERCALLS = (PVM_HC_FLUSH_TLB, PVM_HC_FLUSH_TLB_MULTI)
PVM_HC_REVEAL = ("raw_tracepoint msr:write_msr right after the exit: struct vcpu_pvm n.exit.vector "
                 "0x1b and n.regs[0] (RAX) 0x1007 or 0x100e (exact mode, BTF offsets)")
NO_PVM_EVENT = ("no tracepoint fires for a PVM hypercall (kvm:kvm_hypercall comes only from "
                "kvm_emulate_hypercall(), which PVM's own hypercalls never reach); only the "
                "kvm_mmu_sync_page it may cause shows, and nothing when it skips the sync")
BACKENDS = (VMX, SVM, PVM)


@dataclass(frozen=True)
class FlushPath:
    """One guest flush path."""

    name: str                     # the --flush-via name
    opener: Kind                  # the kind whose event opens this path's window
    guest_action: str
    host: str                     # file: function (kernel versions)
    reveals: dict                 # backend -> events / raw tracepoint arguments, "" = none
    obligation: str               # FULL, ROOT or ADDRESS
    exercise: bool = True         # kvmtrace exercise --flush-via can request it
    # backend -> why kvmtrace cannot see or fully judge this path there (absent: it can).
    limits: dict = field(default_factory=dict)

    def revealed_on(self, backend: str) -> str:
        return self.reveals.get(backend, "")


PATHS: tuple[FlushPath, ...] = (
    FlushPath(
        "steal-time", Kind.FLUSH_REQUEST_PV,
        "set KVM_VCPU_FLUSH_TLB (bit 1) in a preempted vCPU's steal-time `preempted` byte "
        "(Linux kvm_flush_tlb_multi())",
        "arch/x86/kvm/x86.c: record_steal_time() -> kvm_vcpu_flush_tlb_guest() (4.16+; "
        "syncs since 5.13)",
        {VMX: "kvm:kvm_pv_tlb_flush need_flush_tlb=1", SVM: "kvm:kvm_pv_tlb_flush need_flush_tlb=1",
         PVM: "kvm:kvm_pv_tlb_flush need_flush_tlb=1"},
        FULL),
    FlushPath(
        "pvm-hypercall", Kind.FLUSH_PVM_HYPERCALL,
        "PVM flush hypercall: upstream PVM_HC_TLB_FLUSH 0x17088203 / PVM_HC_TLB_FLUSH_CURRENT "
        "0x17088204 (syscall from supervisor mode); this host's kvm_pvm: int 0x1b, RAX 0x1007 "
        "(flush) or 0x100e (flush multi)",
        "arch/x86/kvm/pvm/pvm.c: handle_hc_flush_tlb_all() / "
        "handle_hc_flush_tlb_current_kernel_user() -> kvm_make_request(KVM_REQ_TLB_FLUSH_GUEST) "
        "(PVM RFC v1, 6.7-based); this host's kvm_pvm (no published source): the flush is "
        "serviced before the next entry (kvm_mmu_sync_page of the unsync SPs follows the exit)",
        {PVM: PVM_HC_REVEAL},
        FULL),
    FlushPath(
        "pvm-load-pgtbl", Kind.FLUSH_PVM_LOAD_PGTBL,
        "PVM_HC_LOAD_PGTBL 0x17088200 with flags bit 0 (flush the new CR3's PCID)",
        "arch/x86/kvm/pvm/pvm.c: handle_hc_load_pagetables() -> kvm_mmu_new_pgd() + "
        "KVM_REQ_TLB_FLUSH_GUEST (RFC v1), kvm_set_cr3(pgd) without CR3_NOFLUSH (later RFC)",
        {PVM: ""},
        ROOT, limits={PVM: NO_PVM_EVENT}),
    FlushPath(
        "cr3", Kind.FLUSH_CR3,
        "MOV to CR3 without the PCID no-flush bit 63",
        "arch/x86/kvm/x86.c: kvm_set_cr3() -> kvm_mmu_new_pgd() + kvm_invalidate_pcid() -> "
        "KVM_REQ_MMU_SYNC (5.12+)",
        {VMX: "kvm:kvm_exit reason CR_ACCESS + kvm:kvm_cr cr_write 3 (value bit 63 clear)",
         SVM: "kvm:kvm_exit write_cr3 + kvm:kvm_cr cr_write 3",
         PVM: "kvm:kvm_emulate_insn bytes 0f 22 /3 (mov cr3, reg)"},
        ROOT),
    FlushPath(
        "cr4-pge", Kind.FLUSH_CR4,
        "MOV to CR4 toggling PGE (or clearing PCIDE)",
        "arch/x86/kvm/x86.c: kvm_post_set_cr4() -> KVM_REQ_TLB_FLUSH_GUEST (5.15+; before, "
        "kvm_mmu_reset_context())",
        {VMX: "kvm:kvm_exit reason CR_ACCESS + kvm:kvm_cr cr_write 4",
         SVM: "kvm:kvm_exit write_cr4 + kvm:kvm_cr cr_write 4",
         PVM: "kvm:kvm_emulate_insn bytes 0f 22 /4 (mov cr4, reg)"},
        FULL),
    FlushPath(
        "invpcid", Kind.FLUSH_INVPCID,
        "INVPCID: type 1 single-context, 2/3 all-context",
        "arch/x86/kvm/x86.c: kvm_handle_invpcid() (5.10+; vmx.c handle_invpcid() before): "
        "single-context syncs the current root (kvm_mmu_sync_roots) or frees cached ones, "
        "all-context raises KVM_REQ_TLB_FLUSH_GUEST",
        {VMX: "kvm:kvm_exit reason INVPCID", SVM: "kvm:kvm_exit invpcid"},
        FULL),
    FlushPath(
        "invlpg", Kind.FLUSH_INVLPG,
        "INVLPG of one address",
        "arch/x86/kvm/mmu/mmu.c: kvm_mmu_invlpg() -> kvm_mmu_invalidate_addr() -> "
        "mmu->sync_spte() (6.4+); FNAME(invlpg) zaps the leaf SPTE (4.x-6.3)",
        {VMX: "kvm:kvm_exit reason INVLPG (info1 = address)",
         SVM: "kvm:kvm_exit invlpg (exit_info1 = address)",
         PVM: "kvm:kvm_emulate_insn bytes 0f 01 /7 (invlpg m); exact mode: the address from "
              "vcpu->arch.emulate_ctxt->src.addr.mem"},
        ADDRESS, limits={
            PVM: "mmu->sync_spte() emits nothing and the SPs stay unsync by design (root "
                 "state cannot judge it): a window is ok only when the guest's next access "
                 "re-faults on the address (read from KVM's emulator context in exact mode), "
                 "and back-to-back INVLPGs close each other's windows first: suspect",
            VMX: "mmu->sync_spte() emits nothing and kvm_entry follows at once: windows "
                 "with unsync SPs left are suspect at best",
            SVM: "mmu->sync_spte() emits nothing and kvm_entry follows at once: windows "
                 "with unsync SPs left are suspect at best"}),
    FlushPath(
        "hyperv", Kind.FLUSH_REQUEST_HYPERV,
        "Hyper-V HvFlushVirtualAddressSpace/List(Ex) hypercall",
        "arch/x86/kvm/hyperv.c: kvm_hv_flush_tlb() -> KVM_REQ_TLB_FLUSH_GUEST (or, 6.4+, "
        "KVM_REQ_HV_TLB_FLUSH, a full flush under shadow paging)",
        {VMX: "kvm:kvm_hv_flush_tlb / kvm_hv_flush_tlb_ex", SVM: "kvm:kvm_hv_flush_tlb / kvm_hv_flush_tlb_ex"},
        FULL),
    FlushPath(
        "exit-requests", Kind.FLUSH_REQUEST_GUEST,
        "any action that leaves KVM_REQ_TLB_FLUSH_GUEST pending at a VM exit",
        "arch/x86/kvm/x86.c: vcpu_enter_guest() -> kvm_service_local_tlb_flush_requests() "
        "(kvm_exit prints vcpu->requests since 6.14: bit 35)",
        {VMX: "kvm:kvm_exit requests bit 35 (6.14+)", SVM: "kvm:kvm_exit requests bit 35 (6.14+)"},
        FULL, exercise=False),
)

BY_NAME: dict[str, FlushPath] = {p.name: p for p in PATHS}
BY_OPENER: dict[int, FlushPath] = {int(p.opener): p for p in PATHS}
EXERCISE_PATHS: tuple[str, ...] = tuple(p.name for p in PATHS if p.exercise)


def path_of(kind: int) -> Optional[FlushPath]:
    """The flush path a window opened by ``kind`` belongs to (None: a function probe)."""
    return BY_OPENER.get(int(kind))


def obligation_of(kind: int) -> str:
    path = path_of(kind)
    return path.obligation if path is not None else FULL


def opener_name(kind: int) -> str:
    path = path_of(kind)
    return path.name if path is not None else "flush-function"
