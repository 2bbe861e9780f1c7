"""Generate the BPF C program BCC compiles: kvmtrace/probes/kvmtrace.c plus one handler per probe.

Only validated integers and C identifiers reach the text: TGIDs and sizes are checked
``int``s, tracepoint and field names come from tracefs and must be identifiers, symbol
names come from kallsyms and must be identifiers (with compiler-clone dots).

Tracepoint handlers read the raw record through a generated struct whose member offsets
are those of the running kernel's ``format`` file; a ``_Static_assert`` per member makes
the compiler check every offset against it.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from kvmtrace.analysis.flushpaths import PVM_FLUSH_HYPERCALLS, PVM_HC_VECTOR
from kvmtrace.host.exactlayout import ExactLayout
from kvmtrace.host.tracefs import TraceField, TracepointFormat, valid_name
from kvmtrace.schema import Kind
from kvmtrace import probes
from kvmtrace.sources.live.tracepoints import EMULATE, EVIDENCE, GUEST_EXIT, OPEN_CR, TracepointProbe, fields_of

WITH_ARG = (EVIDENCE, GUEST_EXIT, EMULATE, OPEN_CR)
EVIDENCE_HANDLERS = (EVIDENCE, GUEST_EXIT, EMULATE)   # guest-run evidence: exact snapshots

RECORD_SIZE = 72          # struct kt_record
NKINDS = 64               # kt_counted slots (Kind codes are < 64)
MAX_TGIDS = 64
_SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_TYPE_WORDS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ]*$")
# Header of a tracepoint record (struct trace_entry); BPF may not read it.
TRACE_ENTRY_SIZE = 8


class ProgramError(ValueError):
    """Something unsafe or inconsistent was about to go into the BPF text."""


@dataclass(frozen=True)
class ProgramConfig:
    tgids: tuple[int, ...] = ()
    ringbuf_pages: int = 8192          # 32 MiB with 4 KiB pages; must be a power of 2
    evidence_budget: int = 4           # evidence records emitted per flush window
    max_threads: int = 16384

    def validate(self) -> None:
        if len(self.tgids) > MAX_TGIDS:
            raise ProgramError(f"at most {MAX_TGIDS} TGIDs can be filtered")
        for t in self.tgids:
            if type(t) is not int or not 0 < t < 2**22:
                raise ProgramError(f"TGID {t!r} is not a process id")
        p = self.ringbuf_pages
        if type(p) is not int or p < 1 or p & (p - 1) or p > 1 << 18:
            raise ProgramError(f"ring buffer pages {p!r} must be a power of 2 up to 262144")
        for name in ("evidence_budget", "max_threads"):
            v = getattr(self, name)
            if type(v) is not int or not 0 < v <= 1 << 20:
                raise ProgramError(f"{name} {v!r} out of range")


@dataclass(frozen=True)
class ResolvedTracepoint:
    """A TracepointProbe checked against the running kernel's format file."""

    probe: TracepointProbe
    fields: tuple[TraceField, ...]     # the fields the handler reads, by offset
    columns: dict[str, str]            # schema column -> C expression (args->x form)
    arg: str                           # the handler's extra argument (WITH_ARG handlers)
    raw: bool = False                  # read as a raw tracepoint (rawtp.py): kt_f_x form
    raw_decls: tuple[str, ...] = ()    # raw: "u32 kt_f_x = <read of ctx->args>;" per field
    perf: "ResolvedTracepoint | None" = field(default=None, compare=False, repr=False)  # raw: the perf form

    @property
    def name(self) -> str:
        return self.probe.name

    @property
    def fn_name(self) -> str:
        return f"kt_{'raw' if self.raw else 'tp'}__{self.probe.system}__{self.probe.event}"

    @property
    def probe_name(self) -> str:
        """The attached probe's name in reports and metadata."""
        return f"raw_tracepoint:{self.probe.event}" if self.raw else f"tracepoint:{self.name}"


@dataclass(frozen=True)
class FunctionProbe:
    """A kprobe (or kretprobe) on a KVM function that has a symbol."""

    symbol: str          # the kallsyms name it attaches to
    kind: Kind
    is_return: bool = False
    opens_window: bool = False

    @property
    def fn_name(self) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", self.symbol)
        return f"kt_{'fnret' if self.is_return else 'fn'}__{base}"

    @property
    def name(self) -> str:
        return f"{'kretprobe' if self.is_return else 'kprobe'}:{self.symbol}"


def resolve(probe: TracepointProbe, fmt: TracepointFormat | None) -> ResolvedTracepoint | str:
    """The probe's handler inputs, or the reason it cannot be generated."""
    if fmt is None:
        return "tracepoint absent"
    used: dict[str, TraceField] = {}
    columns: dict[str, str] = {}
    for column, choices in probe.columns.items():
        chosen = _choose(choices, fmt)
        if chosen is None:
            missing = sorted({f for c in choices for f in fields_of(c)} - set(fmt.fields))
            return f"format lacks field(s) {', '.join(missing)}"
        expr, fields = chosen
        for f in fields:
            problem = _unusable(fmt.fields[f])
            if problem:
                return problem
            used[f] = fmt.fields[f]
        columns[column] = _subst(expr)
    arg = ""
    if probe.handler in WITH_ARG:
        chosen = _choose(probe.arg, fmt)
        if chosen is None or any(_unusable(fmt.fields[f]) for f in chosen[1]):
            return f"format lacks the fields of {probe.arg[0]!r}"
        arg = _subst(chosen[0])
        used.update((f, fmt.fields[f]) for f in chosen[1])
    fields = tuple(sorted(used.values(), key=lambda f: f.offset))
    return ResolvedTracepoint(probe, fields, columns, arg)


def _choose(choices: tuple[str, ...], fmt: TracepointFormat) -> tuple[str, list[str]] | None:
    for expr in choices:
        names = fields_of(expr)
        if all(n in fmt.fields for n in names):
            return expr, names
    return None


def _byte_array(f: TraceField) -> bool:
    """A fixed array of bytes (kvm_emulate_insn's ``__u8 insn[15]``)."""
    return f.array and f.ctype.split()[-1] in ("__u8", "u8", "char") and 0 < f.size <= 64


def _unusable(f: TraceField) -> str:
    if not valid_name(f.name):
        return f"field name {f.name!r} is not a C identifier"
    if not f.is_scalar and not _byte_array(f):
        return f"field {f.name} is not a scalar ({f.size} bytes{', array' if f.array else ''})"
    if f.offset < TRACE_ENTRY_SIZE:
        return f"field {f.name} lies in the trace_entry header"
    return ""


def _subst(expr: str) -> str:
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", r"args->\1", expr)


def _ctype(f: TraceField) -> str:
    return f"{'s' if f.signed else 'u'}{f.size * 8}"


def _checked_names(rt: ResolvedTracepoint) -> None:
    """The tracepoint's system and event become C identifiers: refuse anything else."""
    for part in (rt.probe.system, rt.probe.event):
        if not valid_name(part):
            raise ProgramError(f"tracepoint name {rt.name!r} is not made of C identifiers")


def _type_comment(f: TraceField) -> str:
    # The declared type is text from the format file: echo it only when it is plain words
    # (it sits inside a C comment, so "*/" must never get through).
    return f.ctype if _TYPE_WORDS_RE.match(f.ctype) else "?"


def args_struct(rt: ResolvedTracepoint) -> str:
    """A struct laying the used fields at their format-file offsets, with checks."""
    _checked_names(rt)
    sname = f"kt_args__{rt.probe.system}__{rt.probe.event}"
    lines = [f"struct {sname} {{"]
    pos = 0
    packed = any(f.offset % f.size for f in rt.fields if not _byte_array(f))
    for i, f in enumerate(rt.fields):
        if f.offset < pos:
            raise ProgramError(f"{rt.name}: field {f.name} overlaps the previous one")
        if f.offset > pos:
            lines.append(f"\tu8 __pad{i}[{f.offset - pos}];")
        decl = f"u8 {f.name}[{f.size}]" if _byte_array(f) else f"{_ctype(f)} {f.name}"
        lines.append(f"\t{decl};\t/* {_type_comment(f)}, offset {f.offset} */")
        pos = f.offset + f.size
    if not rt.fields:
        lines.append(f"\tu8 __pad0[{TRACE_ENTRY_SIZE}];")
    lines.append("}" + (" __attribute__((packed))" if packed else "") + ";")
    for f in rt.fields:
        lines.append(f'_Static_assert(__builtin_offsetof(struct {sname}, {f.name}) == {f.offset}, '
                     f'"{rt.name} {f.name} offset");')
    return "\n".join(lines)


def tracepoint_handler(rt: ResolvedTracepoint, exact: bool = False) -> str:
    _checked_names(rt)
    sname = f"kt_args__{rt.probe.system}__{rt.probe.event}"
    signature = (f"int {rt.fn_name}(struct bpf_raw_tracepoint_args *ctx)" if rt.raw
                 else f"int {rt.fn_name}(struct {sname} *args)")
    body = [signature, "{",
            "\tu64 id = bpf_get_current_pid_tgid();",
            "\tif (kt_skip(id >> 32))", "\t\treturn 0;"]
    if exact and rt.probe.handler in EVIDENCE_HANDLERS:
        # Exact mode: a root snapshot when one is due, before the window filter.
        body.append("\tkt_exact_evidence(id);")
    if rt.probe.handler == EVIDENCE:
        # Most evidence events find no open window: count them before building a record.
        body += ["\tif (!kt_window_open((u32)id)) {", f"\t\tkt_count({int(rt.probe.kind)});",
                 "\t\treturn 0;", "\t}"]
    body += [f"\t{d}" for d in rt.raw_decls]
    body += ["\tstruct kt_record e = {};",
            f"\tkt_init(&e, {int(rt.probe.kind)}, id);"]
    for column, expr in rt.columns.items():
        body.append(f"\te.{column} = {expr};")
        if column == "role":
            body.append("\te.flags |= KT_F_ROLE;")
    if rt.probe.handler in WITH_ARG:
        body.append(f"\treturn {rt.probe.handler}(&e, {rt.arg});")
    else:
        body.append(f"\treturn {rt.probe.handler}(&e);")
    body.append("}")
    if rt.raw:
        return f"/* {rt.name} as a raw tracepoint (kvmtrace/sources/live/rawtp.py) */\n" + "\n".join(body)
    return args_struct(rt) + "\n\n" + "\n".join(body)


def function_handler(fp: FunctionProbe) -> str:
    if not _SYMBOL_RE.match(fp.symbol):
        raise ProgramError(f"symbol {fp.symbol!r} is not a kernel function name")
    lines = [f"int {fp.fn_name}(struct pt_regs *ctx)", "{",
             "\tu64 id = bpf_get_current_pid_tgid();",
             "\tif (kt_skip(id >> 32))", "\t\treturn 0;",
             "\tstruct kt_record e = {};",
             f"\tkt_init(&e, {int(fp.kind)}, id);"]
    if fp.is_return:
        lines.append("\te.value = (s64)(int)PT_REGS_RC(ctx);")
    lines.append(f"\treturn {'kt_open' if fp.opens_window else 'kt_always'}(&e);")
    lines.append("}")
    return "\n".join(lines)


def tgid_slots(tgids: tuple[int, ...]) -> int:
    """Slots of kt_tgid_filter (0: no filter).  Rounded up so the program text, and with it
    the cached compiled program, depends on how many TGIDs at most, not which."""
    if not tgids:
        return 0
    return next(s for s in (4, 16, MAX_TGIDS) if len(tgids) <= s)


def tgid_filter_value(tgids: tuple[int, ...]) -> bytes:
    """The one value of kt_tgid_filter (struct kt_tgids in kvmtrace.c)."""
    slots = tgid_slots(tgids)
    return struct.pack(f"<I{slots}I", len(tgids), *tgids, *([0] * (slots - len(tgids))))


def exact_fn(event: str) -> str:
    """The function name of the exact mode's raw tracepoint ``event`` (exact.c KT_EXACT_PROBE)."""
    return f"kt_exact__{event}"


# The kvmmmu tracepoints the exact mode takes as raw tracepoints (arg0 = struct
# kvm_mmu_page *, arch/x86/kvm/mmu/mmutrace.h); their perf-event handlers are dropped.
EXACT_SP_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_unsync_page", "kvm_mmu_sync_page",
                   "kvm_mmu_prepare_zap_page")
EXACT_MAX_SPS = 1 << 16        # kt_spt entries (LRU): shadow pages remembered
EXACT_MAX_DESCS = 4            # pte_list_desc blocks followed per SP


def _int(v: int) -> int:
    if type(v) is not int or not 0 <= v < 1 << 20:
        raise ProgramError(f"offset {v!r} out of range")
    return v


def exact_defines(layout: ExactLayout) -> list[str]:
    """#defines of every offset kvmtrace/probes/exact.c reads, from BTF."""
    if not layout.usable:
        raise ProgramError("exact mode without a usable layout: " + "; ".join(layout.problems))
    out = ["#define KT_EXACT 1",
           f"#define KT_KIND_SP_GET {int(Kind.SP_GET)}",
           f"#define KT_KIND_SP_UNSYNC {int(Kind.SP_UNSYNC)}",
           f"#define KT_KIND_SP_SYNC {int(Kind.SP_SYNC)}",
           f"#define KT_KIND_SP_ZAP {int(Kind.SP_ZAP)}",
           f"#define KT_KIND_SP_LINK {int(Kind.SP_LINK)}",
           f"#define KT_KIND_ROOT_STATE {int(Kind.ROOT_STATE)}",
           f"#define KT_MAX_SPS {EXACT_MAX_SPS}",
           f"#define KT_MAX_DESCS {EXACT_MAX_DESCS}",
           f"#define KT_DESC_SLOTS {_int(layout.desc_slots)}",
           f"#define KT_PREV_ROOTS {_int(layout.prev_roots)}",
           f"#define KT_PREV_ROOT_STRIDE {_int(layout.prev_root_stride)}"]
    for key, m in layout.members.items():
        if m is not None:
            out.append(f"#define KT_OFF_{key.upper()} {_int(m.offset)}")
    if not layout.pvm_hypercall_problem():
        # exact.c's write_msr probe: kvm_pvm's int 0x1b flush hypercalls (flushpaths.py).
        numbers = " || ".join(f"(nr) == {int(n):#x}ULL" for n in PVM_FLUSH_HYPERCALLS)
        out += ["#define KT_PVM_HC 1",
                f"#define KT_KIND_FLUSH_PVM_HYPERCALL {int(Kind.FLUSH_PVM_HYPERCALL)}",
                f"#define KT_PVM_HC_VECTOR {int(PVM_HC_VECTOR):#x}",
                f"#define KT_PVM_HC_FLUSH_NR(nr) ({numbers})"]
    if not layout.invlpg_address_problem():
        # exact.c kt_invlpg_address(); VCPU_SREG_DS = 3 (arch/x86/include/asm/kvm_host.h
        # enum kvm_reg_seg: ES 0, CS 1, SS 2, DS 3, FS 4, GS 5).
        out += ["#define KT_INVLPG_EA 1",
                f"#define KT_EMUL_MODE_PROT64 {_int(layout.mode_prot64)}",
                "#define KT_SREG_DS 3"]
    return out


def generate(config: ProgramConfig, tracepoints: list[ResolvedTracepoint],
             functions: list[FunctionProbe], exact: ExactLayout | None = None) -> str:
    """The complete program text; with ``exact``, the exact mode's raw tracepoints too."""
    config.validate()
    head = [
        "/* Generated by kvmtrace (kvmtrace/live/program.py). */",
        f"#define KT_RECORD_SIZE {RECORD_SIZE}",
        f"#define KT_RINGBUF_PAGES {config.ringbuf_pages}",
        f"#define KT_NKINDS {NKINDS}",
        f"#define KT_MAX_THREADS {config.max_threads}",
        f"#define KT_EVIDENCE_BUDGET {config.evidence_budget}",
        f"#define KT_TGID_SLOTS {tgid_slots(config.tgids)}",
        f"#define KT_KIND_FLUSH_REQUEST_GUEST {int(Kind.FLUSH_REQUEST_GUEST)}",
        f"#define KT_KIND_FLUSH_CR3 {int(Kind.FLUSH_CR3)}",
        f"#define KT_KIND_FLUSH_CR4 {int(Kind.FLUSH_CR4)}",
        f"#define KT_KIND_FLUSH_INVLPG {int(Kind.FLUSH_INVLPG)}",
        f"#define KT_KIND_FLUSH_INVPCID {int(Kind.FLUSH_INVPCID)}",
    ]
    if exact is not None:
        head += exact_defines(exact)
        # Defined in exact.c, used by kvmtrace.c and the evidence handlers.
        head += ["static __always_inline void kt_exact_open(u32 tid);",
                 "static __always_inline void kt_exact_evidence(u64 id);"]
        if not exact.invlpg_address_problem():
            head.append("static __always_inline s64 kt_invlpg_address(void);")
        tracepoints = [rt for rt in tracepoints
                       if not (rt.probe.system == "kvmmmu" and rt.probe.event in EXACT_SP_EVENTS)]
    parts = ["\n".join(head), probes.source("kvmtrace.c")]
    if exact is not None:
        parts.append(probes.source("exact.c"))
    parts += [tracepoint_handler(rt, exact is not None) for rt in tracepoints]
    parts += [function_handler(fp) for fp in functions]
    return "\n\n".join(parts) + "\n"
