"""Which of the KVM functions kvmtrace would probe (kvmtrace/functions.py) exist here.

A function can take a kprobe only if it has a symbol in /proc/kallsyms.  A ``static``
function inlined into all its callers has none (``kvm_vcpu_flush_tlb_guest`` on most 6.x
builds); one the compiler cloned appears as ``name.isra.0`` / ``name.constprop.0`` and
only the calls through the clone are seen.  ``available_filter_functions`` (when readable)
lists the functions ftrace-based attachment (fentry, kprobe-on-ftrace) can use; a symbol
missing from it is ``notrace`` or outside ftrace's reach.
"""
from __future__ import annotations

from dataclasses import dataclass

from kvmtrace.functions import PROBED_FUNCTIONS, ProbedFunction
from kvmtrace.schema import Kind
from kvmtrace.host.kallsyms import Kallsyms

# The vendor prefix of each backend's functions (arch/x86/kvm/vmx, svm, pvm).
VENDOR_PREFIX = {"kvm_intel": "vmx_", "kvm_amd": "svm_", "kvm_pvm": "pvm_"}
PRESENT, CLONE, MISSING, OTHER_BACKEND, UNKNOWN = "present", "clone", "missing", "other-backend", "unknown"


@dataclass(frozen=True)
class FunctionStatus:
    function: ProbedFunction
    status: str              # PRESENT | CLONE | MISSING | OTHER_BACKEND | UNKNOWN
    symbol: str = ""         # what a probe would attach to
    detail: str = ""
    traceable: bool | None = None   # listed in available_filter_functions (None: unreadable)

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def attachable(self) -> bool:
        return self.status in (PRESENT, CLONE)


def _vendor_of(name: str) -> str | None:
    for backend, prefix in VENDOR_PREFIX.items():
        if name.startswith(prefix):
            return backend
    return None


def discover(kallsyms: Kallsyms | None, backend: str,
             filter_functions: set[str] | None = None) -> list[FunctionStatus]:
    """The status of every probed function on this kernel."""
    out = []
    for fn in PROBED_FUNCTIONS:
        out.append(_status(fn, kallsyms, backend, filter_functions))
    return out


def _status(fn: ProbedFunction, kallsyms: Kallsyms | None, backend: str,
            filter_functions: set[str] | None) -> FunctionStatus:
    vendor = _vendor_of(fn.name)
    if vendor is not None and backend and vendor != backend:
        return FunctionStatus(fn, OTHER_BACKEND, detail=f"{vendor} function; this host runs {backend}")
    if kallsyms is None:
        return FunctionStatus(fn, UNKNOWN, detail="/proc/kallsyms unreadable")
    traceable = None if filter_functions is None else fn.name in filter_functions
    if kallsyms.has(fn.name):
        detail = "symbol in kallsyms"
        if traceable is False:
            detail += "; not in available_filter_functions (notrace: no fentry)"
        return FunctionStatus(fn, PRESENT, fn.name, detail, traceable)
    clones = kallsyms.clones_of(fn.name)
    if clones:
        return FunctionStatus(fn, CLONE, clones[0],
                              f"only compiler clone(s) {', '.join(clones)}: calls inlined elsewhere are missed",
                              None if filter_functions is None else clones[0] in filter_functions)
    why = "no symbol: inlined into its callers, or not in this kernel version"
    if fn.entry == Kind.FLUSH_GUEST_ENTRY:
        why = ("no symbol: static in arch/x86/kvm/x86.c and inlined; flushes are seen through "
               "kvm:kvm_pv_tlb_flush and the sync/load functions instead")
    return FunctionStatus(fn, MISSING, detail=why)
