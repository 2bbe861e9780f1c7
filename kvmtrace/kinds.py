"""The event kinds, and ONE TABLE that says, per kind, everything the code does with it.

A row of ``KINDS`` reads left to right as an event's path through kvmtrace:

    kind -> what fires it (tracepoint(s), probed function, exact probe, the collector)
         -> for each tracepoint: the kernel-side treatment and the C expression of each
            schema column (the live recorder, ``sources/live/tracepoints.py``)
         -> the text decoder of that tracepoint (``sources/text/payloads.py``, by event name)
         -> the model's role (``analysis/selection.py`` builds its masks from it)
         -> the model's handler ``Replayer.on_<kind name>`` (``analysis/replay.py``)

Adding a tracepoint is one row here, its text decoder, and its handler;
``tests/test_kinds.py`` checks that every kind has a row and a handler, and that every
tracepoint has a live probe (or says why not) and a text decoder.

A kind without a tracepoint says in ``source`` what fires it (a probed function, an
exact-state probe, another tracepoint's decoder).  A tracepoint that can yield more than
its row's kind (``kvm_exit``, ``kvm_emulate_insn``, ``kvm_cr``) lists them in ``also``.

Part of the event contract with ``kvmtrace.schema`` (the kind codes, ``schema.Kind``):
imports only that, and every layer may use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kvmtrace.schema import KVM_EXIT_INTR, Kind

# arch/x86/include/asm/kvm_host.h: KVM_REQ_TLB_FLUSH_GUEST = KVM_ARCH_REQ_FLAGS(27, ...)
# and KVM_REQUEST_ARCH_BASE = 8 (include/linux/kvm_host.h), so a pending guest flush is
# bit 35 of vcpu->requests, which kvm_exit prints since 6.14.
KVM_REQ_TLB_FLUSH_GUEST_BIT = 35

# ---------------------------------------------------------------- the model's roles
STATE = "state"          # changes the model's state: every row is replayed
GATE = "gate"            # can open a flush window or mark a flush path: every row replayed
EVIDENCE = "evidence"    # the vCPU ran guest code: only the first after a gate is replayed
WALK = "walk"            # a guest page-table walk step: each distinct edge replayed once

# ---------------------------------------------------------------- kernel-side treatment
# The handler functions in kvmtrace/probes/kvmtrace.c a tracepoint's probe calls.
ALWAYS = "kt_always"          # emit every event
OPEN = "kt_open"              # emit, and open a flush window on this thread
PV_FLUSH = "kt_pv_flush"      # need_flush=1: open a window; need_flush=0: first per thread only
KT_EVIDENCE = "kt_evidence"   # emit only inside an open window, else count
KT_GUEST_EXIT = "kt_guest_exit"  # evidence; also a flush request when it shows one pending
KT_OPEN_CR = "kt_cr_write"    # kvm_cr: a CR3/CR4 write opens (kind set from cr)
KT_EMULATE = "kt_emulate"     # evidence; an emulated MOV CR3/CR4, INVLPG or INVPCID also opens


@dataclass(frozen=True)
class Tracepoint:
    """One tracepoint a kind comes from, live and in text.

    ``columns``: schema column -> C expressions over the tracepoint's fields (``{field}``);
    the first whose fields all exist in the running kernel's ``format`` file wins (field
    sets differ by kernel version: ``kvm_exit.requests`` is 6.14+).  ``arg``: the extra
    argument of the KT_EVIDENCE, KT_GUEST_EXIT, KT_EMULATE and KT_OPEN_CR handlers,
    alternatives alike.  ``live``
    None: not recorded live, ``not_live`` says why.  ``text``: the event names the text
    decoder is registered under (``sources/text/payloads.TRACEPOINTS``).
    """

    name: str                                   # "system:event"
    live: str | None                            # kernel-side handler (ALWAYS, OPEN, ...)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    arg: tuple[str, ...] = ("1",)
    not_live: str = ""
    aliases: tuple[str, ...] = ()               # older names the text decoder also reads
    also: tuple[Kind, ...] = ()                 # other kinds this tracepoint can yield

    @property
    def system(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def event(self) -> str:
        return self.name.split(":", 1)[1]

    @property
    def text(self) -> tuple[str, ...]:
        return (self.event, *self.aliases)


@dataclass(frozen=True)
class KindRow:
    kind: Kind
    role: str                                   # STATE, GATE, EVIDENCE or WALK
    source: str                                 # what fires it, in words
    tracepoints: tuple[Tracepoint, ...] = ()

    @property
    def handler(self) -> str:
        """The model's handler method: ``Replayer.on_<kind name>``."""
        return "on_" + self.kind.name.lower()


def _sp(created: bool = False) -> dict[str, tuple[str, ...]]:
    # kvmmmu KVM_MMU_PAGE_FIELDS (arch/x86/kvm/mmu/mmutrace.h): gfn, role (u32 word of
    # union kvm_mmu_page_role; level = bits 0-3), root_count, unsync.
    cols = {"gfn": ("{gfn}",), "role": ("{role}",), "level": ("{role} & 0xf",),
            "root_count": ("{root_count}",), "unsync": ("{unsync} != 0",)}
    if created:
        cols["created"] = ("{created} != 0",)
    return cols


def _tp(name: str, live: str | None, columns: dict | None = None, **kw) -> Tracepoint:
    return Tracepoint(name, live, columns or {}, **kw)


FUNCTIONS = "a probe on a KVM function (kvmtrace/functions.py)"
EXACT = "a raw-tracepoint probe reading KVM's structures (BTF offsets)"

KINDS: tuple[KindRow, ...] = (
    KindRow(Kind.LOST, STATE, "the collector: ring-buffer records it dropped"),
    # Flush requests.
    KindRow(Kind.FLUSH_REQUEST_PV, GATE, "record_steal_time() (arch/x86/kvm/x86.c)", (
        _tp("kvm:kvm_pv_tlb_flush", PV_FLUSH,
            {"vcpu": ("{vcpu_id}",), "need_flush": ("{need_flush_tlb} != 0",)}),)),
    KindRow(Kind.FLUSH_REQUEST_GUEST, GATE,
            "kvm:kvm_exit with bit KVM_REQ_TLB_FLUSH_GUEST_BIT of requests set (6.14+)"),
    KindRow(Kind.FLUSH_REQUEST_HYPERV, GATE, "kvm_hv_flush_tlb() (arch/x86/kvm/hyperv.c)", (
        _tp("kvm:kvm_hv_flush_tlb", OPEN, {"value": ("{processor_mask}", "0")}),
        _tp("kvm:kvm_hv_flush_tlb_ex", OPEN, {"value": ("{valid_bank_mask}", "0")}))),
    # Flush-path functions.
    KindRow(Kind.FLUSH_GUEST_ENTRY, GATE, FUNCTIONS),
    KindRow(Kind.FLUSH_GUEST_RETURN, GATE, FUNCTIONS),
    KindRow(Kind.FLUSH_SERVICE, GATE, FUNCTIONS),
    KindRow(Kind.HW_FLUSH, GATE, FUNCTIONS),
    KindRow(Kind.MMU_UNLOAD, GATE, FUNCTIONS),
    KindRow(Kind.MMU_LOAD_ENTRY, GATE, FUNCTIONS),
    KindRow(Kind.MMU_LOAD_RETURN, GATE, FUNCTIONS),
    KindRow(Kind.SYNC_ROOTS, GATE, FUNCTIONS),
    KindRow(Kind.SYNC_PREV_ROOTS, GATE, FUNCTIONS),
    # Shadow pages (VM-wide).
    KindRow(Kind.SP_GET, STATE, "kvm_mmu_get_page() (mmu.c)", (
        _tp("kvmmmu:kvm_mmu_get_page", ALWAYS, _sp(created=True)),)),
    KindRow(Kind.SP_UNSYNC, STATE, "kvm_unsync_page() (mmu.c)", (
        _tp("kvmmmu:kvm_mmu_unsync_page", ALWAYS, _sp()),)),
    KindRow(Kind.SP_SYNC, STATE, "kvm_sync_page() (mmu.c)", (
        _tp("kvmmmu:kvm_mmu_sync_page", ALWAYS, _sp()),)),
    KindRow(Kind.SP_ZAP, STATE, "kvm_mmu_prepare_zap_page() (mmu.c)", (
        _tp("kvmmmu:kvm_mmu_prepare_zap_page", ALWAYS, _sp(), aliases=("kvm_mmu_zap_page",)),)),
    KindRow(Kind.WALK_ELEMENT, WALK, "FNAME(walk_addr_generic) (mmu/paging_tmpl.h)", (
        _tp("kvmmmu:kvm_mmu_paging_element", None,
            not_live="four or five per guest page fault: read from text traces only"),)),
    # Exact state.
    KindRow(Kind.SP_LINK, STATE, EXACT),
    KindRow(Kind.ROOT_STATE, STATE, EXACT),
    # Guest-run evidence.
    KindRow(Kind.GUEST_ENTRY, EVIDENCE, "vcpu_enter_guest() (x86.c)", (
        _tp("kvm:kvm_entry", KT_EVIDENCE, {"vcpu": ("{vcpu_id}",), "value": ("{rip}", "0")}),)),
    KindRow(Kind.GUEST_EXIT, EVIDENCE, "the vendor exit handler", (
        _tp("kvm:kvm_exit", KT_GUEST_EXIT,
            {"vcpu": ("{vcpu_id}", "-1"), "value": ("{requests}", "-1")},
            arg=(f"({{requests}} >> {KVM_REQ_TLB_FLUSH_GUEST_BIT}) & 1", "0"),
            also=(Kind.FLUSH_REQUEST_GUEST, Kind.FLUSH_INVLPG, Kind.FLUSH_INVPCID)),)),
    KindRow(Kind.SPTE_INSTALL, EVIDENCE, "mmu_set_spte() (mmu.c)", (
        _tp("kvmmmu:kvm_mmu_set_spte", KT_EVIDENCE,
            {"gfn": ("{gfn}",), "level": ("{level}",), "value": ("{spte}",)}),)),
    # On PVM the guest kernel runs at CPL 3, so its MOV to CR3/CR4 and INVLPG trap and are
    # emulated: the instruction bytes name the flush path (kvmtrace/analysis/flushpaths.py).
    KindRow(Kind.EMULATE, EVIDENCE, "x86_emulate_instruction() (x86.c)", (
        _tp("kvm:kvm_emulate_insn", KT_EMULATE, {"value": ("{rip}",)},
            arg=("{failed} ? 0 : kt_insn_flush({insn})", "kt_insn_flush({insn})", "0"),
            also=(Kind.FLUSH_CR3, Kind.FLUSH_CR4, Kind.FLUSH_INVLPG, Kind.FLUSH_INVPCID)),)),
    KindRow(Kind.PIO, EVIDENCE, "kernel_pio() / emulator_pio_in_out() (x86.c)", (
        _tp("kvm:kvm_pio", KT_EVIDENCE, {"value": ("{port}",)}),)),
    KindRow(Kind.MMIO, EVIDENCE, "the MMIO emulation paths (x86.c)", (
        _tp("kvm:kvm_mmio", KT_EVIDENCE, {"value": ("{gpa}",)}),)),
    KindRow(Kind.HYPERCALL, EVIDENCE, "kvm_emulate_hypercall() (x86.c)", (
        _tp("kvm:kvm_hypercall", KT_EVIDENCE, {"value": ("{nr}",)}),)),
    # include/uapi/linux/kvm.h: a KVM_RUN that returned for a signal (errno < 0, or
    # reason KVM_EXIT_INTR) did not necessarily run the guest.
    KindRow(Kind.USERSPACE_EXIT, EVIDENCE, "kvm_arch_vcpu_ioctl_run() returning (x86.c)", (
        _tp("kvm:kvm_userspace_exit", KT_EVIDENCE,
            {"value": ("(s32){errno} < 0 ? (s64)(s32){errno} : (s64){reason}",)},
            arg=(f"!((s32){{errno}} < 0 || {{reason}} == {KVM_EXIT_INTR})",)),)),
    KindRow(Kind.PAGE_FAULT, EVIDENCE, "the vendor page-fault handler", (
        _tp("kvm:kvm_page_fault", KT_EVIDENCE,
            {"vcpu": ("{vcpu_id}", "-1"), "value": ("{fault_address}",)}),)),
    KindRow(Kind.WALK_START, EVIDENCE, "FNAME(walk_addr_generic) (mmu/paging_tmpl.h)", (
        _tp("kvmmmu:kvm_mmu_pagetable_walk", KT_EVIDENCE, {"value": ("{addr}",)}),)),
    # Guest flush paths beyond steal time and Hyper-V (kinds 40-49; their host functions
    # and sync obligations: kvmtrace/analysis/flushpaths.py).
    KindRow(Kind.FLUSH_PVM_HYPERCALL, GATE, "a PVM TLB-flush hypercall (kvm_pvm backend)"),
    # VMX handle_cr() / SVM cr_interception(): trace_kvm_cr_write(cr, val).  CR3 without
    # the PCID no-flush bit 63, and CR4 (a PGE/PCIDE toggle), are guest flushes.
    KindRow(Kind.FLUSH_CR3, GATE, "a guest MOV to CR3 (exit or emulated)", (
        _tp("kvm:kvm_cr", KT_OPEN_CR, {"value": ("{val}",)}, arg=("{rw} ? {cr} : 0",),
            also=(Kind.FLUSH_CR4,)),)),
    KindRow(Kind.FLUSH_CR4, GATE, "a guest MOV to CR4: kvm:kvm_cr or kvm:kvm_emulate_insn"),
    KindRow(Kind.FLUSH_INVLPG, GATE, "a guest INVLPG: kvm:kvm_exit or kvm:kvm_emulate_insn"),
    KindRow(Kind.FLUSH_INVPCID, GATE, "a guest INVPCID: kvm:kvm_exit"),
    KindRow(Kind.FLUSH_PVM_LOAD_PGTBL, GATE, "PVM_HC_LOAD_PGTBL (kvm_pvm backend)"),
    # Integrity (kinds 50-54).
    KindRow(Kind.INVALID, STATE, "kvmtrace/sources/validate.py: an event refused as impossible"),
    # Events after which the vCPU's root may have changed without any kvmmmu event (kinds
    # 55-59): the model forgets the root it inferred (analysis/replay.py _forget_root).
    KindRow(Kind.CR_WRITE, STATE,
            "a guest CR0 write: kvm:kvm_cr cr_write 0 (VMX handle_cr(), SVM cr_interception())"),
    KindRow(Kind.NESTED_ENTER, STATE, "nested VMLAUNCH/VMRESUME/VMRUN emulated (vmx/nested.c, "
            "svm/nested.c)", (
        _tp("kvm:kvm_nested_vmenter", ALWAYS, {"value": ("{guest_pgd}", "{rip}")}),)),
    KindRow(Kind.NESTED_EXIT, STATE, "an L2 exit reflected to L1 (nested_vmx_vmexit, "
            "nested_svm_vmexit)", (
        _tp("kvm:kvm_nested_vmexit_inject", ALWAYS, {"value": ("{exit_code}",)}),)),
    KindRow(Kind.SMM_TRANSITION, STATE, "kvm_smm_changed() (arch/x86/kvm/smm.c, 6.2+; x86.c "
            "before)", (
        _tp("kvm:kvm_smm_transition", ALWAYS,
            {"vcpu": ("{vcpu_id}",), "value": ("{entering} != 0",)}),)),
    # kvm:kvm_msr fires for every emulated MSR access (rdmsr/wrmsr exits); only EFER writes
    # matter, and a live probe would emit them all.
    KindRow(Kind.EFER_WRITE, STATE, "kvm_set_efer() via an EFER wrmsr (x86.c)", (
        _tp("kvm:kvm_msr", None, not_live="fires for every MSR access; read from text traces "
            "(EFER writes only)"),)),
)

KIND_ROWS: dict[Kind, KindRow] = {row.kind: row for row in KINDS}


def kinds_with(role: str) -> frozenset[Kind]:
    """The kinds whose model role is ``role``."""
    return frozenset(row.kind for row in KINDS if row.role == role)


def tracepoints() -> tuple[tuple[KindRow, Tracepoint], ...]:
    """Every (row, tracepoint) of the table, in table order."""
    return tuple((row, tp) for row in KINDS for tp in row.tracepoints)


