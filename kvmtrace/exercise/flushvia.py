"""``kvmtrace exercise --flush-via PATH``: how the built-in guest asks for each flush.

The paths are the rows of kvmtrace/analysis/flushpaths.py that a guest can request.  Per
round the writer remaps pages as always; then, for ``steal-time``, it sets the readers'
``KVM_VCPU_FLUSH_TLB`` bits (Linux ``kvm_flush_tlb_multi()`` for preempted vCPUs), and for
every other path each reader, on its next pass and before reading, flushes by itself as a
Linux vCPU does when the flush IPI reaches it (``flush_tlb_func()`` -> native CR3/CR4 write
or INVLPG, or the PVM paravirt op).  The reader's flush op sits in its control block
(guestcode.py ``CTL_FLUSH_OP``): 1 PVM hypercall (``int 0x1b``, number in RAX), 2 MOV to CR3,
3 MOV to CR4, 4 INVLPG of each address about to be read.

Whether the host services a path is found out at run time by ``probe()``: a throwaway
one-pass guest does the flush once and must come back with a sane return value and no
stale read.  Found on the project's kvm_pvm host (6.18): the upstream PVM hypercall numbers
(0x17088200-0x17088205) return -ENOSYS through ``int 0x1b``, this kvm_pvm's own flush
hypercall is 0x1007; INVPCID fails to emulate (KVM_EXIT_INTERNAL_ERROR) so it is not
offered; the guest has no Hyper-V enlightenments.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmtrace.analysis.flushpaths import EXERCISE_PATHS
from kvmtrace.exercise.cpustate import CR4
from kvmtrace.exercise.guestcode import CTL_FLUSH_OP, CTL_FLUSH_RET

OP_NONE, OP_HYPERCALL, OP_CR3, OP_CR4, OP_INVLPG = 0, 1, 2, 3, 4

# PVM RFC (arch/x86/include/uapi/asm/pvm_para.h): PVM_HC_SPECIAL_BASE + n.
PVM_HC_LOAD_PGTBL = 0x17088200
PVM_HC_TLB_FLUSH = 0x17088203
# This host's kvm_pvm (no published source): int 0x1b, RAX 0x1007 flushes the TLB
# (found by the probe: returns 0 and the unsync shadow page is synced).
PVM_INT1B_TLB_FLUSH = 0x1007
ENOSYS = -38
CR4_PGE = 1 << 7
ALL = "all"
CHOICES = (*EXERCISE_PATHS, ALL)

# What the built-in guest cannot do at all, whatever the host (one line each).
NOT_BUILT = {
    "hyperv": "the built-in guest has no Hyper-V enlightenments (HV CPUID leaves, hypercall page)",
}
NOT_ON_PVM = {
    "invpcid": "kvm_pvm emulates a guest's privileged instructions and KVM's emulator does not "
               "implement INVPCID (KVM_EXIT_INTERNAL_ERROR)",
    "hyperv": NOT_BUILT["hyperv"],
}
PVM_ONLY = ("pvm-hypercall", "pvm-load-pgtbl")


def s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class Request:
    """One reader's flush op for one pass."""

    op: int
    args: tuple[int, int, int] = (0, 0, 0)


class FlushVia:
    """The flush path(s) of a run; ``all`` rotates through them round by round."""

    def __init__(self, paths: tuple[str, ...], hypercall: int = PVM_INT1B_TLB_FLUSH) -> None:
        if not paths:
            raise ValueError("no flush path to use")
        self.paths = paths
        self.hypercall = hypercall
        self.cr4: dict[int, int] = {}
        self.by_path: dict[str, int] = {p: 0 for p in paths}

    def path_for(self, round_no: int) -> str:
        return self.paths[round_no % len(self.paths)]

    def steal_time(self, round_no: int) -> bool:
        return self.path_for(round_no) == "steal-time"

    def request(self, round_no: int, reader: int, cr3: int) -> Request:
        """The reader's op for the pass after the writer remapped its pages."""
        path = self.path_for(round_no)
        if path == "pvm-hypercall":
            return Request(OP_HYPERCALL, (self.hypercall, 0, 0))
        if path == "pvm-load-pgtbl":       # flags bit 0: flush the new CR3's PCID
            return Request(OP_HYPERCALL, (PVM_HC_LOAD_PGTBL, 1, cr3))
        if path == "cr3":                  # same CR3, bit 63 clear: kvm_set_cr3() flushes
            return Request(OP_CR3, (cr3, 0, 0))
        if path == "cr4-pge":              # toggle PGE: kvm_post_set_cr4() -> FLUSH_GUEST
            new = self.cr4.get(reader, CR4) ^ CR4_PGE
            self.cr4[reader] = new
            return Request(OP_CR4, (new, 0, 0))
        if path == "invlpg":
            return Request(OP_INVLPG)
        return Request(OP_NONE)

    def count(self, round_no: int, n: int) -> None:
        self.by_path[self.path_for(round_no)] += n


def program(mem, ctl: int, req: Request) -> None:
    """Write a reader's flush op into its control block (OP_NONE clears it)."""
    struct.pack_into("<4Q", mem, ctl + CTL_FLUSH_OP, req.op, *req.args)


def hypercall_result(mem, ctl: int) -> int:
    return s64(struct.unpack_from("<Q", mem, ctl + CTL_FLUSH_RET)[0])


def parse(value: str) -> tuple[str, ...]:
    """``--flush-via`` value -> the paths asked for (``all`` is resolved by the caller)."""
    if value == ALL:
        return EXERCISE_PATHS
    if value not in EXERCISE_PATHS:
        raise ValueError(f"--flush-via must be one of {', '.join(CHOICES)}")
    return (value,)


def backend_key(name: str) -> str:
    """vmx / svm / pvm, from a backend or its module name (kvm_intel, kvm_amd, kvm_pvm)."""
    return {"kvm_pvm": "pvm", "kvm_intel": "vmx", "kvm_amd": "svm"}.get(name, name)


def static_refusal(path: str, backend: str) -> str | None:
    """Why ``path`` cannot run on ``backend`` without trying (None: try it)."""
    backend = backend_key(backend)
    if backend == "pvm" and path in NOT_ON_PVM:
        return NOT_ON_PVM[path]
    if backend != "pvm" and path in PVM_ONLY:
        return f"{path} is a PVM hypercall and this backend is {backend}"
    return NOT_BUILT.get(path)


# ----------------------------------------------------------------------------- support

@dataclass
class Support:
    """What this host does with each path: serviced (with the hypercall number used), or
    refused with a one-line reason."""

    serviced: dict            # path -> note ("" or e.g. "int 0x1b RAX 0x1007")
    refused: dict             # path -> reason (the host does not service it)
    untried: dict = field(default_factory=dict)   # path -> why the guest cannot ask for it
    hypercall: int = PVM_INT1B_TLB_FLUSH


def probe(paths: tuple[str, ...], backend: str, run_one) -> Support:
    """Try each path once.  ``run_one(path, hypercall) -> (stale_reads, hypercall_results)``
    runs a one-round exercise with that path (raises on a guest that stopped)."""
    out = Support({}, {})
    for path in paths:
        why = static_refusal(path, backend)
        if why:
            (out.untried if path in NOT_BUILT else out.refused)[path] = why
            continue
        numbers = ((PVM_HC_TLB_FLUSH, PVM_INT1B_TLB_FLUSH) if path == "pvm-hypercall"
                   else (out.hypercall,))
        for number in numbers:
            try:
                stale, results = run_one(path, number)
            except Exception as exc:          # the guest stopped: this path is not serviced
                out.refused[path] = f"the guest stopped when it flushed this way: {exc}"
                break
            bad = [r for r in results if r < 0]
            if bad:
                shown = PVM_HC_LOAD_PGTBL if path == "pvm-load-pgtbl" else number
                out.refused[path] = (f"hypercall {shown:#x} (int 0x1b) returned {bad[0]}"
                                     + (" (-ENOSYS: this kvm_pvm does not implement it)"
                                        if bad[0] == ENOSYS else ""))
                continue
            if stale:
                out.refused.pop(path, None)
                out.serviced[path] = f"stale reads after the flush: {stale}"
                break
            out.refused.pop(path, None)
            out.serviced[path] = (f"int 0x1b RAX {number:#x}" if path.startswith("pvm-") else "")
            if path == "pvm-hypercall":
                out.hypercall = number
            break
    return out
