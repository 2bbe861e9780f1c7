"""Choose what to attach: the best probe set this host allows, and why not the rest.

``auto`` takes every KVM tracepoint kvmtrace knows that exists here, plus function probes
when kprobes work, plus the exact mode (raw tracepoints reading KVM's shadow-MMU structures
at BTF offsets) where BTF has every field it reads and the kvmmmu SP tracepoints exist;
``exact`` insists on the exact mode; ``tracepoints`` and ``functions`` restrict to one kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kvmtrace.host import FormatError, HostFacts
from kvmtrace.host.btf import Btf
from kvmtrace.host.exactlayout import PVM_HC_TRACEPOINT, ExactLayout
from kvmtrace.host.probepoints import FunctionStatus, discover
from kvmtrace.schema import Kind
from kvmtrace.sources.live.capabilities import Capability
from kvmtrace.sources.live import rawtp
from kvmtrace.sources.live.bpfsys import PROG_TYPE_RAW_TRACEPOINT, PROG_TYPE_TRACEPOINT
from kvmtrace.sources.live.program import (EXACT_SP_EVENTS, FunctionProbe, ResolvedTracepoint, exact_fn,
                                           resolve)
from kvmtrace.sources.live.tracepoints import TRACEPOINTS

MODES = ("auto", "exact", "tracepoints", "functions")


@dataclass
class ProbePlan:
    mode: str
    tracepoints: list[ResolvedTracepoint] = field(default_factory=list)
    functions: list[FunctionProbe] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (probe, why not)
    function_status: list[FunctionStatus] = field(default_factory=list)
    exact: ExactLayout | None = None     # the exact mode is on with these offsets
    exact_off: str = ""                  # why it is off (modes auto and exact)
    on_perf: list[tuple[str, str]] = field(default_factory=list)   # (tracepoint, why not raw)
    raw_off: str = ""                    # why no tracepoint is read raw (no BTF, refused ...)

    @property
    def exact_events(self) -> list[str]:
        """The raw tracepoints of the exact mode (kvmtrace/probes/exact.c)."""
        if self.exact is None:
            return []
        events = list(EXACT_SP_EVENTS)
        if not self.exact.pvm_hypercall_problem():
            events.append(PVM_HC_TRACEPOINT)
        return events

    @property
    def raw_names(self) -> list[str]:
        return [f"raw_tracepoint:{e}" for e in self.exact_events]

    @property
    def names(self) -> list[str]:
        return (self.raw_names + [t.probe_name for t in self.tracepoints]
                + [f.name for f in self.functions])

    @property
    def empty(self) -> bool:
        return not self.tracepoints and not self.functions and self.exact is None

    def transport_line(self) -> str:
        """One line: how the tracepoints are attached (raw tracepoints or perf events)."""
        raw = sum(1 for t in self.tracepoints if t.raw)
        perf = len(self.tracepoints) - raw
        if self.raw_off:
            return f"tracepoints: {perf} as perf events (raw tracepoints off: {self.raw_off})"
        line = f"tracepoints: {raw} as raw tracepoints (BPF links), {perf} as perf events"
        if self.on_perf:
            line += " (" + "; ".join(f"{n}: {why}" for n, why in self.on_perf) + ")"
        return line

    def without_raw(self, why: str) -> "ProbePlan":
        """The same plan with every tracepoint on perf (raw tracepoints refused: ``why``)."""
        out = ProbePlan(self.mode, [_perf(t) for t in self.tracepoints], list(self.functions),
                        list(self.skipped), list(self.function_status), self.exact, self.exact_off)
        out.raw_off = why
        return out

    def exact_line(self) -> str:
        if self.exact is not None:
            why = self.exact.pvm_hypercall_problem()
            hc = ("PVM flush hypercalls seen at msr:write_msr" if not why
                  else f"PVM flush hypercalls not seen: {why}")
            return f"exact mode: on (raw tracepoints, offsets from {self.exact.source}; {hc})"
        return f"exact mode: off ({self.exact_off or 'mode ' + self.mode})"


def prog_types(plan: ProbePlan) -> dict[str, int]:
    """Every tracepoint function of the plan's program and its BPF program type."""
    types = {exact_fn(e): PROG_TYPE_RAW_TRACEPOINT for e in plan.exact_events}
    for rt in plan.tracepoints:
        types[rt.fn_name] = PROG_TYPE_RAW_TRACEPOINT if rt.raw else PROG_TYPE_TRACEPOINT
    return types


def function_probes(status: list[FunctionStatus]) -> list[FunctionProbe]:
    out: list[FunctionProbe] = []
    for st in status:
        if not st.attachable:
            continue
        fn = st.function
        if fn.entry is not None:
            out.append(FunctionProbe(st.symbol, fn.entry, False, fn.entry == Kind.FLUSH_GUEST_ENTRY))
        if fn.ret is not None:
            out.append(FunctionProbe(st.symbol, fn.ret, True))
    return out


def exact_problem(facts: HostFacts, layout: ExactLayout | None) -> str:
    """Why the exact mode cannot run here ("" when it can, as far as files tell)."""
    if layout is None:
        return "not requested"
    if not layout.usable:
        return f"BTF ({layout.source}): " + "; ".join(layout.problems)
    if facts.tracefs is None:
        return "tracefs is not mounted"
    absent = [e for e in EXACT_SP_EVENTS if not facts.tracefs.exists("kvmmmu", e)]
    if absent:
        return "kvmmmu tracepoint(s) absent: " + ", ".join(absent)
    return ""


def _perf(rt: ResolvedTracepoint) -> ResolvedTracepoint:
    """rt as the perf-event tracepoint it was resolved as (re-resolved from its fields)."""
    return rt.perf if rt.raw and rt.perf is not None else rt


def build(facts: HostFacts, mode: str, kprobes: Capability,
          filter_functions: set[str] | None = None,
          layout: ExactLayout | None = None, btf: Btf | None = None,
          btf_problem: str = "no BTF") -> ProbePlan:
    """layout: the BTF offsets of the exact mode (modes auto and exact), None = off.
    btf: the kernel's BTF, to read tracepoints as raw tracepoints (rawtp.py); without it
    every tracepoint is a perf event and the plan says ``btf_problem``."""
    if mode not in MODES:
        raise ValueError(f"unknown probe mode {mode!r}")
    plan = ProbePlan(mode)
    if mode in ("auto", "exact"):
        plan.exact_off = exact_problem(facts, layout)
        if not plan.exact_off:
            plan.exact = layout
    if mode in ("auto", "exact", "tracepoints"):
        for tp in TRACEPOINTS:
            try:
                fmt = facts.tracefs.format(tp.system, tp.event) if facts.tracefs else None
            except FormatError as exc:
                plan.skipped.append((f"tracepoint:{tp.name}", str(exc)))
                continue
            r = resolve(tp, fmt)
            if isinstance(r, str):
                plan.skipped.append((f"tracepoint:{tp.name}", r if facts.tracefs else "tracefs not mounted"))
            elif plan.exact is not None and tp.system == "kvmmmu" and tp.event in EXACT_SP_EVENTS:
                continue                 # read as raw tracepoints (kvmtrace/probes/exact.c)
            else:
                raw = rawtp.convert(r, btf) if btf is not None else btf_problem
                if isinstance(raw, str):
                    plan.on_perf.append((tp.name, raw))
                    plan.tracepoints.append(r)
                else:
                    plan.tracepoints.append(raw)
        if btf is None and plan.tracepoints:
            plan.raw_off, plan.on_perf = btf_problem, []
    plan.function_status = discover(facts.kallsyms, facts.kvm_backend, filter_functions)
    if mode in ("auto", "exact", "functions"):
        for st in plan.function_status:
            if st.status == "other-backend":
                continue
            if not st.attachable:
                plan.skipped.append((f"kprobe:{st.name}", st.detail))
            elif not kprobes.usable:
                plan.skipped.append((f"kprobe:{st.name}", kprobes.detail))
        if kprobes.usable:
            plan.functions = function_probes(plan.function_status)
    return plan
