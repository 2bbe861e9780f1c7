"""KVM tracepoints read as raw tracepoints: the same record fields, attached as BPF links.

A tracepoint attached through perf (``PERF_EVENT_IOC_SET_BPF``) costs an RCU grace period
when it is closed (``perf_event_release_kernel``: 72-88 ms each here, far more on a loaded
host); a raw tracepoint (``BPF_RAW_TRACEPOINT_OPEN``, 4.17+) attaches and detaches in
microseconds.  A raw tracepoint program does not get the tracepoint's record: it gets the
tracepoint's C arguments (``TP_PROTO``) as ``ctx->args[]``, each cast to u64 by the kernel's
``__bpf_trace_<event>`` wrapper (include/trace/bpf_probe.h).  So for each tracepoint whose
``TP_fast_assign`` copies arguments, or plain members of an argument, into the record, this
table says where each record field comes from, and the handler reads exactly that:

- ``("arg", i)``           ``__entry->f = arg_i``
- ``("member", i, path)``  ``__entry->f = arg_i->path`` (offset and type from BTF)
- ``("deref", i)``         ``__entry->f = *arg_i``
- ``("select", c, a, b)``  ``__entry->f = arg_c ? arg_a : arg_b``

The value is then cast to the record field's type from the tracepoint's format file, as the
assignment into ``__entry`` does, so a record is the same whichever way it was read.  The
argument list is checked against BTF (the ``btf_trace_<event>`` typedef): count, kinds,
sizes, signedness and the pointed-to struct; any difference, a member BTF lacks, or a
field computed by a function (``kvm_entry``'s ``rip = kvm_rip_read(vcpu)``) keeps that
tracepoint on perf, and the plan says why.  Nothing here reads a kernel version.

Kernel sources (TRACE_EVENT definitions): include/trace/events/kvm.h (kvm_userspace_exit,
kvm_mmio), arch/x86/kvm/trace.h (the other kvm: events), arch/x86/kvm/mmu/mmutrace.h
(kvmmmu:).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import re

from kvmtrace.host.btf import ENUM, ENUM64, INT, PTR, Btf, Param

Source = tuple


@dataclass(frozen=True)
class RawSpec:
    event: str
    proto: tuple[str, ...]               # TP_PROTO's types, in order
    fields: dict[str, Source]            # record field -> where TP_fast_assign takes it
    cite: str = ""


# Sizes and signedness of the argument types the table names (x86-64).
_INTS = {"bool": (1, False), "u8": (1, False), "__u8": (1, False), "u16": (2, False),
         "__u16": (2, False), "u32": (4, False), "__u32": (4, False), "unsigned int": (4, False),
         "int": (4, True), "u64": (8, False), "__u64": (8, False), "gfn_t": (8, False),
         "unsigned long": (8, False)}

_V = "struct kvm_vcpu *"
SPECS: dict[str, RawSpec] = {s.event: s for s in (
    # arch/x86/kvm/trace.h; called by record_steal_time() (x86.c) as
    # trace_kvm_pv_tlb_flush(vcpu->vcpu_id, st_preempted & KVM_VCPU_FLUSH_TLB).
    RawSpec("kvm_pv_tlb_flush", ("unsigned int", "bool"),
            {"vcpu_id": ("arg", 0), "need_flush_tlb": ("arg", 1)}, "arch/x86/kvm/trace.h"),
    RawSpec("kvm_hv_flush_tlb", ("u64", "u64", "u64", "bool"),
            {"processor_mask": ("arg", 0), "address_space": ("arg", 1), "flags": ("arg", 2),
             "guest_mode": ("arg", 3)}, "arch/x86/kvm/trace.h"),
    RawSpec("kvm_hv_flush_tlb_ex", ("u64", "u64", "u64", "u64", "bool"),
            {"valid_bank_mask": ("arg", 0), "format": ("arg", 1), "address_space": ("arg", 2),
             "flags": ("arg", 3), "guest_mode": ("arg", 4)}, "arch/x86/kvm/trace.h"),
    # TRACE_EVENT_KVM_EXIT: vcpu_id = vcpu->vcpu_id; requests = READ_ONCE(vcpu->requests)
    # (6.14+); exit_reason, info1/2 come from kvm_x86_ops.get_exit_info (not read here).
    RawSpec("kvm_exit", (_V, "u32"),
            {"vcpu_id": ("member", 0, "vcpu_id"), "requests": ("member", 0, "requests"),
             "isa": ("arg", 1)}, "arch/x86/kvm/trace.h"),
    RawSpec("kvm_page_fault", (_V, "u64", "u64"),
            {"vcpu_id": ("member", 0, "vcpu_id"), "fault_address": ("arg", 1),
             "error_code": ("arg", 2)}, "arch/x86/kvm/trace.h"),
    RawSpec("kvm_cr", ("unsigned int", "unsigned int", "unsigned long"),
            {"rw": ("arg", 0), "cr": ("arg", 1), "val": ("arg", 2)}, "arch/x86/kvm/trace.h"),
    # kvm_pio's val is read through a size-dependent cast of data: not in the table.
    RawSpec("kvm_pio", ("unsigned int", "unsigned int", "unsigned int", "unsigned int", "void *"),
            {"rw": ("arg", 0), "port": ("arg", 1), "size": ("arg", 2), "count": ("arg", 3)},
            "arch/x86/kvm/trace.h"),
    RawSpec("kvm_hypercall", ("unsigned long",) * 5,
            {"nr": ("arg", 0), "a0": ("arg", 1), "a1": ("arg", 2), "a2": ("arg", 3),
             "a3": ("arg", 4)}, "arch/x86/kvm/trace.h"),
    RawSpec("kvm_smm_transition", ("unsigned int", "u64", "bool"),
            {"vcpu_id": ("arg", 0), "smbase": ("arg", 1), "entering": ("arg", 2)},
            "arch/x86/kvm/trace.h"),
    RawSpec("kvm_nested_vmenter", ("__u64", "__u64", "__u64", "__u32", "__u32", "bool", "__u64",
                                   "__u64", "__u32"),
            {"rip": ("arg", 0), "vmcb": ("arg", 1), "nested_rip": ("arg", 2),
             "int_ctl": ("arg", 3), "event_inj": ("arg", 4), "tdp_enabled": ("arg", 5),
             "guest_pgd": ("select", 5, 6, 7), "isa": ("arg", 8)}, "arch/x86/kvm/trace.h"),
    RawSpec("kvm_nested_vmexit_inject", ("__u32", "__u64", "__u64", "__u32", "__u32", "__u32"),
            {"exit_code": ("arg", 0), "exit_info1": ("arg", 1), "exit_info2": ("arg", 2),
             "exit_int_info": ("arg", 3), "exit_int_info_err": ("arg", 4), "isa": ("arg", 5)},
            "arch/x86/kvm/trace.h"),
    # include/trace/events/kvm.h
    RawSpec("kvm_userspace_exit", ("__u32", "int"),
            {"reason": ("arg", 0), "errno": ("arg", 1)}, "include/trace/events/kvm.h"),
    RawSpec("kvm_mmio", ("int", "int", "u64", "void *"),
            {"type": ("arg", 0), "len": ("arg", 1), "gpa": ("arg", 2)}, "include/trace/events/kvm.h"),
    # arch/x86/kvm/mmu/mmutrace.h: kvm_mmu_set_spte(level, gfn, sptep): spte = *sptep.
    RawSpec("kvm_mmu_set_spte", ("int", "gfn_t", "u64 *"),
            {"level": ("arg", 0), "gfn": ("arg", 1), "spte": ("deref", 2)},
            "arch/x86/kvm/mmu/mmutrace.h"),
    RawSpec("kvm_mmu_pagetable_walk", ("u64", "u32"),
            {"addr": ("arg", 0), "pferr": ("arg", 1)}, "arch/x86/kvm/mmu/mmutrace.h"),
)}

# Why the others stay perf-event tracepoints.
NOT_RAW = {
    "kvm_entry": "its rip is kvm_rip_read(vcpu), which may fetch the register from the VMCS",
    "kvm_emulate_insn": "its fields come from the emulator context through vendor callbacks",
}


def _param_problem(want: str, got: Param) -> str:
    if want.endswith("*"):
        target = want[:-1].strip()
        if got.kind != PTR:
            return f"{got.type_name} is not a pointer"
        if target.startswith("struct ") and got.target != target:
            return f"{got.type_name} does not point to {target}"
        if target in _INTS and got.target_size != _INTS[target][0]:
            return f"{got.type_name} does not point to a {target}"
        return ""
    size, signed = _INTS[want]
    if got.kind not in (INT, ENUM, ENUM64) or got.size != size or (got.signed != signed and size > 1):
        return f"{got.type_name} is not {want}"
    return ""


def proto_problem(spec: RawSpec, params: list[Param] | None) -> str:
    """Why BTF's argument list of the tracepoint is not the one the table reads ("" if it is)."""
    if params is None:
        return f"BTF has no btf_trace_{spec.event}"
    if len(params) != len(spec.proto):
        return f"btf_trace_{spec.event} has {len(params)} arguments, the table {len(spec.proto)}"
    for i, (want, got) in enumerate(zip(spec.proto, params)):
        problem = _param_problem(want, got)
        if problem:
            return f"btf_trace_{spec.event} argument {i}: {problem}"
    return ""


_READ_BITS = {1: 8, 2: 16, 4: 32, 8: 64}


def source_expr(spec: RawSpec, field: str, params: list[Param], btf: Btf) -> str | tuple[None, str]:
    """The C expression (over ``ctx->args``) of one record field, or (None, why not)."""
    src = spec.fields.get(field)
    if src is None:
        return None, f"field {field} is not a plain argument or member"
    kind = src[0]
    if kind == "arg":
        return f"ctx->args[{int(src[1])}]"
    if kind == "select":
        c, a, b = (int(x) for x in src[1:])
        # kt_select (kvmtrace.c): clang would turn "c ? args[a] : args[b]" into a load at a
        # computed ctx offset, which the verifier refuses ("dereference of modified ctx ptr").
        return f"kt_select(ctx->args[{c}], ctx->args[{a}], ctx->args[{b}])"
    if kind == "deref":
        p = params[int(src[1])]
        bits = _READ_BITS.get(p.target_size)
        if bits is None:
            return None, f"{field}: *{p.type_name} is {p.target_size} bytes"
        return f"kt_rd{bits}(ctx->args[{int(src[1])}])"
    if kind == "member":
        p = params[int(src[1])]
        struct_name = p.target.split(" ", 1)[1] if p.target.startswith("struct ") else ""
        m = btf.member(struct_name, src[2]) if struct_name else None
        if m is None:
            return None, f"{field}: {p.target}.{src[2]} not in BTF"
        bits = _READ_BITS.get(m.size)
        if bits is None or m.bit_size or m.nelems:
            return None, f"{field}: {p.target}.{src[2]} is not a plain integer ({m.type_name})"
        if type(m.offset) is not int or not 0 <= m.offset < 1 << 20:
            return None, f"{field}: offset {m.offset!r} out of range"
        cast = f"({'s' if m.signed else 'u'}{bits})"
        return f"{cast}kt_rd{bits}(ctx->args[{int(src[1])}] + {m.offset})"
    return None, f"{field}: unknown source {kind!r}"


_ARGS_RE = re.compile(r"args->([A-Za-z_][A-Za-z0-9_]*)")


def convert(rt, btf: Btf | None):
    """``rt`` (a ResolvedTracepoint) read as a raw tracepoint, or the reason it stays on perf."""
    event = rt.probe.event
    if btf is None:
        return "no BTF"
    spec = SPECS.get(event)
    if spec is None:
        return NOT_RAW.get(event, "not in the raw-tracepoint table")
    params = btf.trace_params(event)
    problem = proto_problem(spec, params)
    if problem:
        return problem
    exprs: dict[str, str] = {}
    decls: list[str] = []
    for f in rt.fields:
        e = source_expr(spec, f.name, params, btf)
        if isinstance(e, tuple):
            return e[1]
        if f.array or not f.is_scalar:
            return f"field {f.name} is not a scalar"
        # Each field read once, as TP_fast_assign stores it once into the record.
        ctype = f"{'s' if f.signed else 'u'}{f.size * 8}"
        decls.append(f"{ctype} kt_f_{f.name} = ({ctype}){e};")
        exprs[f.name] = f"kt_f_{f.name}"

    def sub(text: str) -> str:
        return _ARGS_RE.sub(lambda m: exprs[m.group(1)], text)
    try:
        columns = {c: sub(e) for c, e in rt.columns.items()}
        arg = sub(rt.arg)
    except KeyError as exc:
        return f"field {exc.args[0]} has no raw source"
    return replace(rt, columns=columns, arg=arg, raw=True, raw_decls=tuple(decls), perf=rt)
