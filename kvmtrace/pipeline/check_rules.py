"""The verdict of ``kvmtrace check``: is this host safe from guest TLB flushes that KVM
completes before syncing its shadow page tables?  Pure logic, no I/O.

Rules (issue 6; docs/design.md §4 "a sanity check passes only with at least one meaningful window
observed and no violation: seeing nothing is never a pass"), in this order:

1. ``fail``: any flush window judged ``violation`` (the vCPU ran guest code with an unsync
   shadow page reachable from its root; or, with function probes, the flush ran no sync at
   all -- the pre-5.13 path, a violation even when nothing happened to be unsync), or, with
   ``--exercise``, any stale read by the built-in guest after a flush.
2. ``not-exposed``: TDP (EPT/NPT) is on and no VM showed shadow paging: guest page tables
   are not shadowed, so a guest flush has nothing to sync (docs/design.md §2).
3. ``inconclusive``, when the evidence cannot carry a pass:
   - lost events: the recorder dropped records, and a dropped flush request or sync hides
     a whole window, so "no violation" is not established;
   - the built-in guest stopped before it finished;
   - fewer than N meaningful windows closed ``ok`` (a window is meaningful when a shadow
     page was unsync as its flush was serviced, so it tested whether KVM syncs): no flush
     at all, flushes with nothing unsync, too few, or only ``suspect`` windows (unsync
     pages stayed unsync, nothing synced, reachability unknown).
4. ``pass``: at least N meaningful windows closed ``ok``, no violation, nothing lost, and
   with ``--exercise`` the guest read no stale value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kvmtrace import exitcodes

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
NOT_EXPOSED = "not-exposed"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, NOT_EXPOSED)
EXIT_CODES = {PASS: exitcodes.OK, NOT_EXPOSED: exitcodes.OK, FAIL: exitcodes.VIOLATION,
              INCONCLUSIVE: exitcodes.INCONCLUSIVE}
DETAILS_SHOWN = 3
WINDOW_COUNTS = ("total", "meaningful", "ok", "violation", "suspect", "inconclusive", "open")

FIXED_KERNELS = ("install a kernel whose kvm_vcpu_flush_tlb_guest() syncs the shadow roots "
                 "(5.13+, or a stable kernel with \"KVM: X86: fix tlb_flush_guest()\"), or run "
                 "guests with EPT/NPT on")


@dataclass
class ExerciseOutcome:
    """What the built-in guest reported (kvmtrace.exercise.ExerciseResult, or its failure)."""

    flushes_requested: int = 0
    reads: int = 0
    stale_reads: list[dict] = field(default_factory=list)   # vcpu, round, address, expected, observed
    exposed: Optional[bool] = None
    finished: bool = True
    error: str = ""


@dataclass
class Evidence:
    """Everything a check saw, reduced to what the verdict depends on."""

    windows: dict                       # closed windows by verdict + total, meaningful
    meaningful_ok: int                  # meaningful windows that closed ok
    lost_events: int = 0
    lost_windows: int = 0               # windows made inconclusive by lost events
    tdp: Optional[bool] = None
    backend: str = ""
    shadow_vms: int = 0                 # VMs that showed indirect (shadowing) pages
    vms_seen: int = 0                   # VMs with any traced event
    findings: list = field(default_factory=list)   # analysis findings (dicts)
    pattern: str = "unknown"
    pattern_kernels: str = ""
    min_windows: int = 1
    exercise: Optional[ExerciseOutcome] = None

    def __post_init__(self) -> None:
        # A count the check never saw is 0: the rules below index every count directly.
        self.windows = {**dict.fromkeys(WINDOW_COUNTS, 0), **self.windows}


@dataclass
class CheckVerdict:
    verdict: str
    reasons: list[str]
    next_steps: list[str]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def _n(count: int, word: str, plural: str = "") -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _where(f: dict) -> str:
    who = f"vCPU {f['vcpu']}" if f["vcpu"] is not None else f"thread {f['tid']}"
    return f"VM {f['tgid']} {who} at {f['ts'] / 1e9:.6f} s"


def _violation_detail(f: dict) -> str:
    left = ", ".join(f"gfn {o['gfn']:#x} (level {o['level']})" for o in f["outstanding"][:4])
    text = f"{_where(f)}: {f['reason']}"
    if f["harmless"]:
        text += " (harmless this time)"
    return text + (f"; left unsync: {left}" if left else "")


def _stale_detail(s: dict) -> str:
    return (f"vCPU {s['vcpu']} round {s['round']} read {s['address']:#x}: expected "
            f"{s['expected']:#x}, observed {s['observed']:#x}")


def decide(e: Evidence) -> CheckVerdict:
    """The check's verdict, its reasons and what to do next (see the module docstring)."""
    for rule in (_fail, _not_exposed, _inconclusive):
        verdict = rule(e)
        if verdict is not None:
            return verdict
    return _pass(e)


def _fail(e: Evidence) -> Optional[CheckVerdict]:
    violations = e.windows["violation"]
    stale = e.exercise.stale_reads if e.exercise else []
    if not violations and not stale:
        return None
    reasons = []
    if violations:
        reasons.append(f"{_n(violations, 'guest TLB flush', 'guest TLB flushes')} let a vCPU "
                       "run guest code before KVM synced its shadow page tables "
                       f"(flush pattern: {e.pattern})")
        shown = [f for f in e.findings if f["verdict"] == "violation"][:DETAILS_SHOWN]
        reasons += [_violation_detail(f) for f in shown]
    if stale:
        reasons.append(f"the built-in guest read {_n(len(stale), 'stale value')} after a guest "
                       "TLB flush: the host let it use a translation the guest had replaced")
        reasons += [_stale_detail(s) for s in stale[:DETAILS_SHOWN]]
    steps = [f"the traced kernel is NOT safe: {FIXED_KERNELS}",
             "to give the kernel team the evidence: kvmtrace record -o trace.parquet while "
             "the problem shows, then kvmtrace analyze trace.parquet"]
    return CheckVerdict(FAIL, reasons, steps)


def _not_exposed(e: Evidence) -> Optional[CheckVerdict]:
    if e.tdp is not True or e.shadow_vms or e.windows["meaningful"]:
        return None
    backend = e.backend or "KVM"
    reasons = [f"TDP (EPT/NPT) is on ({backend}): KVM does not shadow guest page tables, so a "
               "guest TLB flush has no shadow page to sync",
               "no traced VM showed shadow paging (no indirect shadow page was seen)"]
    if e.exercise is not None and e.exercise.finished:
        reasons.append(f"the built-in guest requested {e.exercise.flushes_requested} flushes "
                       "and read no stale value")
    steps = ["nothing to do while EPT/NPT stays on; check again if it is turned off or guests "
             "run nested guests on the shadow MMU"]
    return CheckVerdict(NOT_EXPOSED, reasons, steps)


def _inconclusive(e: Evidence) -> Optional[CheckVerdict]:
    reasons: list[str] = []
    steps: list[str] = []
    if e.lost_events:
        cut = (f"; {_n(e.lost_windows, 'flush window')} "
               f"{'was' if e.lost_windows == 1 else 'were'} cut by the loss" if e.lost_windows else "")
        reasons.append(f"{_n(e.lost_events, 'trace event')} "
                       f"{'was' if e.lost_events == 1 else 'were'} lost (the recorder's buffer "
                       f"overflowed){cut}: a lost flush request or sync hides a whole window, "
                       "so the absence of a violation is not established")
        steps.append("trace only the VMs you need (-p TGID), or check when the host is less busy")
    ex = e.exercise
    if ex is not None and not ex.finished:
        reasons.append(f"the built-in guest stopped before it finished: {ex.error}")
        steps.append("run kvmtrace exercise on its own to see why the guest stopped")
    if e.meaningful_ok < e.min_windows:
        _too_few(e, reasons, steps)
    if not reasons:
        return None
    return CheckVerdict(INCONCLUSIVE, reasons, list(dict.fromkeys(steps)))


def _too_few(e: Evidence, reasons: list[str], steps: list[str]) -> None:
    w = e.windows
    total, meaningful, suspect = w["total"], w["meaningful"], w["suspect"]
    need = f"at least {e.min_windows} are needed" if e.min_windows > 1 else ""
    if total == 0:
        seen = (f"{_n(e.vms_seen, 'VM')} traced" if e.vms_seen else "no VM showed any KVM event")
        reasons.append(f"no guest TLB flush was serviced while tracing ({seen}): nothing "
                       "tested whether KVM syncs its shadow page tables")
    elif meaningful == 0:
        reasons.append(f"{_n(total, 'flush window')} closed, but no shadow page was unsync when "
                       "any of their flushes was serviced, so none tested whether KVM syncs")
    elif e.meaningful_ok == 0 and suspect:
        reasons.append(f"only suspect windows: in {_n(suspect, 'window')} shadow pages stayed "
                       "unsync and nothing was synced, but the trace could not show whether "
                       "they were reachable from the vCPU's root")
    else:
        reasons.append(f"{_n(e.meaningful_ok, 'meaningful flush window')} closed ok; "
                       f"{need or 'at least one is needed'} (--min-windows {e.min_windows})")
    other = w["inconclusive"] + w["open"]
    if other:
        reasons.append(f"{_n(other, 'window')} could not be judged (trace started inside "
                       "them, events lost, or the trace ended before the vCPU ran again)")
    ex = e.exercise
    if ex is not None and ex.finished and ex.flushes_requested and meaningful == 0:
        reasons.append(f"the built-in guest requested {ex.flushes_requested} flushes but the "
                       "trace saw none of them as a meaningful window: the probes may not see "
                       "this host's flush path")
        steps.append("run kvmtrace doctor to see which probes this host supports")
    if ex is None:
        steps.append("run kvmtrace check --exercise: kvmtrace's own guest requests flushes "
                     "with unsync shadow pages, so the flush path is certainly exercised")
    steps.append("or trace longer (-d SECONDS) while guests run")


def _pass(e: Evidence) -> CheckVerdict:
    w = e.windows
    kernels = f": {e.pattern_kernels}" if e.pattern_kernels else ""
    reasons = [f"{_n(e.meaningful_ok, 'flush window')} had unsync shadow pages when the guest "
               "TLB flush was serviced, and KVM synced them before the vCPU ran guest code "
               "again",
               f"no violation in {_n(w['total'], 'flush window')}; no event lost",
               f"flush pattern: {e.pattern}{kernels}"]
    if e.exercise is not None:
        reasons.append(f"the built-in guest requested {e.exercise.flushes_requested} flushes "
                       f"and read no stale value in {e.exercise.reads} reads")
    if w["suspect"]:
        reasons.append(f"note: {_n(w['suspect'], 'window')} stayed suspect (unsync pages of "
                       "unknown reachability, nothing synced); the meaningful ok windows "
                       "show the kernel's flush path syncs")
    steps = ["nothing to do; run the check again after kernel or KVM updates"]
    return CheckVerdict(PASS, reasons, steps)
