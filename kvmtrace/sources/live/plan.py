"""Choose what to attach: the best probe set this host allows, and why not the rest.

``auto`` takes every KVM tracepoint kvmtrace knows that exists here, plus function probes
when kprobes work; ``tracepoints`` and ``functions`` restrict to one kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kvmtrace.host import FormatError, HostFacts
from kvmtrace.host.probepoints import FunctionStatus, discover
from kvmtrace.schema import Kind
from kvmtrace.sources.live.capabilities import Capability
from kvmtrace.sources.live.program import FunctionProbe, ResolvedTracepoint, resolve
from kvmtrace.sources.live.tracepoints import TRACEPOINTS

MODES = ("auto", "tracepoints", "functions")


@dataclass
class ProbePlan:
    mode: str
    tracepoints: list[ResolvedTracepoint] = field(default_factory=list)
    functions: list[FunctionProbe] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (probe, why not)
    function_status: list[FunctionStatus] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return ([f"tracepoint:{t.name}" for t in self.tracepoints]
                + [f.name for f in self.functions])

    @property
    def empty(self) -> bool:
        return not self.tracepoints and not self.functions


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


def build(facts: HostFacts, mode: str, kprobes: Capability,
          filter_functions: set[str] | None = None) -> ProbePlan:
    if mode not in MODES:
        raise ValueError(f"unknown probe mode {mode!r}")
    plan = ProbePlan(mode)
    if mode in ("auto", "tracepoints"):
        for tp in TRACEPOINTS:
            try:
                fmt = facts.tracefs.format(tp.system, tp.event) if facts.tracefs else None
            except FormatError as exc:
                plan.skipped.append((f"tracepoint:{tp.name}", str(exc)))
                continue
            r = resolve(tp, fmt)
            if isinstance(r, str):
                plan.skipped.append((f"tracepoint:{tp.name}", r if facts.tracefs else "tracefs not mounted"))
            else:
                plan.tracepoints.append(r)
    plan.function_status = discover(facts.kallsyms, facts.kvm_backend, filter_functions)
    if mode in ("auto", "functions"):
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
