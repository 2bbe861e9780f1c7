"""Per-event payload decoders: a KVM tracepoint's printed body -> one normalised row payload.

Each decoder reads what the kernel's ``TP_printk`` (arch/x86/kvm/trace.h, mmu/mmutrace.h)
printed, in every format it has had, and also the raw ``field=value`` form that
``trace-cmd report -R`` prints and that libtraceevent falls back to when it cannot parse a
print fmt (``[FAILED TO PARSE] mmu_valid_gen=0 gfn=4 role=14081 ...``, as perf 6.1 does for
the kvmmmu SP events).  A decoder returns a ``Payload`` tuple, a list of them, or None when
the body is in no form it knows.

Number bases of raw fields (libtraceevent, src/event-parse.c): when it can parse the event's
print fmt (seen with libtraceevent 1.7.1 under trace-cmd 3.1.6 ``report -R``) it prints each
field in the base the fmt uses - ``gfn=10`` is hex because the fmt says ``gfn %llx``, ``port=0x20`` keeps its ``0x``.
When it cannot (``[FAILED TO PARSE]``, and the statement-expression fmt of the SP events
always) it prints unsigned fields in decimal.  ``hex_or_dec`` below encodes that rule.

u64 values (rip, spte, guest PTEs with NX = bit 63) are stored as their int64 two's
complement.
"""
from __future__ import annotations

import re
from typing import Callable, Union

from kvmtrace.functions import kind_for
from kvmtrace.schema import Kind
from kvmtrace.sources.text.sp_text import parse_sp

# (kind, vcpu, gfn, role, level, root_count, unsync, created, need_flush, value)
Payload = tuple
Decoded = Union[Payload, list, None]
Decoder = Callable[[str], Decoded]

# Bit 35 of vcpu->requests, which kvm_exit prints since 6.14 (kvmtrace/kinds.py says why).
from kvmtrace.kinds import KVM_REQ_TLB_FLUSH_GUEST_BIT  # noqa: E402,F401

_U64_SIGN = 1 << 63
_U64 = 1 << 64
_FIELD = re.compile(r"(\w+)=(\S+)", re.A)


def s64(v: int) -> int:
    return v - _U64 if v >= _U64_SIGN else v


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def num(text: str) -> int:
    """A raw field value as libtraceevent prints it: decimal, -decimal or 0x-hex."""
    return int(text, 16) if text.startswith("0x") else int(text)


def hexnum(text: str) -> int:
    return int(text, 16)


def raw_fields(body: str) -> dict[str, str]:
    return dict(_FIELD.findall(body))


FieldDecoder = Callable[[dict[str, str], Callable[[str], int]], Decoded]


def row(kind: Kind, vcpu: int = -1, gfn: int = -1, role: int = -1, level: int = -1,
        root_count: int = -1, unsync: int = -1, created: int = -1, need_flush: int = -1,
        value: int = 0) -> Payload:
    return (int(kind), vcpu, gfn, role, level, root_count, unsync, created, need_flush, value)


def _with_fields(printed: Decoder, from_fields: FieldDecoder) -> tuple[Decoder, Decoder]:
    """(printed-form decoder, raw field=value fallback) for one event.

    ``from_fields(fields, hex_or_dec)`` parses the fields the print fmt shows as bare hex
    (``%llx``) with ``hex_or_dec``: hex, or decimal under ``[FAILED TO PARSE]``.
    """
    def fallback(body: str) -> Decoded:
        if "=" not in body:
            return None
        hex_or_dec = num if body.startswith("[FAILED TO PARSE]") else hexnum
        try:
            return from_fields(raw_fields(body), hex_or_dec)
        except (KeyError, ValueError):
            return None
    return printed, fallback


def decode(event: str, body: str) -> Decoded:
    """Decode one tracepoint body (None: not decodable; KeyError: not a known event)."""
    printed, fallback = TRACEPOINTS[event]
    out = printed(body)
    return fallback(body) if out is None else out


# ----------------------------------------------------------------------- kvmmmu SP events

def _sp(kind: Kind) -> Decoder:
    k = int(kind)

    def printed(body: str) -> Decoded:
        sp = parse_sp(body)
        if sp is None:
            return None
        return (k, -1, sp.gfn, sp.role, sp.level, sp.root_count, sp.unsync, sp.created, -1, 0)

    def fields(f: dict[str, str], _hex) -> Decoded:
        # The SP print fmt is never parsed by libtraceevent: its fields come out decimal.
        role = num(f["role"]) & 0xFFFFFFFF
        created = num(f["created"]) if "created" in f else -1
        return (k, -1, num(f["gfn"]), role, role & 0xF, num(f["root_count"]),
                int(num(f["unsync"]) != 0), created, -1, 0)

    return _with_fields(printed, fields)


# ----------------------------------------------------------------------- flush requests

_PV_FLUSH = re.compile(r"vcpu (\d{1,20}) need_flush_tlb (true|false|1|0)\s*$", re.A)


def _pv_flush_printed(body: str) -> Decoded:
    m = _PV_FLUSH.match(body)
    if m is None:
        return None
    need = 1 if m.group(2) in ("true", "1") else 0
    return (int(Kind.FLUSH_REQUEST_PV), int(m.group(1)), -1, -1, -1, -1, -1, -1, need, 0)


def _pv_flush_fields(f: dict[str, str], _hex) -> Decoded:
    return row(Kind.FLUSH_REQUEST_PV, vcpu=num(f["vcpu_id"]),
               need_flush=int(num(f["need_flush_tlb"]) != 0))


_HV_MASK = re.compile(r"(?:processor_mask|valid_bank_mask) 0x([0-9a-f]+)", re.A)


def _hv_flush(field: str) -> Decoder:
    # kvm_hv_flush_tlb(_ex) fire on the vCPU that issued the Hyper-V hypercall; value =
    # the processor mask (or, for the _ex form, the valid bank mask) it asked to flush.
    def printed(body: str) -> Decoded:
        m = _HV_MASK.match(body)
        return None if m is None else row(Kind.FLUSH_REQUEST_HYPERV, value=s64(int(m.group(1), 16)))

    def fields(f: dict[str, str], _hex) -> Decoded:
        return row(Kind.FLUSH_REQUEST_HYPERV, value=s64(num(f[field])))

    return _with_fields(printed, fields)


# ----------------------------------------------------------------------- entry / exit

# 4.x-5.7 "vcpu %u"; 5.8+ "vcpu %u, rip 0x%lx"; 6.x adds " intr_info ... error_code ..."
# and (6.12+) "[immediate exit]"; libtraceevent's kvm plugin prints " vcpu %u rip 0x%llx".
_ENTRY = re.compile(r"\s*vcpu (\d+)(?:,? rip 0x([0-9a-f]+))?", re.A)


def _entry_printed(body: str) -> Decoded:
    m = _ENTRY.match(body)
    if m is None:
        return None
    rip = s64(int(m.group(2), 16)) if m.group(2) else 0
    return (int(Kind.GUEST_ENTRY), int(m.group(1)), -1, -1, -1, -1, -1, -1, -1, rip)


def _entry_fields(f: dict[str, str], _hex) -> Decoded:
    return row(Kind.GUEST_ENTRY, vcpu=num(f["vcpu_id"]), value=s64(num(f.get("rip", "0"))))


# Old "reason %s rip 0x%lx info %llx %llx" (and the plugin's form) has no vcpu;
# 5.x+ "vcpu %u reason ..."; 6.14+ appends "requests 0x%016llx".
_EXIT = re.compile(r"(?:vcpu (\d+) )?reason ", re.A)
_REQUESTS = re.compile(r" requests 0x([0-9a-f]+)", re.A)


def _exit_rows(vcpu: int, requests: int | None, flush: Payload | None = None) -> Decoded:
    if requests is None:
        exit_row = (int(Kind.GUEST_EXIT), vcpu, -1, -1, -1, -1, -1, -1, -1, -1)
    else:
        exit_row = (int(Kind.GUEST_EXIT), vcpu, -1, -1, -1, -1, -1, -1, -1, s64(requests))
    rows = [exit_row]
    if requests is not None and requests >> KVM_REQ_TLB_FLUSH_GUEST_BIT & 1:
        rows.append(row(Kind.FLUSH_REQUEST_GUEST, vcpu=vcpu, value=s64(requests)))
    if flush is not None:
        rows.append(flush)
    return rows if len(rows) > 1 else exit_row


# The exits that are guest flushes by themselves (kvmtrace/analysis/flushpaths.py):
# VMX "INVLPG" (exit qualification = the address, printed as info1) and "INVPCID"
# (arch/x86/include/uapi/asm/vmx.h VMX_EXIT_REASONS); SVM "invlpg" (exit_info_1 = the
# address) and "invpcid" (arch/x86/include/uapi/asm/svm.h SVM_EXIT_REASONS).
# Print fmts: "reason %s rip 0x%lx info %llx %llx" (<= 5.x), "... info1 0x%016llx ...".
_EXIT_FLUSH = re.compile(r"(INVLPG|invlpg|INVPCID|invpcid)\b(?: rip 0x[0-9a-f]+)?"
                         r"(?: info1? (?:0x)?([0-9a-f]+))?")


def _exit_flush(body: str, at: int, vcpu: int) -> Payload | None:
    m = _EXIT_FLUSH.match(body, at)
    if m is None:
        return None
    info = s64(int(m.group(2), 16)) if m.group(2) else -1
    if m.group(1).lower() == "invlpg":
        return row(Kind.FLUSH_INVLPG, vcpu=vcpu, value=info)
    return row(Kind.FLUSH_INVPCID, vcpu=vcpu, value=-1)      # the type is in a register


def _exit_printed(body: str) -> Decoded:
    m = _EXIT.match(body)
    if m is None:
        return None
    vcpu = int(m.group(1)) if m.group(1) else -1
    r = _REQUESTS.search(body, m.end())
    return _exit_rows(vcpu, int(r.group(1), 16) if r else None, _exit_flush(body, m.end(), vcpu))


def _exit_fields(f: dict[str, str], _hex) -> Decoded:
    if "exit_reason" not in f:
        return None
    return _exit_rows(num(f["vcpu_id"]) if "vcpu_id" in f else -1,
                      num(f["requests"]) if "requests" in f else None)


# ----------------------------------------------------------------------- CR writes, emulation

# kvm:kvm_cr "cr_%s %x = 0x%lx" (trace_kvm_cr_write: VMX handle_cr(), SVM cr_interception()).
_CR = re.compile(r"cr_(write|read) ([0-9a-f]+) = 0x([0-9a-f]+)")
CR3_PCID_NOFLUSH = 1 << 63         # arch/x86/include/asm/processor-flags.h X86_CR3_PCID_NOFLUSH


def cr_write_row(cr: int, val: int) -> Payload | None:
    """A guest MOV to CR3 / CR4 as a flush-path row; CR0 as a CR_WRITE (its PG/WP bits are
    in the MMU role: kvm_post_set_cr0 -> kvm_mmu_reset_context); other CRs: None."""
    if cr == 0:
        return row(Kind.CR_WRITE, level=0, value=s64(val))
    if cr == 3:
        return row(Kind.FLUSH_CR3, need_flush=0 if val & CR3_PCID_NOFLUSH else 1, value=s64(val))
    if cr == 4:
        # Whether it toggles PGE/PCIDE depends on the old value: the model tracks it.
        return row(Kind.FLUSH_CR4, value=s64(val))
    return None


def _cr_printed(body: str) -> Decoded:
    m = _CR.match(body)
    if m is None:
        return None
    if m.group(1) == "read":
        return []
    out = cr_write_row(int(m.group(2), 16), int(m.group(3), 16))
    return [] if out is None else out


def _cr_fields(f: dict[str, str], _hex) -> Decoded:
    if num(f["rw"]) == 0:
        return []
    out = cr_write_row(num(f["cr"]), num(f["val"]))
    return [] if out is None else out


_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})


def insn_flush(insn: bytes) -> tuple[Kind, int] | None:
    """The flush-path kind of an emulated instruction (Intel SDM vol. 2), or None.

    ``0f 22 /r`` with mod=11 is MOV to CRn (n = ModRM.reg, + 8 with REX.R): CR3 and CR4;
    ``0f 01 /7`` with a memory operand is INVLPG; ``66 0f 38 82`` is INVPCID.  Returns
    (kind, need_flush): -1 for CR writes, whose value the event does not carry.
    """
    i, rex_r, opsize = 0, 0, False
    while i < min(len(insn), 5) and (insn[i] in _LEGACY_PREFIXES or 0x40 <= insn[i] <= 0x4F):
        if insn[i] == 0x66:
            opsize = True
        if 0x40 <= insn[i] <= 0x4F:
            rex_r = (insn[i] >> 2) & 1
        i += 1
    if len(insn) < i + 3 or insn[i] != 0x0F:
        return None
    op, modrm = insn[i + 1], insn[i + 2]
    mod, reg = modrm >> 6, ((modrm >> 3) & 7) | rex_r << 3
    if op == 0x22 and mod == 3 and reg in (3, 4):
        return (Kind.FLUSH_CR3 if reg == 3 else Kind.FLUSH_CR4), -1
    if (op == 0x22 and mod == 3 and reg == 0) or (op == 0x01 and (modrm >> 3) & 7 == 6):
        return Kind.CR_WRITE, -1            # MOV to CR0, LMSW (0f 01 /6): CR0 changes
    if op == 0x01 and mod != 3 and (modrm >> 3) & 7 == 7:
        return Kind.FLUSH_INVLPG, -1
    if op == 0x38 and modrm == 0x82 and opsize:
        return Kind.FLUSH_INVPCID, -1
    return None


# "%x:%llx:%s (%s)%s" = csbase:rip:insn bytes (mode)[ failed]
_EMULATE = re.compile(r"[0-9a-f]+:([0-9a-f]+):((?:[0-9a-f]{2} ?){1,15})\s*\((\w+)\)( failed)?")
_emulate_simple = None  # set below


def _emulate_printed(body: str) -> Decoded:
    m = _EMULATE.match(body)
    if m is None or m.group(4):
        return _emulate_simple[0](body)
    try:
        insn = bytes.fromhex(m.group(2).replace(" ", ""))
    except ValueError:
        return _emulate_simple[0](body)
    flush = insn_flush(insn)
    rip = s64(int(m.group(1), 16))
    if flush is None:
        return row(Kind.EMULATE, value=rip)
    kind, need = flush
    if kind == Kind.CR_WRITE:
        return [row(Kind.EMULATE, value=rip), row(Kind.CR_WRITE, level=0, value=-1)]
    # The instruction ran in the guest up to here (evidence), then KVM emulated the flush.
    return [row(Kind.EMULATE, value=rip), row(kind, need_flush=need, value=-1)]


# ----------------------------------------------------------------------- silent root switches
# Events after which the vCPU's root may change without a kvmmmu event (schema kinds 55-59).

# kvm_nested_vmenter (arch/x86/kvm/trace.h): 6.x "rip: 0x%016llx vmcs|vmcb: 0x%016llx
# nested_rip: ... nested_ept|npt=y|n guest_cr3|nested_eptp|nested_cr3: 0x%016llx"; before
# 6.2 "rip: 0x%016llx vmcb: 0x%016llx nested_rip: ... npt: %s" (no page-table root).
_NESTED_ENTER = re.compile(r"rip: 0x([0-9a-f]+) ")
_NESTED_PGD = re.compile(r"(?:guest_cr3|nested_eptp|nested_cr3): 0x([0-9a-f]+)")


def _nested_enter_printed(body: str) -> Decoded:
    m = _NESTED_ENTER.match(body)
    if m is None:
        return None
    pgd = _NESTED_PGD.search(body, m.end())
    return row(Kind.NESTED_ENTER, value=s64(int((pgd or m).group(1), 16)))


def _nested_enter_fields(f: dict[str, str], hex_or_dec) -> Decoded:
    return row(Kind.NESTED_ENTER, value=s64(hex_or_dec(f.get("guest_pgd", f["rip"]))))


# kvm_nested_vmexit_inject: "reason: %s%s%s ext_inf1: 0x%016llx ..." (the reason symbolic).
def _nested_exit_printed(body: str) -> Decoded:
    return row(Kind.NESTED_EXIT) if body.startswith("reason: ") else None


def _nested_exit_fields(f: dict[str, str], _hex) -> Decoded:
    return row(Kind.NESTED_EXIT, value=num(f["exit_code"]))


# kvm_smm_transition: "vcpu %u: %s SMM, smbase 0x%llx" (entering / leaving).
_SMM = re.compile(r"vcpu (\d+): (entering|leaving) SMM")


def _smm_printed(body: str) -> Decoded:
    m = _SMM.match(body)
    if m is None:
        return None
    return row(Kind.SMM_TRANSITION, vcpu=int(m.group(1)), value=int(m.group(2) == "entering"))


def _smm_fields(f: dict[str, str], _hex) -> Decoded:
    return row(Kind.SMM_TRANSITION, vcpu=num(f["vcpu_id"]), value=int(num(f["entering"]) != 0))


# kvm_msr: "msr_%s %x = 0x%llx%s" (read/write, ecx, data, " (#GP)").  Only a successful
# write of MSR_EFER (arch/x86/include/asm/msr-index.h 0xc0000080) is kept.
_MSR = re.compile(r"msr_(read|write) ([0-9a-f]+) = 0x([0-9a-f]+)( \(#GP\))?")
MSR_EFER = 0xC0000080


def _msr_printed(body: str) -> Decoded:
    m = _MSR.match(body)
    if m is None:
        return None
    if m.group(1) != "write" or m.group(4) or int(m.group(2), 16) != MSR_EFER:
        return []
    return row(Kind.EFER_WRITE, value=s64(int(m.group(3), 16)))


def _msr_fields(f: dict[str, str], hex_or_dec) -> Decoded:
    if num(f["write"]) == 0 or num(f.get("failed", "0")) or hex_or_dec(f["ecx"]) != MSR_EFER:
        return []
    return row(Kind.EFER_WRITE, value=s64(hex_or_dec(f["data"])))


# ----------------------------------------------------------------------- guest-run evidence

def _simple(kind: Kind, pattern: str, field: str, vcpu_group: bool = False,
            bare_hex: bool = False) -> Decoder:
    """An event whose value is one hex number (group 'v'), optionally with a vcpu (group 'c').

    ``bare_hex``: the print fmt shows ``field`` as %llx without 0x (see hex_or_dec).
    """
    k = int(kind)
    rx = re.compile(pattern, re.A)

    def printed(body: str, _match=rx.match) -> Decoded:
        m = _match(body)
        if m is None:
            return None
        vcpu = int(m.group("c")) if vcpu_group and m.group("c") else -1
        v = int(m.group("v"), 16)
        if v >= _U64_SIGN:
            v -= _U64
        return (k, vcpu, -1, -1, -1, -1, -1, -1, -1, v)

    def fields(f: dict[str, str], hex_or_dec) -> Decoded:
        vcpu = num(f["vcpu_id"]) if "vcpu_id" in f else -1
        text = f[field]
        value = hex_or_dec(text) if bare_hex and not text.startswith("0x") else num(text)
        return (k, vcpu, -1, -1, -1, -1, -1, -1, -1, s64(value))

    return _with_fields(printed, fields)


_SET_SPTE = re.compile(r"gfn ([0-9a-f]{1,16}) spte ([0-9a-f]{1,16}) \([^()]{0,16}\) level (\d{1,20})(?: at [0-9a-f]{1,16})?\s*$", re.A)


def _set_spte_printed(body: str) -> Decoded:
    m = _SET_SPTE.match(body)
    if m is None:
        return None
    return (int(Kind.SPTE_INSTALL), -1, int(m.group(1), 16), -1, int(m.group(3)), -1, -1, -1, -1,
            s64(int(m.group(2), 16)))


def _set_spte_fields(f: dict[str, str], hex_or_dec) -> Decoded:
    return row(Kind.SPTE_INSTALL, gfn=hex_or_dec(f["gfn"]), level=num(f["level"]),
               value=s64(hex_or_dec(f["spte"])))


_PAGING_ELEMENT = re.compile(r"pte ([0-9a-f]{1,16}) level (\d{1,20})\s*$", re.A)


def _element_printed(body: str, _match=_PAGING_ELEMENT.match, _k=int(Kind.WALK_ELEMENT)) -> Decoded:
    # The most frequent event of a shadow-paging trace (one per guest page-table level per
    # walk): kept free of helper calls.
    m = _match(body)
    if m is None:
        return None
    pte, level = m.groups()
    v = int(pte, 16)
    if v >= _U64_SIGN:
        v -= _U64
    return (_k, -1, -1, -1, int(level), -1, -1, -1, -1, v)


def _element_fields(f: dict[str, str], hex_or_dec) -> Decoded:
    return row(Kind.WALK_ELEMENT, level=num(f["level"]), value=s64(hex_or_dec(f["pte"])))


# "reason KVM_EXIT_IO (2)"; for a KVM_RUN that failed, "reason restart (4)" (-EINTR) or
# "reason error (N)", which print -errno: value is then the negative errno.
_USER_EXIT = re.compile(r"reason (\S+) \((-?\d+)\)", re.A)


def _user_exit_printed(body: str) -> Decoded:
    m = _USER_EXIT.match(body)
    if m is None:
        return None
    n = int(m.group(2))
    value = -n if m.group(1) in ("restart", "error") else n
    return (int(Kind.USERSPACE_EXIT), -1, -1, -1, -1, -1, -1, -1, -1, value)


def _user_exit_fields(f: dict[str, str], _hex) -> Decoded:
    err = num(f.get("errno", "0"))
    if err >= (1 << 31):                       # an int printed as unsigned
        err -= 1 << 32
    return row(Kind.USERSPACE_EXIT, value=err if err < 0 else num(f["reason"]))


_emulate_simple = _simple(Kind.EMULATE, r"[0-9a-f]+:(?P<v>[0-9a-f]+)", "rip", bare_hex=True)

# One (printed, raw-fields) decoder pair per tracepoint of the per-kind table
# (kvmtrace/kinds.py, ``Tracepoint.text``); tests/test_kinds.py checks that they agree.
TRACEPOINTS: dict[str, tuple[Decoder, Decoder]] = {
    "kvm_pv_tlb_flush": _with_fields(_pv_flush_printed, _pv_flush_fields),
    "kvm_hv_flush_tlb": _hv_flush("processor_mask"),
    "kvm_hv_flush_tlb_ex": _hv_flush("valid_bank_mask"),
    "kvm_mmu_get_page": _sp(Kind.SP_GET),
    "kvm_mmu_unsync_page": _sp(Kind.SP_UNSYNC),
    "kvm_mmu_sync_page": _sp(Kind.SP_SYNC),
    "kvm_mmu_prepare_zap_page": _sp(Kind.SP_ZAP),
    "kvm_mmu_zap_page": _sp(Kind.SP_ZAP),          # its name before prepare_zap (2.6.x)
    "kvm_entry": _with_fields(_entry_printed, _entry_fields),
    "kvm_exit": _with_fields(_exit_printed, _exit_fields),
    "kvm_mmu_set_spte": _with_fields(_set_spte_printed, _set_spte_fields),
    "kvm_mmu_paging_element": _with_fields(_element_printed, _element_fields),
    "kvm_mmu_pagetable_walk": _simple(Kind.WALK_START, r"addr (?P<v>[0-9a-f]+)", "addr",
                                      bare_hex=True),
    # "%x:%llx:%s (%s)%s" = csbase:rip:insn; the kvm plugin prints "csbase:rip: disasm".
    "kvm_emulate_insn": (_emulate_printed, _emulate_simple[1]),
    "kvm_cr": _with_fields(_cr_printed, _cr_fields),
    "kvm_nested_vmenter": _with_fields(_nested_enter_printed, _nested_enter_fields),
    "kvm_nested_vmexit_inject": _with_fields(_nested_exit_printed, _nested_exit_fields),
    "kvm_smm_transition": _with_fields(_smm_printed, _smm_fields),
    "kvm_msr": _with_fields(_msr_printed, _msr_fields),
    "kvm_pio": _simple(Kind.PIO, r"pio_(?:read|write) at 0x(?P<v>[0-9a-f]+)", "port"),
    "kvm_mmio": _simple(Kind.MMIO, r"mmio \S+ len \d+ gpa 0x(?P<v>[0-9a-f]+)", "gpa"),
    "kvm_hypercall": _simple(Kind.HYPERCALL, r"nr 0x(?P<v>[0-9a-f]+)", "nr"),
    "kvm_userspace_exit": _with_fields(_user_exit_printed, _user_exit_fields),
    # Before 5.x "address %lx error_code %x"; later "vcpu %u rip 0x%lx address 0x%016llx ...".
    "kvm_page_fault": _simple(Kind.PAGE_FAULT,
                              r"(?:vcpu (?P<c>\d+) rip 0x[0-9a-f]+ )?address (?:0x)?(?P<v>[0-9a-f]+)",
                              "fault_address", vcpu_group=True, bare_hex=True),
}


# ----------------------------------------------------------------------- kprobes

# trace_kprobe.c print_kprobe_event(): "(SYM+0xOFF/0xSIZE [MOD])" then " name=value" args;
# print_kretprobe_event(): "(CALLER+0xOFF/0xSIZE [MOD] <- FUNC [MOD])".  fprobes look alike.
_SYM = r"(?P<{0}>[A-Za-z_][\w.$]*)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[[^\]]+\])?"
_KPROBE = re.compile(r"\(" + _SYM.format("at") + r"(?: <- " + _SYM.format("func") + r")?\)(?P<args>.*)", re.A)
# perf script prints addresses only: "(ffffffffc0a1b2c0)" or "(ffff... <- ffff...)".
_PERF_PROBE = re.compile(r"\((?:0x)?[0-9a-f]+(?P<ret> <- (?:0x)?[0-9a-f]+)?\)(?P<args>.*)", re.A)


def kprobe_function(body: str) -> tuple[str, bool, str] | None:
    """(function, is_return, args) of an ftrace kprobe/kretprobe body, else None."""
    m = _KPROBE.match(body)
    if m is None:
        return None
    if m.group("func"):
        return m.group("func"), True, m.group("args")
    return m.group("at"), False, m.group("args")


def perf_probe_args(body: str) -> tuple[bool, str] | None:
    """(is_return, args) of a perf probe body, else None."""
    m = _PERF_PROBE.match(body)
    return None if m is None else (m.group("ret") is not None, m.group("args"))


def function_payload(func: str, is_return: bool, args: str) -> Payload | None:
    """Row payload of a probe on ``func``; None when the function/return is not one we use."""
    kind = kind_for(func, is_return)
    if kind is None:
        return None
    value = 0
    if kind == Kind.MMU_LOAD_RETURN:
        # kvm_mmu_load() returns int; "$retval" prints as a u64 of RAX, e.g. arg1=0xfffffff4.
        m = _FIELD.search(args)
        if m is not None:
            try:
                value = s32(num(m.group(2)))
            except ValueError:
                value = 0
    return row(kind, value=value)


# ----------------------------------------------------------------------- joined lines

# A second event line inside a body: its "[cpu]" field or its "secs.usecs:" timestamp.  When
# newlines are lost, one "line" holds many events; the first one's decoder must not accept
# the rest as trailing text (kvm_exit and kvm_entry bodies carry version-dependent tails,
# so this check covers them; the exact decoders above refuse any tail anyway).
JOINED = re.compile(r"\[[0-9]{1,6}\][ \t]|[0-9]\.[0-9]{6,9}:[ \t]", re.A)


def joined(body: str) -> bool:
    return JOINED.search(body) is not None


# Every tracepoint decoded into a model row, and the probed functions: a line of one of
# these that cannot be decoded could change a verdict.
MODEL_HINT = re.compile(
    r"kvm_(?:mmu_(?:get|sync|unsync|prepare_zap|zap)_page|pv_tlb_flush|hv_flush_tlb|entry|exit"
    r"|mmu_pagetable_walk|mmu_paging_element|mmu_set_spte|emulate_insn|pio|mmio|hypercall"
    r"|userspace_exit|page_fault|mmu_(?:un)?load|mmu_sync_(?:prev_)?roots|vcpu_flush_tlb_guest"
    r"|service_local_tlb_flush_requests)|flush_tlb", re.A)
