"""Replay a normalised event stream through a model of KVM's shadow MMU.

``Replayer`` is incremental: ``feed(chunk)`` returns the flush windows that chunk closed,
``finish()`` the whole result.  The offline ``analyze`` command and the live ``check`` /
``watch`` commands use this one implementation.  select.py picks the events that can change
the model (vectorised); this module handles those one by one, with ONE METHOD PER EVENT
KIND (``on_<kind name>``), dispatching on ``schema.Kind``.

Kernel objects modelled (arch/x86/kvm/mmu/mmu.c, arch/x86/kvm/x86.c):
- per VM (``struct kvm``): the shadow pages (``struct kvm_mmu_page``) keyed by
  ``(gfn, union kvm_mmu_page_role)``, which are unsync, and what is known of the SP tree
  (shadow.py);
- per vCPU (``struct kvm_vcpu``): ``vcpu->arch.mmu->root`` as last seen, and the open flush
  window between servicing a guest TLB flush (``kvm_vcpu_flush_tlb_guest``, requested via
  ``KVM_VCPU_FLUSH_TLB`` / ``KVM_REQ_TLB_FLUSH_GUEST`` / Hyper-V) and the next guest run
  (vcpu.py, window.py);
- exact evidence: ``vcpu->arch.mmu`` root slots read by raw-tracepoint probes (exact.py) and
  ``sp->parent_ptes`` links.

The root the replay infers is forgotten at every event that can switch it without a kvmmmu
event (``schema.ROOT_SWITCH_KINDS``, a new vCPU id on the thread): a root that is unknown
proves nothing, and a violation needs a path from a root known to be current.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Protocol

import numpy as np

if TYPE_CHECKING:                                  # pandas only in hints: never imported here
    import pandas as pd

from kvmtrace.schema import (COLUMN_NAMES, KIND_NAMES, KVM_EXIT_INTR, ROLE_DIRECT, Chunk, Kind,
                             TraceMeta, as_chunk)
from kvmtrace.analysis.exact import Reading, RootSlot, Snapshot, counts_for
from kvmtrace.analysis.report import (AnalysisResult, Aggregate, ReplayCounters, VcpuRow,
                                     row_key)
from kvmtrace.analysis.selection import (NEEDED, PTE_ADDR, PTE_PRESENT, PTE_PSE, WALK_FROM_ROOT,
                                        ChunkSelector, require_columns)
from kvmtrace.analysis.shadow import ShadowMMU
from kvmtrace.analysis.vcpu import SINCE_SYNC_ROOTS, SINCE_UNLOAD, VcpuState
from kvmtrace.analysis.flushpaths import ADDRESS, obligation_of, opener_name
from kvmtrace.analysis.window import SUSPECT, VIOLATION
from kvmtrace.analysis.window import FlushWindow, Outstanding, decide, decide_address_refault

# The function probe whose silence makes "no sync happened" observable (docs/design.md §2): every
# fixed flush path runs kvm_mmu_sync_roots() before the guest does - 5.16+ directly in
# kvm_vcpu_flush_tlb_guest(), 5.13-5.15 from the kvm_mmu_load() that follows
# kvm_mmu_unload() (arch/x86/kvm/mmu/mmu.c, kvm_mmu_load: "kvm_mmu_sync_roots(vcpu);").
# Probes on kvm_mmu_load/kvm_mmu_unload alone would miss the 5.16+ sync.
SYNC_PROBE = "kvm_mmu_sync_roots"
# arch/x86/include/uapi/asm/processor-flags.h
CR4_PGE = 1 << 7
CR4_PCIDE = 1 << 17
# arch/x86/kvm/mmu.h KVM_MMU_CR4_ROLE_BITS (6.x): PSE, PAE, LA57, SMEP, SMAP, PKE.
CR4_ROLE_BITS = (1 << 4) | (1 << 5) | (1 << 12) | (1 << 20) | (1 << 21) | (1 << 22)
MAX_OUTSTANDING_SCAN = 4096


class Event(NamedTuple):
    """One event the model handles (select.NEEDED columns, plus select.py's ``aux``)."""

    ts: int
    tgid: int
    tid: int
    vcpu: int
    kind: int
    gfn: int
    role: int
    level: int
    created: int
    need_flush: int
    value: int
    parent_gfn: int = -1
    parent_role: int = -1
    unsync_children: int = -1
    unsync: int = -1
    aux: int = -1        # selection.py: a walker edge's parent table gfn (-1: the root)


@dataclass
class VMState:
    """One VM (``struct kvm``, the VMM process ``tgid``)."""

    tgid: int
    shadow: ShadowMMU = field(default_factory=ShadowMMU)
    threads: dict = field(default_factory=dict)          # thread key -> VcpuState
    open: set = field(default_factory=set)               # thread keys with an open window
    # Guest page-table edges seen by walkers: (child table gfn, level) -> parent table gfns.
    guest_parents: dict = field(default_factory=dict)
    # ... and the reverse: (parent table gfn, level) -> child table gfns one level down.
    guest_children: dict = field(default_factory=dict)
    sp_seen: bool = False               # a kvmmmu shadow-page event of this VM fired
    sync_probe_seen: bool = False       # a kvm_mmu_sync_roots probe of this VM fired
    # The last LOST marker that may hold this VM's events: its replay sequence and time.
    loss_seq: int = 0
    loss_ts: Optional[int] = None
    five_level: bool = False            # a level-5 SP was seen: level-4 SPs are no roots
    sync_tick: int = 0                  # Replayer.tick of the latest sync_page / zap


class ReplayListener(Protocol):
    """Told what the replay saw, for views that need more than the aggregate (the timeline
    and the HTML report).  Called in the feeding thread; must only record, never raise."""

    kinds: frozenset             # event kinds (schema.Kind) to be told about, after handling

    def event(self, ev: Event) -> None: ...

    def window(self, w: FlushWindow) -> None: ...      # every window as it is aggregated


class Replayer:
    """Feed chunks of events (DataFrames in the schema), get flush windows and verdicts.

    ``per_event=True`` runs every event through its handler instead of the vectorised
    selection: the plain reference the selection is checked and benchmarked against.
    ``listener`` (optional) is told of every window as it is counted (closed, or open at
    the end) and of the handled events of its ``kinds``.
    """

    def __init__(self, meta: Optional[TraceMeta] = None, *, vm: Optional[int] = None,
                 vcpu: Optional[int] = None, max_findings: int = 100,
                 source: str = "", per_event: bool = False,
                 listener: Optional[ReplayListener] = None) -> None:
        self.meta = meta or TraceMeta()
        self.vm_filter = vm
        self.vcpu_filter = vcpu
        self.source = source
        self.fn_probes = any(probe.endswith(":" + SYNC_PROBE) for probe in self.meta.probes)
        # The recorder says it attached kvmmmu:kvm_mmu_unsync_page: silence means none.
        self.sp_probed = any(probe.endswith("kvm_mmu_unsync_page") for probe in self.meta.probes)
        self.vms: dict[int, VMState] = {}
        self.seq = 0
        self.counters = ReplayCounters()     # what the report reads besides the windows
        self.tick = 0          # one per handled event: orders snapshots against the rest
        self.tgids_seen: set = set()     # every VM of the input (kept only under a --vm filter)
        self._loss: tuple[int, Optional[int]] = (0, None)    # last VM-less loss: (seq, ts)
        self.agg = Aggregate(max_findings=max_findings, vcpu=vcpu)
        self._selector = ChunkSelector(select_all=per_event)
        self._closed: list[FlushWindow] = []
        self._pairs: dict[tuple[int, int], tuple[VMState, VcpuState]] = {}
        self._finished: Optional[AnalysisResult] = None
        self._cr4: dict[tuple[int, int], int] = {}     # (tgid, tid) -> last CR4 written
        self._dispatch: dict[int, Callable[[Event], None]] = {
            int(k): getattr(self, "on_" + k.name.lower()) for k in Kind}
        self.listener = listener
        if listener is not None:
            for k in listener.kinds:
                self._dispatch[int(k)] = self._tapped(self._dispatch[int(k)], listener)

    @staticmethod
    def _tapped(handler: Callable[[Event], None],
                listener: ReplayListener) -> Callable[[Event], None]:
        def tapped(ev: Event) -> None:
            handler(ev)
            listener.event(ev)
        return tapped

    def _count(self, w: FlushWindow) -> None:
        """A window is final: aggregate it (and tell the listener)."""
        self.agg.add(w)
        if self.listener is not None:
            self.listener.window(w)

    # ------------------------------------------------------------------ feeding
    def feed(self, chunk: Chunk | pd.DataFrame) -> list[FlushWindow]:
        """Replay one chunk (an event table is taken too); return the windows it closed."""
        if self._finished is not None:
            raise RuntimeError("feed() after finish()")
        chunk = as_chunk(chunk, NEEDED)
        require_columns(chunk.cols)
        if self.vm_filter is not None:
            cols = chunk.cols
            tgid = np.asarray(cols["tgid"])
            if len(tgid):
                self.tgids_seen.update(np.unique(tgid).tolist())
            kind = np.asarray(cols["kind"])
            keep = (tgid == self.vm_filter) | (kind == Kind.LOST) | (kind == Kind.INVALID)
            if not keep.all():
                rows = np.flatnonzero(keep)
                chunk = Chunk({k: np.asarray(v)[rows] for k, v in cols.items()},
                              chunk.comm.take(rows) if chunk.comm is not None else None)
        sel = self._selector.select(chunk)
        counters = self.counters
        counters.events += len(sel.cols["ts"])
        counters.reordered += sel.reordered
        counters.late += sel.late
        counters.ambiguous += sel.ambiguous
        counters.incomplete += sel.incomplete
        for tgid, tkey, vcpu, name in sel.threads:
            th = self._thread(tgid, tkey)
            if not th.learn_vcpu(vcpu):
                counters.vcpu_conflicts += 1
            th.learn_comm(name)
        rows = sel.rows
        if len(rows):
            c = sel.cols
            columns = [np.asarray(c[name])[rows].tolist() for name in Event._fields]
            dispatch = self._dispatch
            for values in zip(*columns):
                ev = Event(*values)
                dispatch[ev.kind](ev)
            counters.handled += len(rows)
        closed, self._closed = self._closed, []
        return closed

    def distrust(self, reason: str) -> None:
        """The source could not deliver everything (e.g. undecodable model events were
        skipped): no window verdict can be trusted; ``reason`` says why."""
        if self._finished is not None:
            raise RuntimeError("distrust() after finish()")
        self.counters.doubts.append(reason)

    def finish(self) -> AnalysisResult:
        """End of trace: open windows stay "open"; returns the aggregated result."""
        if self._finished is None:
            for vm in self.vms.values():
                for tkey in sorted(vm.open):
                    th = vm.threads[tkey]
                    w = th.window
                    th.window = None
                    if w is not None and not w.tentative:
                        w.vcpu = th.vcpu
                        self._count(w)
                vm.open.clear()
            if self.vm_filter is not None and self.vm_filter not in self.vms:
                self.counters.absent_vm = self.vm_filter
            self.counters.vms_seen = sorted(self.vms)
            self._finished = self.agg.result(self.counters, self.meta, self.source)
        return self._finished

    # ------------------------------------------------------------------ reading
    @property
    def events(self) -> int:
        """Rows replayed so far (after --vm filtering)."""
        return self.counters.events

    @property
    def rows(self) -> dict[tuple[int, int, int], VcpuRow]:
        """The per-vCPU tallies of the windows counted so far, by ``report.row_key``
        (read them, do not change them)."""
        return self.agg.rows

    def open_rows(self) -> dict[tuple[int, int, int], int]:
        """How many flush windows are open right now (not counting tentative ones), by the
        per-vCPU row key of ``rows``."""
        out: dict[tuple[int, int, int], int] = {}
        for vm in self.vms.values():
            for tkey in vm.open:
                th = vm.threads[tkey]
                if th.window is not None and not th.window.tentative:
                    key = row_key(vm.tgid, th.vcpu, th.tid)
                    out[key] = out.get(key, 0) + 1
        return out

    # ------------------------------------------------------------------ state helpers
    def _vm(self, tgid: int) -> VMState:
        vm = self.vms.get(tgid)
        if vm is None:
            vm = self.vms[tgid] = VMState(tgid)
            vm.loss_seq, vm.loss_ts = self._loss    # a VM first seen after a loss had
        return vm                                   # its events in it, for all we know

    def _thread(self, tgid: int, tkey: int) -> VcpuState:
        vm = self._vm(tgid)
        th = vm.threads.get(tkey)
        if th is None:
            th = vm.threads[tkey] = VcpuState(tgid, tkey)
        return th

    def _of(self, ev: Event, remember: bool = True, stamp: bool = True) -> tuple[VMState, VcpuState]:
        """The VM and vCPU of an event.  ``remember`` keeps it as context for findings:
        only for events every chunking hands over (not evidence or walker events, which
        select.py thins out), so results do not depend on chunk boundaries.  Those events
        also stamp the thread's ``state_tick`` (a root snapshot older than it no longer
        describes the roots the vCPU enters with), except the exact ones (``stamp``)."""
        key = (ev.tgid, ev.tid if ev.tid >= 0 else -2 - ev.vcpu)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = (self._vm(ev.tgid), self._thread(*key))
        th = pair[1]
        self.tick += 1
        if ev.vcpu >= 0 and th.vcpu != ev.vcpu and not th.learn_vcpu(ev.vcpu):
            self._vcpu_switch(th, ev)
        if remember:
            th.recent.append(ev)
            if stamp:
                th.state_tick = self.tick
        return pair

    def _vcpu_switch(self, th: VcpuState, ev: Event) -> None:
        """Another vCPU on this thread (a VMM may run several vCPUs on one thread): what
        was known of the thread's root belongs to the other vCPU (select.py hands over
        every row where a thread's vCPU id changes)."""
        self.counters.vcpu_conflicts += 1
        th.vcpu = ev.vcpu
        self._forget_root(th, ev)

    def _forget_root(self, th: VcpuState, ev: Event) -> None:
        th.drop_root()
        th.snap = None
        w = th.window
        if w is not None:
            w.root_switched = True
            w.add_event(ev)

    def _open(self, vm: VMState, th: VcpuState, ev: Event, *, tentative: bool = False,
              started_inside: bool = False) -> FlushWindow:
        w = th.window
        if w is not None:
            if w.tentative and not tentative:
                w.tentative = False
            w.add_event(ev)
            return w
        self.seq += 1
        obligation = obligation_of(ev.kind)
        w = FlushWindow(tgid=th.tgid, tid=th.tid, vcpu=th.vcpu, opened_ts=ev.ts,
                        opener=opener_name(ev.kind), open_seq=self.seq,
                        unsync_at_open=len(vm.shadow.unsync), tentative=tentative,
                        started_inside=started_inside, opener_event=KIND_NAMES[ev.kind],
                        obligation=obligation, need_flush=ev.need_flush,
                        address=ev.value if obligation == ADDRESS else -1,
                        lost_before_ts=vm.loss_ts if vm.loss_seq > th.clean_seq else None,
                        open_tick=self.tick)
        for before in list(th.recent)[-3:-1]:
            w.add_event(before)
        w.add_event(ev)
        th.window = w
        vm.open.add(th.tid)
        return w

    def _confirm(self, th: VcpuState, ev: Event) -> Optional[FlushWindow]:
        """A flush-path event on this vCPU: the open window (now surely a guest flush)."""
        w = th.window
        if w is not None:
            w.tentative = False
            w.add_event(ev)
        return w

    def _close(self, vm: VMState, th: VcpuState, ev: Event) -> None:
        w = th.window
        th.window = None
        vm.open.discard(th.tid)
        if w is None or w.tentative:
            return          # kvm_service_local_tlb_flush_requests for a non-guest flush
        w.closed_ts = ev.ts
        w.closer = KIND_NAMES[ev.kind]
        if w.vcpu < 0:
            w.vcpu = th.vcpu
        w.add_event(ev)
        tdp = self.meta.tdp
        shadow_vm = tdp is False or (tdp is None and vm.sp_seen)
        fn_mode = self.fn_probes or vm.sync_probe_seen
        # Reachability (the costly part) matters unless the verdict is already settled.
        settled = (w.lost or w.started_inside or tdp is True
                   or (fn_mode and shadow_vm and (w.saw_sync_roots or w.saw_unload)))
        outstanding = []
        unchecked = 0
        shadow = vm.shadow
        for key, rec in shadow.unsync_before(w.open_seq):
            if len(outstanding) >= MAX_OUTSTANDING_SCAN:
                unchecked += 1        # the cap bounds the reachability walks, not the count
                continue
            sp = shadow.pages.get(key)
            # SPs printing alike, one of them synced: which is left is unknown, so no path
            # proves it reachable (see UnsyncRecord.partial).
            reach = None if settled or rec.partial else shadow.reachable(key, th.root)
            outstanding.append(Outstanding(key[0], key[1], sp.level if sp else key[1] & 0xF,
                                           rec.ts, rec.tid, reach,
                                           doubtful=rec.seq < vm.loss_seq,
                                           ambiguous=rec.ambiguous))
        w.last_loss_ts = vm.loss_ts
        reading = None
        if counts_for(th.snap, w.open_tick, th.state_tick):
            explained = not shadow.fresh_since(w.open_seq) and vm.sync_tick < th.snap.tick
            reading = Reading(th.snap, explained)
        decide(w, outstanding, tdp=tdp, shadow_vm=shadow_vm, fn_mode=fn_mode,
               sp_observed=vm.sp_seen or self.sp_probed, unchecked=unchecked, reading=reading)
        if (w.verdict in (VIOLATION, SUSPECT) and ev.kind in (Kind.WALK_START, Kind.PAGE_FAULT)):
            decide_address_refault(w, ev.value)
        self._closed.append(w)
        self._count(w)

    def _evidence(self, ev: Event) -> None:
        vm, th = self._of(ev, remember=False)
        th.since_run = 0
        if th.window is not None:
            self._close(vm, th, ev)

    # ------------------------------------------------------------------ lost events
    def on_lost(self, ev: Event) -> None:
        """The collector dropped ``value`` records of one VM (``tgid``), or of any VM.

        Every window open on those VMs becomes inconclusive.  What the loss hid is unknown
        (a ``kvm_mmu_sync_page``, an ``kvm_mmu_unsync_page``, a zap or a link), so from now
        on the VM's unsync set is in doubt: later windows of each vCPU cannot give ok or
        violation from it (window._discount_losses) until that vCPU's state is
        re-established (``_reestablish``)."""
        self.counters.lost_markers += max(1, ev.value)
        self._taint(ev)

    def on_invalid(self, ev: Event) -> None:
        """An event the validation layer refused (sources/validate.py): whatever it was, it
        is not believed, so it counts as one lost event of its VM."""
        self.counters.invalid_markers += 1
        self._taint(ev)

    def _taint(self, ev: Event) -> None:
        self.seq += 1
        if ev.tgid >= 0:
            vms = [self._vm(ev.tgid)]
        else:
            self._loss = (self.seq, ev.ts)
            vms = list(self.vms.values())
        for vm in vms:
            vm.loss_seq, vm.loss_ts = self.seq, ev.ts
            for tkey in vm.open:
                w = vm.threads[tkey].window
                if w is not None:
                    w.lost = True

    def _reestablish(self, th: VcpuState) -> None:
        """This vCPU's shadow state is known again after any earlier loss: KVM synced every
        unsync SP reachable from its root (kvm_mmu_sync_roots, also run by kvm_mmu_load
        after a reload), or an exact snapshot of its root showed nothing unsync below."""
        self.seq += 1
        th.clean_seq = self.seq
        w = th.window
        if w is not None and not w.tentative:
            w.reestablished = True

    # ------------------------------------------------------------------ flush requests
    def on_flush_request_pv(self, ev: Event) -> None:
        """kvm:kvm_pv_tlb_flush from record_steal_time(): need_flush_tlb set opens a window.

        With need_flush_tlb 0 it only says the vCPU is being loaded (every KVM_RUN on PVM).
        """
        vm, th = self._of(ev, remember=ev.need_flush > 0)
        if ev.need_flush > 0:
            self._open(vm, th, ev)

    def on_flush_request_guest(self, ev: Event) -> None:
        """KVM_REQ_TLB_FLUSH_GUEST pending (kvm_exit ``requests``, 6.14+)."""
        vm, th = self._of(ev)
        self._open(vm, th, ev)

    def on_flush_request_hyperv(self, ev: Event) -> None:
        """kvm_hv_flush_tlb(_ex): fires on the vCPU that made the Hyper-V flush hypercall
        (arch/x86/kvm/hyperv.c, kvm_hv_flush_tlb), which requests the flush on every vCPU of
        its processor set.  The set is not in the schema (``value`` is processor_mask or,
        for _ex, only the bank mask), so only the caller's window is modelled."""
        vm, th = self._of(ev)
        self._open(vm, th, ev)

    # ------------------------------------------------------------------ guest flush paths
    # One opener per row of flushpaths.PATHS beyond steal time and Hyper-V; the row gives the
    # window its name and its sync obligation.

    def _flush_path(self, ev: Event, switches_root: bool = False,
                    new_root: Optional[tuple] = None) -> None:
        vm, th = self._of(ev)
        if new_root is not None and new_root in vm.shadow.pages:
            th.set_root(new_root, new_root[1] & 0xF)
        elif switches_root:
            self._forget_root(th, ev)
        if ev.need_flush == 0:
            return          # the action asked for no flush (CR3 no-flush bit, no PGE toggle)
        self._open(vm, th, ev)

    def on_flush_pvm_hypercall(self, ev: Event) -> None:
        """A PVM TLB-flush hypercall (pvm.c handle_hc_flush_tlb_*: KVM_REQ_TLB_FLUSH_GUEST)."""
        self._flush_path(ev)

    def on_flush_cr3(self, ev: Event) -> None:
        """MOV to CR3 (kvm_set_cr3): without the no-flush bit the new root must be synced.

        The root switches, from prev_roots without a kvmmmu event when cached
        (arch/x86/kvm/x86.c kvm_set_cr3 -> mmu/mmu.c kvm_mmu_new_pgd -> fast_pgd_switch,
        v6.6).  With the value known and the old root known, the new root is the SP of the
        new CR3's frame with the old root's role (is_root_usable matches pgd and role word;
        a CR3 write changes no role bit): the same root for the same CR3 (kvm_set_cr3
        skips kvm_mmu_new_pgd), a known SP otherwise.  Else the root is unknown."""
        _, th = self._of(ev, remember=False)
        new_root = None
        if ev.value != -1 and th.root is not None and th.root_level >= 4:
            new_root = ((ev.value & PTE_ADDR) >> 12, th.root[1])
        self._flush_path(ev, switches_root=True, new_root=new_root)

    def on_flush_cr4(self, ev: Event) -> None:
        """MOV to CR4 (kvm_post_set_cr4): a PGE toggle or PCIDE 1->0 is a full guest flush.
        The event carries only the new value (kvm_cr): the thread's previous write, when
        the trace has it, tells whether this one toggles."""
        key = (ev.tgid, ev.tid)
        old = self._cr4.get(key)
        role_kept = False
        if ev.value >= 0:
            self._cr4[key] = ev.value
            if old is not None:
                toggled = ((old ^ ev.value) & CR4_PGE
                           or (old & CR4_PCIDE and not ev.value & CR4_PCIDE))
                ev = ev._replace(need_flush=1 if toggled else 0)
                role_kept = not (old ^ ev.value) & CR4_ROLE_BITS
        # CR4 bits in the MMU role (arch/x86/kvm/mmu.h KVM_MMU_CR4_ROLE_BITS) changing make
        # kvm_post_set_cr4 reset the MMU context: unknown root until the reload's get_page.
        # (PGE was one of them in 5.13-5.14: that reset reloads the root visibly too.)
        self._flush_path(ev, switches_root=not role_kept)

    def on_flush_invlpg(self, ev: Event) -> None:
        """INVLPG (kvm_mmu_invlpg): only the SPTEs mapping ``value`` (the address)."""
        self._flush_path(ev)

    def on_flush_invpcid(self, ev: Event) -> None:
        """INVPCID (kvm_handle_invpcid): single-context syncs the current root, all-context
        raises KVM_REQ_TLB_FLUSH_GUEST; type 0 (one address) is an address flush."""
        self._flush_path(ev)

    def on_flush_pvm_load_pgtbl(self, ev: Event) -> None:
        """PVM_HC_LOAD_PGTBL; flags bit 0 asks for a flush of the new CR3's PCID.  It loads
        a new CR3 (kvm_mmu_new_pgd): the root switches."""
        self._flush_path(ev, switches_root=True)

    # ------------------------------------------------------------------ flush path functions
    def on_flush_guest_entry(self, ev: Event) -> None:
        """kvm_vcpu_flush_tlb_guest() entered: a guest flush is being serviced."""
        vm, th = self._of(ev)
        self._open(vm, th, ev)

    def on_flush_guest_return(self, ev: Event) -> None:
        vm, th = self._of(ev)
        w = self._confirm(th, ev)
        if w is None:
            # Its entry is not in the trace: the trace (or the probe) started inside.
            w = self._open(vm, th, ev, started_inside=True)
            self._inherit(th, w)

    def on_flush_service(self, ev: Event) -> None:
        """kvm_service_local_tlb_flush_requests(): runs for any pending TLB flush request,
        so it opens only a tentative window that a guest-flush action must confirm."""
        vm, th = self._of(ev)
        if th.window is None:
            self._open(vm, th, ev, tentative=True)
        else:
            th.window.add_event(ev)

    def on_hw_flush(self, ev: Event) -> None:
        """The vendor flush (vmx_flush_tlb_guest, svm_flush_tlb*, pvm_flush_tlb_guest).
        Not an opener: on SVM the same function also serves flush_tlb_current/all."""
        _, th = self._of(ev)
        if th.window is not None:
            th.window.add_event(ev)

    def on_mmu_unload(self, ev: Event) -> None:
        """kvm_mmu_unload(): frees root and prev_roots; the next kvm_mmu_load() syncs."""
        _, th = self._of(ev)
        th.since_run |= SINCE_UNLOAD
        th.drop_root()
        w = self._confirm(th, ev)
        if w is not None:
            w.saw_unload = True
            w.root_switched = False
            w.note_sync(ev.ts)

    def on_mmu_load_entry(self, ev: Event) -> None:
        """kvm_mmu_load(): allocates roots, then kvm_mmu_sync_roots(), then loads the PGD.
        The window's verdict rests on the unload before it (see on_mmu_unload)."""
        _, th = self._of(ev)
        if th.since_run & SINCE_UNLOAD:
            self._reestablish(th)       # unload + load: kvm_mmu_load() syncs the new roots
        if th.window is not None:
            th.window.add_event(ev)

    def on_mmu_load_return(self, ev: Event) -> None:
        _, th = self._of(ev)
        if th.window is not None:
            th.window.add_event(ev)

    def on_sync_roots(self, ev: Event) -> None:
        """kvm_mmu_sync_roots(): syncs every unsync SP reachable from the current root."""
        vm, th = self._of(ev)
        vm.sync_probe_seen = True
        th.since_run |= SINCE_SYNC_ROOTS
        w = self._confirm(th, ev)
        self._reestablish(th)
        if w is not None:
            w.saw_sync_roots = True
            w.root_switched = False
            w.note_sync(ev.ts)

    def on_sync_prev_roots(self, ev: Event) -> None:
        """kvm_mmu_sync_prev_roots() (5.16+): frees prev_roots that have unsync children.
        It runs only inside kvm_vcpu_flush_tlb_guest(), after kvm_mmu_sync_roots(): it
        confirms a guest flush; the current root's sync is what decides the window."""
        _, th = self._of(ev)
        self._confirm(th, ev)

    def _inherit(self, th: VcpuState, w: FlushWindow) -> None:
        """Flush-path functions since the last guest run belong to a window opened late."""
        w.saw_sync_roots |= bool(th.since_run & SINCE_SYNC_ROOTS)
        w.saw_unload |= bool(th.since_run & SINCE_UNLOAD)

    # ------------------------------------------------------------------ shadow pages
    def on_sp_get(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_get_page: an SP found or created for this thread's walk or root.

        A root-level (4 or 5), not direct SP is this vCPU's new root (mmu_alloc_root).
        Otherwise the SP hangs under the SP one level up on the same path: the vCPU's root
        when that is the root level, else the guest walk's table or the thread's latest SP
        of that level (FNAME(fetch) calls kvm_mmu_get_child_sp top-down).
        """
        vm, th = self._of(ev)
        vm.sp_seen = True
        level = ev.level if ev.level > 0 else ev.role & 0xF
        shadow = vm.shadow
        new = (ev.gfn, ev.role) not in shadow.pages
        sp = shadow.page(ev.gfn, ev.role, level, created=ev.created == 1)
        if new:
            self._adopt_guest_edges(vm, sp)
        if level == 5 and not vm.five_level:
            self._five_level(vm)
        if self._is_root(vm, level, ev.role):
            th.set_root(sp.key, level)
            # A root is looked up only by mmu_alloc_root() under kvm_mmu_load(), which then
            # calls kvm_mmu_sync_roots() (arch/x86/kvm/mmu/mmu.c): a full sync follows.
            self._reestablish(th)
            w = th.window
            if w is not None:
                w.saw_reload_root = True
                w.root_switched = False      # kvm_mmu_load syncs the root it loads
                w.note_sync(ev.ts)
                w.add_event(ev)
            return
        parent = self._parent_of(vm, th, ev.gfn, level, ev.role)
        if parent is not None and parent.level == level + 1:
            shadow.link(parent, sp)
        for lower in [lv for lv in th.path if lv < level]:
            del th.path[lower]
        th.path[level] = sp.key

    @staticmethod
    def _is_root(vm: VMState, level: int, role: int) -> bool:
        """A get_page that allocates a root (mmu_alloc_root): not direct, at the guest's
        top level.  Under 5-level paging a level-4 SP is a child of the level-5 root, which
        FNAME(fetch) fetches mid-life like any other table."""
        if role & ROLE_DIRECT:
            return False
        return level == 5 or (level == 4 and not vm.five_level)

    def _five_level(self, vm: VMState) -> None:
        """The VM uses 5-level paging: roots taken from level-4 SPs were not roots."""
        vm.five_level = True
        for th in vm.threads.values():
            if th.root_level == 4:
                th.drop_root()

    @staticmethod
    def _parent_of(vm: VMState, th: VcpuState, gfn: int, level: int, role: int):
        """The SP one level up on the path that just got SP (gfn, level).

        Under the root level it is the vCPU's root.  Lower down, the guest walk says which
        tables point at this one; the thread's latest SP of that level is used when it is
        one of them (or when no walk was recorded), else the only known SP among them.
        """
        shadow = vm.shadow
        if th.root is not None and level + 1 == th.root_level:
            return shadow.pages.get(th.root)
        pk = th.path.get(level + 1)
        latest = shadow.pages.get(pk) if pk is not None else None
        tables = vm.guest_parents.get((gfn, level))
        if not tables:
            return latest
        if latest is not None and latest.gfn in tables:
            return latest
        found = [sp for sp in (shadow.find(p, level + 1, role) for p in tables) if sp is not None]
        return found[0] if len(found) == 1 else None

    def on_sp_unsync(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_unsync_page: the guest may now write this last-level table."""
        vm, th = self._of(ev)
        vm.sp_seen = True
        self.seq += 1
        level = ev.level if ev.level > 0 else ev.role & 0xF
        new = (ev.gfn, ev.role) not in vm.shadow.pages
        vm.shadow.mark_unsync(ev.gfn, ev.role, level, self.seq, ev.ts, ev.tid,
                              refresh_before=vm.loss_seq)
        if new:
            self._adopt_guest_edges(vm, vm.shadow.pages[(ev.gfn, ev.role)])

    def on_sp_sync(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_sync_page (kvm_sync_page; also fires for a zapped unsync SP)."""
        vm, th = self._of(ev)
        vm.sp_seen = True
        vm.sync_tick = self.tick
        rec = vm.shadow.mark_sync((ev.gfn, ev.role))
        w = th.window
        if w is not None and not w.tentative and w.lost_before_ts is not None:
            # kvm_sync_page on the vCPU's own thread between the flush and the next guest
            # run is kvm_mmu_sync_roots() at work (the fault path's sync needs a guest run):
            # every unsync SP reachable from the root is being synced, seen or not in our set.
            self._reestablish(th)
        if rec is None:
            return
        if th.window is None:
            self.counters.unexplained_syncs += 1
        for tkey in vm.open:
            w = vm.threads[tkey].window
            if w is not None and rec.seq < w.open_seq:
                w.synced += 1
                w.note_sync(ev.ts)
                if tkey == th.tid:
                    w.add_event(ev)
        w = th.window
        if w is not None:
            # A sync on the vCPU's own thread inside its window: kvm_mmu_sync_roots ran, on
            # the root current then (so also after any root switch before it).
            w.synced_here = True
            w.root_switched = False
            w.note_sync(ev.ts)

    def on_sp_zap(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_prepare_zap_page, from any thread of the VM (MMU notifiers,
        kvm-nx-lpage-recovery): the SP and its links go; a zapped root is reloaded."""
        vm, th = self._of(ev)
        vm.sp_seen = True
        vm.sync_tick = self.tick
        key = (ev.gfn, ev.role)
        rec = vm.shadow.unsync.get(key)
        vm.shadow.zap(key)
        if rec is not None:
            for tkey in vm.open:
                w = vm.threads[tkey].window
                if w is not None and rec.seq < w.open_seq:
                    w.zapped += 1
        for other in vm.threads.values():
            if other.root == key:
                other.drop_root()

    def on_walk_element(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_paging_element: the guest PTE read at ``level`` points at the guest
        table one level down (select.py put the table it was read from in ``aux``), so it
        links the SPs shadowing the two tables, when both are known."""
        vm, th = self._of(ev, remember=False)
        level = ev.level
        pte = ev.value
        if level < 2 or not pte & PTE_PRESENT or (level in (2, 3) and pte & PTE_PSE):
            return                          # a leaf: names a data page, not a table
        child_gfn = (pte & PTE_ADDR) >> 12
        shadow = vm.shadow
        like = th.root[1] if th.root is not None else None
        if ev.aux == WALK_FROM_ROOT:
            if th.root is None or level != th.root_level:
                return
            parent_gfn = th.root[0]
            parent = shadow.pages.get(th.root)
        else:
            parent_gfn = ev.aux
            parent = shadow.find(parent_gfn, level, like)
        vm.guest_parents.setdefault((child_gfn, level - 1), set()).add(parent_gfn)
        vm.guest_children.setdefault((parent_gfn, level), set()).add(child_gfn)
        child = shadow.find(child_gfn, level - 1, like)
        if parent is not None and child is not None:
            shadow.link(parent, child)

    @staticmethod
    def _adopt_guest_edges(vm: VMState, sp) -> None:
        """An SP the model did not know yet takes the links the guest walks already showed
        for its table, up and down.  A walk repeated after the SP appeared would make the
        same links; selection.py hands on each walk edge once, so the result must not
        depend on whether it was repeated."""
        shadow = vm.shadow
        for parent_gfn in vm.guest_parents.get((sp.gfn, sp.level), ()):
            parent = shadow.find(parent_gfn, sp.level + 1, sp.role)
            if parent is not None:
                shadow.link(parent, sp)
        for child_gfn in vm.guest_children.get((sp.gfn, sp.level), ()):
            child = shadow.find(child_gfn, sp.level - 1, sp.role)
            if child is not None:
                shadow.link(sp, child)

    # ------------------------------------------------------------------ exact state
    def on_sp_link(self, ev: Event) -> None:
        """A link read from the child's ``parent_ptes`` (exact probes): the parent SP's
        ``spt`` page holds the SPTE that points at the child."""
        vm, _ = self._of(ev, stamp=False)
        vm.sp_seen = True
        shadow = vm.shadow
        child = shadow.page(ev.gfn, ev.role, ev.role & 0xF)
        parent = shadow.page(ev.parent_gfn, ev.parent_role, ev.parent_role & 0xF)
        if ev.value:
            shadow.link(parent, child)
        else:
            shadow.unlink(parent, child)

    def on_root_state(self, ev: Event) -> None:
        """One slot of ``vcpu->arch.mmu`` read at this moment (exact probes): slot 0 is the
        vCPU's real current root.  Rows sharing (tid, ts) make one snapshot (exact.py)."""
        _, th = self._of(ev, stamp=False)
        snap = th.snap
        slot = int(ev.value)
        if snap is None or snap.ts != ev.ts or slot in snap.slots:
            snap = th.snap = Snapshot(ev.ts, self.tick)
        snap.add(RootSlot(slot, ev.gfn, ev.role, ev.unsync, max(ev.unsync_children, 0)))
        if slot == 0:
            if ev.gfn >= 0:
                th.set_root((ev.gfn, ev.role), ev.role & 0xF)
            else:
                th.drop_root()
            if ev.gfn < 0 or ev.unsync_children == 0:
                self._reestablish(th)   # exact: nothing unsync below the real root

    # ------------------------------------------------------------------ silent root switches
    def on_cr_write(self, ev: Event) -> None:
        """A CR0/CR3/CR4 write (kvm:kvm_cr, or an emulated mov to CR / lmsw).  A CR3 load
        whose root is cached in ``prev_roots`` switches the root with no kvmmmu event
        (arch/x86/x86.c kvm_set_cr3 -> arch/x86/kvm/mmu/mmu.c kvm_mmu_new_pgd ->
        fast_pgd_switch); CR0/CR4 writes change the MMU role (kvm_post_set_cr0/cr4 ->
        kvm_mmu_reset_context).  CR2/CR8 writes switch nothing."""
        if ev.level in (2, 8):
            self._of(ev, stamp=False)
            return
        _, th = self._of(ev)
        self._forget_root(th, ev)

    def on_nested_enter(self, ev: Event) -> None:
        """kvm:kvm_nested_vmenter: L2 runs on its own root (guest_mode role; with nested
        shadow paging the L2 CR3 is loaded through kvm_mmu_new_pgd, arch/x86/kvm/vmx/nested.c
        nested_vmx_load_cr3), possibly a cached one: no kvmmmu event."""
        _, th = self._of(ev)
        self._forget_root(th, ev)

    def on_nested_exit(self, ev: Event) -> None:
        """kvm:kvm_nested_vmexit_inject: back to L1 (nested_vmx_vmexit loads L1's CR3 with
        nested_vmx_load_cr3 -> kvm_mmu_new_pgd), usually L1's root cached in prev_roots."""
        _, th = self._of(ev)
        self._forget_root(th, ev)

    def on_smm_transition(self, ev: Event) -> None:
        """kvm:kvm_smm_transition (arch/x86/kvm/smm.c kvm_smm_changed): SMM roots carry
        role.smm, which KVM_MMU_PAGE_PRINTK does not print; kvm_mmu_reset_context follows."""
        _, th = self._of(ev)
        self._forget_root(th, ev)

    def on_efer_write(self, ev: Event) -> None:
        """An EFER write (kvm:kvm_msr): LMA/NX change the MMU mode (kvm_set_efer ->
        kvm_mmu_reset_context)."""
        _, th = self._of(ev)
        self._forget_root(th, ev)

    # ------------------------------------------------------------------ guest-run evidence
    def on_guest_entry(self, ev: Event) -> None:
        """kvm:kvm_entry: the vCPU enters guest mode."""
        self._evidence(ev)

    def on_guest_exit(self, ev: Event) -> None:
        """kvm:kvm_exit: the vCPU ran guest code until this exit."""
        self._evidence(ev)

    def on_spte_install(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_set_spte from a guest fault: the guest ran and faulted."""
        self._evidence(ev)

    def on_emulate(self, ev: Event) -> None:
        self._evidence(ev)

    def on_pio(self, ev: Event) -> None:
        self._evidence(ev)

    def on_mmio(self, ev: Event) -> None:
        self._evidence(ev)

    def on_hypercall(self, ev: Event) -> None:
        self._evidence(ev)

    def on_userspace_exit(self, ev: Event) -> None:
        """kvm:kvm_userspace_exit: evidence only for a real exit reason (not an errno, not
        KVM_EXIT_INTR, which KVM_RUN returns for a signal before entering the guest)."""
        if ev.value >= 0 and ev.value != KVM_EXIT_INTR:
            self._evidence(ev)

    def on_page_fault(self, ev: Event) -> None:
        self._evidence(ev)

    def on_walk_start(self, ev: Event) -> None:
        """kvmmmu:kvm_mmu_pagetable_walk: a guest fault (or emulated access) is walked."""
        self._evidence(ev)


def replay_frame(df: pd.DataFrame, meta: Optional[TraceMeta] = None, **kw) -> AnalysisResult:
    """Replay one in-memory frame (tests, small traces)."""
    r = Replayer(meta, **kw)
    r.feed(df)
    return r.finish()


__all__ = ["Replayer", "ReplayListener", "replay_frame", "Event", "VMState", "COLUMN_NAMES"]
