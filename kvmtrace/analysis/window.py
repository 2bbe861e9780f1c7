"""The flush window: from a serviced guest TLB flush to the vCPU's next guest execution.

A guest asks KVM to flush its TLB (``kvm_flush_tlb_multi`` setting ``KVM_VCPU_FLUSH_TLB`` in
steal time, ``KVM_REQ_TLB_FLUSH_GUEST``, Hyper-V flush hypercalls).  KVM services it in
``kvm_vcpu_flush_tlb_guest()`` (arch/x86/kvm/x86.c).  Under shadow paging that must sync
every unsync ``struct kvm_mmu_page`` reachable from the vCPU's roots before the vCPU runs
guest code again; how it does so is the kernel generation (docs/design.md §2):

- ``hardware-flush-only``: only the vendor flush (kvm_x86_ops.tlb_flush_guest).  4.16-5.12,
  and every 5.10.y / 5.4.y / 4.19.y stable kernel.  Buggy.
- ``unload-reload``: ``kvm_mmu_unload()``; the next ``kvm_mmu_load()`` calls
  ``kvm_mmu_sync_roots()``.  5.13-5.15 (the "KVM: X86: fix tlb_flush_guest()" patch,
  lore 20210531172256.2908-1-jiangshanlai@gmail.com).
- ``sync-in-place``: ``kvm_mmu_sync_roots()`` + ``kvm_mmu_sync_prev_roots()``, then the vendor
  flush.  5.16+ (commit 61b05a9fd4ae "KVM: X86: Don't unload MMU in
  kvm_vcpu_flush_tlb_guest()").

``decide()`` gives a closed window its verdict exactly as docs/design.md §4 defines them, and says
which evidence decided it (``evidence``):

- ``exact``: KVM's own root state read at re-entry (exact.py);
- ``inferred``: the event stream - sync, zap and unsync events, function probes, links the
  replay inferred, the trace's TDP flag;
- ``none``: nothing could decide (inconclusive, open and suspect windows).

Inferred *unreachability* never gives ok: links guessed from event order miss links
(``FNAME(fetch)`` emits ``kvm_mmu_get_page`` only for absent SPTEs), a root switches without
any event (a CR3 load served from ``prev_roots``, nested entry/exit), and printed SPs alias.
Without exact evidence a window with SPs still unsync is ok only when the kernel is seen
syncing this vCPU's current root in the window (see ``_decide_tracepoints``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kvmtrace.analysis.exact import Reading

OK = "ok"
VIOLATION = "violation"
SUSPECT = "suspect"
INCONCLUSIVE = "inconclusive"
OPEN = "open"
VERDICTS = (OK, VIOLATION, SUSPECT, INCONCLUSIVE, OPEN)

HW_ONLY = "hardware-flush-only"
UNLOAD_RELOAD = "unload-reload"
SYNC_IN_PLACE = "sync-in-place"
UNKNOWN = "unknown"
PATTERNS = (HW_ONLY, UNLOAD_RELOAD, SYNC_IN_PLACE)

GENERATIONS = {
    HW_ONLY: "kernels 4.16-5.12 and all 5.10.y/5.4.y/4.19.y: kvm_vcpu_flush_tlb_guest() "
             "does only the vendor flush (buggy under shadow paging)",
    UNLOAD_RELOAD: "kernels 5.13-5.15 (and 5.12.y stable): kvm_mmu_unload(), the next "
                   "kvm_mmu_load() syncs the roots (fixed)",
    SYNC_IN_PLACE: "kernels 5.16+: kvm_mmu_sync_roots() + kvm_mmu_sync_prev_roots(), then "
                   "the vendor flush (fixed)",
    UNKNOWN: "no meaningful flush window showed how this kernel services a guest flush",
}

EXACT = "exact"
INFERRED = "inferred"
NONE = "none"
EVIDENCE = (EXACT, INFERRED, NONE)

MAX_WINDOW_EVENTS = 10


@dataclass
class Outstanding:
    """An SP unsync when the window opened and still unsync when the guest ran again."""

    gfn: int
    role: int
    level: int
    unsync_ts: int
    unsync_tid: int
    reachable: Optional[bool]      # from this vCPU's root: True / False / None = unknown
    doubtful: bool = False         # went unsync before a later loss: may have been synced since
    ambiguous: bool = False        # printed key shared by SPs (see ShadowMMU.mark_unsync)

    def to_dict(self) -> dict:
        return {"gfn": self.gfn, "role": self.role, "level": self.level,
                "unsync_ts": self.unsync_ts, "unsync_tid": self.unsync_tid,
                "reachable": self.reachable, "ambiguous": self.ambiguous}


@dataclass
class FlushWindow:
    """One serviced guest flush on one vCPU, open until that vCPU runs guest code again."""

    tgid: int
    tid: int
    vcpu: int
    opened_ts: int
    opener: str                      # the flush path that opened it (flushpaths.PATHS name)
    open_seq: int                    # replay sequence at open (orders it against unsyncs)
    unsync_at_open: int              # VM-wide unsync SPs when it opened
    tentative: bool = False          # opened by kvm_service_local_tlb_flush_requests only
    started_inside: bool = False     # the trace began inside this window
    opener_event: str = ""           # the event kind name that opened it
    obligation: str = "full"         # flushpaths.FULL / ROOT / ADDRESS
    address: int = -1                # ADDRESS: the flushed guest address (-1 unknown)
    need_flush: int = -1             # CR writes: 1 asked for a flush, 0 did not, -1 unknown
    lost: bool = False               # LOST marker while open
    # Events lost before the window opened, on this VM, with no full sync of this vCPU
    # since (replay.Replayer.on_lost): the ts of that loss, else None.  What it hid (a
    # sync or an unsync of any page) is unknown, so the verdict cannot rest on the unsync
    # set unless the vCPU's state is re-established inside the window.
    lost_before_ts: Optional[int] = None
    reestablished: bool = False      # a full sync / reload / exact root state in the window
    loss_demoted: bool = False       # the verdict became inconclusive because of a loss
    last_loss_ts: Optional[int] = None   # the VM's last loss before the window closed
    # What happened inside (function probes, then tracepoint evidence).
    saw_sync_roots: bool = False
    saw_unload: bool = False
    saw_reload_root: bool = False    # a root-level get_page on this vCPU (a reload)
    synced: int = 0                  # SPs unsync at open that were synced in the window
    synced_here: bool = False        # ... by this vCPU's own thread (kvm_mmu_sync_roots ran)
    root_switched: bool = False      # an event that can switch the root silently, in the window
    open_tick: int = 0               # Replayer.tick at open (orders it against snapshots)
    zapped: int = 0                  # ... or zapped
    first_sync_ts: Optional[int] = None
    events: list = field(default_factory=list)
    # Outcome.
    closed_ts: Optional[int] = None
    closer: str = ""
    verdict: str = OPEN
    reason: str = "the trace ended before this vCPU ran guest code again"
    pattern: str = UNKNOWN
    harmless: bool = False
    function_probes: bool = False
    outstanding: list = field(default_factory=list)
    evidence: str = NONE
    root_state: list = field(default_factory=list)     # exact slots that decided it

    @property
    def meaningful(self) -> bool:
        """Something was unsync when the flush was serviced: the window tested the kernel."""
        return self.unsync_at_open > 0

    @property
    def latency_ns(self) -> Optional[int]:
        """Flush request serviced -> first sync action (sync_roots, sync_page, reload)."""
        if self.first_sync_ts is None:
            return None
        return max(0, self.first_sync_ts - self.opened_ts)

    def note_sync(self, ts: int) -> None:
        if self.first_sync_ts is None:
            self.first_sync_ts = ts

    def add_event(self, event: tuple) -> None:
        if len(self.events) < MAX_WINDOW_EVENTS:
            self.events.append(event)

    def to_dict(self) -> dict:
        return {
            "ts": self.opened_ts, "closed_ts": self.closed_ts, "tgid": self.tgid,
            "tid": self.tid, "vcpu": self.vcpu, "verdict": self.verdict,
            "reason": self.reason, "pattern": self.pattern, "meaningful": self.meaningful,
            "harmless": self.harmless, "opener": self.opener, "opener_event": self.opener_event,
            "obligation": self.obligation, "closer": self.closer,
            "unsync_at_open": self.unsync_at_open, "latency_ns": self.latency_ns,
            "outstanding": [o.to_dict() for o in self.outstanding],
            "evidence": self.evidence,
            "root_state": [r.to_dict() for r in self.root_state],
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def observed_pattern(w: FlushWindow, fn_mode: bool) -> str:
    """The flush pattern this window showed (or UNKNOWN when it showed none)."""
    if w.obligation == "address" and not fn_mode:
        return SYNC_IN_PLACE if w.synced else UNKNOWN
    if fn_mode:
        if w.saw_unload:
            return UNLOAD_RELOAD
        if w.saw_sync_roots:
            return SYNC_IN_PLACE
        return HW_ONLY
    if w.saw_reload_root:
        return UNLOAD_RELOAD
    if w.synced:
        return SYNC_IN_PLACE
    if any(o.reachable for o in w.outstanding):
        return HW_ONLY
    return UNKNOWN


def decide(w: FlushWindow, outstanding: list, *, tdp: Optional[bool], shadow_vm: bool,
           fn_mode: bool, sp_observed: bool = True, unchecked: int = 0,
           reading: Optional[Reading] = None) -> None:
    """Give a closed window its verdict, reason, evidence and pattern (docs/design.md §4).

    ``fn_mode``: function probes show whether the sync path ran (kvm_mmu_sync_roots is
    probed: every fixed path calls it, see replay.SYNC_PROBE).  ``shadow_vm``: the VM runs on the shadow MMU
    (meta.tdp False, or unknown while shadow-page events were seen).  ``sp_observed``: the
    kvmmmu shadow-page tracepoints are known to be in the trace (one fired for this VM, or
    the recorder attached kvm_mmu_unsync_page); without them "nothing was unsync" is not
    known.  ``unchecked``: SPs unsync at the flush that were left out of ``outstanding``.
    ``reading``: KVM's own root state at re-entry, when a snapshot counts (exact.py).
    """
    w.outstanding = outstanding
    w.function_probes = fn_mode
    fn_mode = fn_mode and shadow_vm and tdp is not True
    if reading is not None and w.obligation == "address" and not reading.clean:
        # INVLPG syncs only the SPTEs of its address (mmu->sync_spte()) and leaves the SPs
        # unsync: unsync_children under the root is its expected outcome, not a missed
        # sync, so a dirty root state decides nothing here (a clean one still does).
        reading = None
    w.evidence = INFERRED
    if w.started_inside:
        w.verdict, w.reason = INCONCLUSIVE, "the trace started inside this flush window"
    elif w.lost:
        w.verdict, w.reason = INCONCLUSIVE, "events were lost while this window was open"
    elif tdp is True:
        w.verdict, w.reason = OK, "TDP (EPT/NPT) is in use: a guest flush needs no shadow sync"
    elif reading is not None and reading.dirty and reading.explained:
        _decide_exact(w, outstanding, reading)
    elif fn_mode and not (w.saw_sync_roots or w.saw_unload):
        _decide_functions(w, outstanding, reading)
    elif reading is not None and reading.clean:
        _decide_exact(w, outstanding, reading)
    elif fn_mode:
        _decide_functions(w, outstanding, reading)
    elif not sp_observed:
        w.verdict, w.reason = INCONCLUSIVE, ("no kvmmmu shadow-page event was recorded for this "
                                             "VM, so whether anything was unsync is unknown")
    else:
        _decide_tracepoints(w, outstanding, unchecked)
        _soften(w)
    # KVM's own root state at re-entry does not depend on events lost before the window.
    if not fn_mode and tdp is not True and w.evidence != EXACT and w.verdict in (OK, VIOLATION, SUSPECT):
        _discount_losses(w, outstanding)
    if w.verdict in (INCONCLUSIVE, OPEN, SUSPECT):
        w.evidence = NONE
    if tdp is not True:
        w.pattern = observed_pattern(w, fn_mode)


def _soften(w: FlushWindow) -> None:
    """Tracepoints cannot show every obligation being met or broken.

    An ``address`` window (INVLPG) needs only the SPTEs mapping one address synced, which
    ``mmu->sync_spte()`` does without a tracepoint: an SP left unsync is no violation, and
    without the address nothing says which SPs mattered.  A CR write whose flush request is
    unknown (emulated MOV to CR3/CR4: the operand is not in the event) may not have asked
    for any flush (PCID no-flush bit, CR4 write without a PGE/PCIDE toggle).
    """
    if w.verdict != VIOLATION:
        return
    if w.obligation == "address":
        w.verdict = SUSPECT
        w.reason = ("INVLPG needs only the SPTEs mapping its address synced (mmu->sync_spte(), "
                    "no tracepoint); unsync SPs stayed and the guest did not re-fault on the "
                    "flushed address before running on")
    elif w.need_flush < 0 and w.opener_event in ("flush_cr3", "flush_cr4"):
        w.verdict = SUSPECT
        w.reason += ("; but whether this CR write asked for a flush is unknown (no new value "
                     "in the event)")


def decide_address_refault(w: FlushWindow, fault_address: int) -> bool:
    """An INVLPG window closed by the guest faulting on the flushed page again: the stale
    SPTE is gone, which is the whole obligation (exact: the fault is KVM's own walk)."""
    if w.obligation != "address" or w.address < 0 or fault_address < 0:
        return False
    if (w.address >> 12) != (fault_address >> 12):
        return False
    w.verdict = OK
    w.evidence = INFERRED
    w.reason = (f"the guest's next access to the flushed address {w.address:#x} faulted into "
                "KVM: no stale SPTE mapped it")
    return True


def _ts(ns: int) -> str:
    return f"{ns / 1e9:.6f}"


def _discount_losses(w: FlushWindow, outstanding: list) -> None:
    """No ok, violation or suspect that an event lost before the window could flip.

    A lost ``kvm_mmu_sync_page`` leaves a page in the model's unsync set that KVM had
    synced (a false violation); a lost ``kvm_mmu_unsync_page`` hides a page that is unsync
    (a false ok).  Function-probe verdicts are decided by events inside the window and
    stand.  Here: a violation needs a reachable page whose unsync was seen after the last
    loss, on a vCPU re-established since; an ok needs the vCPU re-established (a full sync,
    an unload+reload or exact root state) since the loss.
    """
    tainted = w.lost_before_ts is not None and not w.reestablished
    at = w.lost_before_ts if w.lost_before_ts is not None else (w.last_loss_ts or 0)
    if w.verdict == VIOLATION:
        known = [o for o in outstanding if o.reachable]
        doubtful = [o for o in known if o.doubtful]
        if not tainted and len(doubtful) < len(known):
            return
        o = (doubtful or known)[0]
        why = (f"events lost at {_ts(at)} could have synced gfn {o.gfn:#x} "
               f"(unsync since {_ts(o.unsync_ts)}) or unlinked it from this vCPU's root")
    elif not tainted:
        return
    elif w.verdict == OK:
        why = (f"events lost at {_ts(at)} could have unsynced a page "
               "reachable from this vCPU's root, and no full sync of this vCPU was seen since")
    else:
        why = (f"events lost at {_ts(at)} could have synced or unsynced "
               "the pages this window depends on")
    w.reason = f"{why} (without the loss: {w.verdict}, {w.reason})"
    w.verdict = INCONCLUSIVE
    w.loss_demoted = True


def _decide_exact(w: FlushWindow, outstanding: list, reading: Reading) -> None:
    w.evidence = EXACT
    w.root_state = [s for _, s in sorted(reading.snapshot.slots.items())]
    if reading.clean:
        w.verdict, w.reason = OK, reading.describe()
        return
    w.verdict = VIOLATION
    named = [o for o in outstanding if o.reachable is not False]
    which = (f"; {_plural(len(named), 'shadow page')} unsync since before the flush"
             if named else "; the unsync SPs beneath were not seen in this trace")
    w.reason = (f"{reading.describe()}: the vCPU ran guest code with shadow pages left unsync "
                f"under its roots by this flush{which}")


def _decide_functions(w: FlushWindow, outstanding: list, reading: Optional[Reading] = None) -> None:
    if w.saw_sync_roots:
        w.verdict, w.reason = OK, "kvm_mmu_sync_roots ran before the guest ran again"
    elif w.saw_unload:
        w.verdict, w.reason = OK, ("kvm_mmu_unload dropped the roots; kvm_mmu_load synced "
                                   "them before the guest ran again")
    else:
        w.verdict = VIOLATION
        clean = reading is not None and reading.clean
        w.harmless = not w.meaningful or clean
        if outstanding and not clean:
            left = f"{_plural(len(outstanding), 'shadow page')} left unsync"
        elif clean:
            left = "harmless this time: " + reading.describe()
        else:
            left = "harmless this time: nothing was unsync"
        w.reason = ("guest flush completed with no shadow sync (no kvm_mmu_sync_roots, no "
                    f"kvm_mmu_unload+load), the pre-5.13 path; {left}")


def _decide_tracepoints(w: FlushWindow, outstanding: list, unchecked: int = 0) -> None:
    """Tracepoint evidence only.

    ok needs no SP left: every SP unsync at the flush was synced or zapped (no root is
    involved), or the kernel synced this vCPU's current root inside the window.  The latter
    is read from ``kvm_mmu_sync_page`` on the vCPU's own thread (or a root reload): those
    come from ``kvm_mmu_sync_roots()`` (directly on 5.16+, from ``kvm_mmu_load()`` on
    5.13-5.15), whose ``mmu_sync_children()`` loops until ``mmu_unsync_walk()`` finds no
    unsync SP under the root (arch/x86/kvm/mmu/mmu.c), so nothing under the root it
    entered with was left - unless an event that can switch the root came in between.
    """
    if not outstanding and not unchecked:
        w.verdict = OK
        w.reason = ("every SP unsync at the flush was synced or zapped" if w.meaningful
                    else "nothing was unsync when the flush was serviced")
        return
    known = [o for o in outstanding if o.reachable]
    if known:
        w.verdict = VIOLATION
        w.reason = (f"the vCPU ran guest code with {_plural(len(known), 'unsync shadow page')} "
                    "reachable from its root (through links seen in the trace), neither synced "
                    "nor zapped after the flush")
        return
    n = len(outstanding) + unchecked
    root_synced = (w.synced_here or w.saw_reload_root or w.saw_sync_roots or w.saw_unload)
    if unchecked:
        # Any of the SPs not looked at may be reachable: nothing here can say ok.
        w.verdict = SUSPECT
        w.reason = (f"{_plural(n, 'shadow page')} stayed unsync; "
                    f"{unchecked} of them were not checked for reachability from this "
                    "vCPU's root")
    elif root_synced and not w.root_switched:
        w.verdict = OK
        w.reason = ("the kernel synced this vCPU's root in the window (kvm_mmu_sync_roots "
                    "leaves nothing unsync under it); the "
                    f"{_plural(n, 'SP')} still unsync are under other roots")
    elif root_synced:
        w.verdict = SUSPECT
        w.reason = (f"{_plural(n, 'shadow page')} stayed unsync; the kernel synced a root in "
                    "this window, but the vCPU's root may have switched after it (a CR, "
                    "nested, SMM or EFER event, or another vCPU on this thread)")
    else:
        w.verdict = SUSPECT
        w.reason = (f"{_plural(n, 'shadow page')} stayed unsync and nothing synced this vCPU's "
                    "root; links inferred from the trace cannot show they are unreachable "
                    "from its real root")
