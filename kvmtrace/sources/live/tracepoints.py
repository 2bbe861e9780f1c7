"""The KVM tracepoints kvmtrace records, and how each maps onto a schema row.

Built from the per-kind table in ``kvmtrace/kinds.py``: each entry names a tracepoint, the
``Kind`` it becomes, how the kernel side treats it (``handler``, see
kvmtrace/probes/kvmtrace.c) and C expressions for the schema columns it fills.
Expressions name tracepoint fields as ``{field}``; a column lists alternatives, the first
whose fields all exist in the running kernel's ``format`` file wins (field sets differ by
kernel version: ``kvm_exit.requests`` is 6.14+).  The mapping must give the same row as
the text importer gives for the same event, so that analysis treats both alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvmtrace.kinds import (ALWAYS, KT_EMULATE, KT_EVIDENCE, KT_GUEST_EXIT, KT_OPEN_CR,  # noqa: F401
                            KVM_REQ_TLB_FLUSH_GUEST_BIT, OPEN, PV_FLUSH, tracepoints)
from kvmtrace.schema import Kind

# Kernel-side treatment (functions in kvmtrace/probes/kvmtrace.c), as the program names them.
EVIDENCE = KT_EVIDENCE
GUEST_EXIT = KT_GUEST_EXIT
OPEN_CR = KT_OPEN_CR
EMULATE = KT_EMULATE

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


# Every tracepoint the per-kind table (kvmtrace/kinds.py) records live, in table order.
TRACEPOINTS: tuple[TracepointProbe, ...] = tuple(
    TracepointProbe(tp.system, tp.event, row.kind, tp.live, dict(tp.columns), tp.arg)
    for row, tp in tracepoints() if tp.live is not None)

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
