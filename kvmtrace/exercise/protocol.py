"""The round protocol: what each vCPU does per round, and the checks on what readers saw.

vCPU 0 is the writer, vCPUs 1..N-1 the readers.  Per round r, for ``pages`` pairs (t, k)
drawn by the seeded RNG from distinct last-level tables t:

1. The VMM writes a fresh tag into both frames of each pair (``tag(r, t, k, which)``),
   so a stale translation shows up as the other frame's tag of *this* round.
2. Readers run: they read VA(t, k) through their current mapping (their shadow SPTEs now
   cache it) and park (OUT -> KVM_EXIT_IO), as preempted vCPUs sit outside guest mode.
3. The writer runs: it rewrites PTE 2k of table t in every reader's page tables to map the
   other frame (a guest write to a shadowed last-level table: KVM marks the shadow page
   unsync, ``kvmmmu:kvm_mmu_unsync_page``), then, unless this is the control, sets
   KVM_VCPU_FLUSH_TLB in each reader's steal-time ``preempted`` byte, and parks.
4. Readers run again: KVM_RUN loads the vCPU, ``record_steal_time()`` services the flush
   (``kvm:kvm_pv_tlb_flush`` need_flush_tlb=1), which must sync the unsync shadow pages
   before the guest runs; each reader reads VA(t, k) again.  Any value other than the new
   frame's tag is a stale read.

Pairs flip A -> B -> A across rounds.

With ``address_spaces`` N > 1 each reader switches page-table tree with a CR3 load at the
start of its passes: before the remap to tree (r // 2) mod N, right after the flush to
another tree (the control switches only before the remap).  The second round of each pair
switches back to the tree the last post-flush switch left, which KVM keeps in
``prev_roots``: ``fast_pgd_switch()`` reuses it without any tracepoint.  On the PVM host
this was written on, CR3 loads are emulated (``kvm:kvm_emulate_insn``) and a serviced
guest flush leaves ``prev_roots`` empty, so the switch right after a flush loads its root
with a visible ``kvm_mmu_get_page``; the switch back before the next remap hits.  Where the guest has PCIDs, every other
switch sets the CR3 no-flush bit (bit 63): KVM then leaves a cached root unsynced (the
architecture lets the guest keep that PCID's TLB entries), which is still correct here
because the preceding guest flush synced every root, prev roots included
(``kvm_vcpu_flush_tlb_guest()``: ``kvm_mmu_sync_roots()`` + ``kvm_mmu_sync_prev_roots()``).
"""
from __future__ import annotations

import queue
import random
import struct
import threading
import time
from dataclasses import dataclass

from kvmtrace.exercise import flushvia
from kvmtrace.exercise.guest import Guest
from kvmtrace.exercise.cpustate import CR3_NOFLUSH
from kvmtrace.exercise.guestcode import (CTL_CR3, CTL_FLAGS, CTL_NFLAGS, CTL_NREADS, CTL_NSTORES,
                                         CTL_READS, CTL_RESULTS, CTL_STORES, PARK_PORT)
from kvmtrace.exercise.kvmabi import set_thread_name
from kvmtrace.exercise.layout import PAIRS_PER_TABLE, Layout, leaf_entry
from kvmtrace.exercise.paravirt import STEAL_TIME_PREEMPTED_OFFSET
from kvmtrace.exercise.result import ExerciseConfig, StaleRead
from kvmtrace.exercise.vm import Vcpu

WRITER = 0
PHASE_TIMEOUT_S = 30.0
TAG_MAGIC = 0x6B76                 # "kv" in the top 16 bits of every tag


def tag(round_no: int, table: int, pair: int, which: int) -> int:
    """The 64-bit value frame ``which`` (0 = A, 1 = B) of a pair holds during a round:
    "kv" | round (24 bits) | table (15) | pair (8) | which (1)."""
    return (TAG_MAGIC << 48 | (round_no & 0xFFFFFF) << 24 | (table & 0x7FFF) << 9
            | (pair & 0xFF) << 1 | which)


def tables_for(pages: int) -> int:
    """Last-level tables in the window: twice what a round touches (at least 8), so the
    seed decides which tables each round dirties."""
    return max(8, 2 * pages)


@dataclass(frozen=True)
class Remap:
    table: int
    pair: int
    old: int                      # frame mapped before the round (0 = A, 1 = B)

    @property
    def new(self) -> int:
        return 1 - self.old


class RoundPlanner:
    """Seeded choice of the pairs each round remaps, and the A/B state of every pair."""

    def __init__(self, seed: int, tables: int, pages: int) -> None:
        if pages > tables:
            raise ValueError("pages must not exceed tables")
        self.rng = random.Random(seed)
        self.tables, self.pages = tables, pages
        self.state: dict[tuple[int, int], int] = {}

    def next_round(self) -> list[Remap]:
        picks = []
        for t in sorted(self.rng.sample(range(self.tables), self.pages)):
            k = self.rng.randrange(PAIRS_PER_TABLE)
            old = self.state.get((t, k), 0)
            self.state[(t, k)] = 1 - old
            picks.append(Remap(t, k, old))
        return picks


class _Stop:
    pass


class VcpuWorker(threading.Thread):
    """One host thread per vCPU, named like QEMU's ("CPU 0/KVM") so tracers attribute it.
    It owns its vCPU's KVM_RUN: each ``go()`` is one pass of the guest loop up to its
    park OUT."""

    def __init__(self, vcpu: Vcpu, done: "queue.SimpleQueue") -> None:
        super().__init__(name=f"CPU {vcpu.index}/KVM", daemon=True)
        self.vcpu = vcpu
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.done = done
        self.tid: int | None = None
        self.started_ok = threading.Event()

    def run(self) -> None:
        set_thread_name(self.name)
        self.tid = threading.get_native_id()
        self.started_ok.set()
        while not isinstance(self.inbox.get(), _Stop):
            try:
                self.vcpu.run_until_port(PARK_PORT)
                self.done.put((self.vcpu.index, None))
            except BaseException as exc:          # handed to the orchestrator
                self.done.put((self.vcpu.index, exc))

    def go(self) -> None:
        self.inbox.put(True)

    def stop(self) -> None:
        self.inbox.put(_Stop())


class Exerciser:
    """Runs the rounds of one exercise on a set-up guest."""

    def __init__(self, guest: Guest, config: ExerciseConfig) -> None:
        self.guest, self.config = guest, config
        self.layout: Layout = guest.layout
        self.mem = guest.vm.mem
        self.user = guest.backend.quirks.user_bit_everywhere
        self.readers = list(range(1, config.vcpus))
        self.planner = RoundPlanner(config.seed, self.layout.tables, config.pages)
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = [VcpuWorker(v, self.done) for v in guest.vcpus]
        self.stale: list[StaleRead] = []
        self.reads = 0
        self.flushes_requested = 0
        self.trees = self.layout.address_spaces
        self.current = [0] * config.vcpus           # the tree each vCPU's CR3 points at
        self.cr3_loads = 0
        self.noflush_loads = 0
        self.via = flushvia.FlushVia(tuple(config.flush_via), config.hypercall)
        self.hypercall_results: list[int] = []

    # -- control blocks ----------------------------------------------------------------
    def _w64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, gpa, value)

    def _tree_before(self, round_no: int) -> int:
        """The tree the readers use before the remap: each for two rounds, so the second
        round switches back to the tree the last post-flush switch left (a prev_roots
        entry)."""
        return (round_no // 2) % self.trees

    def _tree_after(self, round_no: int) -> int:
        """The tree the readers switch to right after the flush: another one, varying."""
        if self.trees == 1:
            return 0
        return (self._tree_before(round_no) + 1 + round_no % (self.trees - 1)) % self.trees

    def _cr3_for(self, vcpu: int, tree: int) -> int:
        """The CR3 value that switches ``vcpu`` to ``tree``, or 0 when it is there."""
        if self.trees == 1 or self.current[vcpu] == tree:
            return 0
        self.current[vcpu] = tree
        self.cr3_loads += 1
        cr3 = self.layout.trees[vcpu][tree].pml4
        if self.guest.pcid:
            cr3 |= tree                               # PCID = tree index
            if self.cr3_loads % 2 == 0:
                cr3 |= CR3_NOFLUSH
                self.noflush_loads += 1
        return cr3

    def _program(self, vcpu: int, stores=(), flags=(), reads=(), cr3: int = 0) -> None:
        ctl = self.layout.ctl(vcpu)
        self._w64(ctl + CTL_CR3, cr3)
        for i, (address, value) in enumerate(stores):
            self._w64(ctl + CTL_STORES + 16 * i, address)
            self._w64(ctl + CTL_STORES + 16 * i + 8, value)
        for i, address in enumerate(flags):
            self._w64(ctl + CTL_FLAGS + 8 * i, address)
        for i, address in enumerate(reads):
            self._w64(ctl + CTL_READS + 8 * i, address)
        self._w64(ctl + CTL_NSTORES, len(stores))
        self._w64(ctl + CTL_NFLAGS, len(flags))
        self._w64(ctl + CTL_NREADS, len(reads))

    def _results(self, vcpu: int, n: int) -> tuple[int, ...]:
        return struct.unpack_from(f"<{n}Q", self.mem, self.layout.ctl(vcpu) + CTL_RESULTS)

    # -- phases ------------------------------------------------------------------------
    def _run(self, vcpus: list[int]) -> None:
        """Let ``vcpus`` each make one pass concurrently; wait until all have parked."""
        for v in vcpus:
            self.workers[v].go()
        for _ in vcpus:
            try:
                index, exc = self.done.get(timeout=PHASE_TIMEOUT_S)
            except queue.Empty:
                raise TimeoutError(f"a vCPU did not park within {PHASE_TIMEOUT_S:.0f}s") from None
            if exc is not None:
                raise exc

    def _check(self, round_no: int, picks: list[Remap], after_flush: bool) -> None:
        for v in self.readers:
            got = self._results(v, len(picks))
            for remap, value in zip(picks, got):
                which = remap.new if after_flush else remap.old
                want = tag(round_no, remap.table, remap.pair, which)
                self.reads += 1
                if value != want:
                    self.stale.append(StaleRead(v, round_no, self.layout.va(remap.table, remap.pair),
                                                want, value, after_flush))

    def round(self, round_no: int) -> None:
        lay = self.layout
        picks = self.planner.next_round()
        for m in picks:
            for which in (0, 1):
                self._w64(lay.frame(m.table, m.pair, which), tag(round_no, m.table, m.pair, which))
        vas = [lay.va(m.table, m.pair) for m in picks]
        for v in self.readers:
            self._program(v, reads=vas, cr3=self._cr3_for(v, self._tree_before(round_no)))
        self._run(self.readers)
        self._check(round_no, picks, after_flush=False)
        stores = [(pte, leaf_entry(lay.frame(m.table, m.pair, m.new), self.user))
                  for v in self.readers for m in picks for pte in lay.pte_addresses(v, m.table, m.pair)]
        flags = ([lay.steal_time(v) + STEAL_TIME_PREEMPTED_OFFSET for v in self.readers]
                 if self.config.flush and self.via.steal_time(round_no) else [])
        self._program(WRITER, stores=stores, flags=flags)
        self._run([WRITER])
        for v in self.readers:
            # The control switches only before the remap: a CR3 load without the PCID
            # no-flush bit flushes the TLB itself, which would hide the staleness it shows.
            tree = self._tree_after(round_no) if self.config.flush else self.current[v]
            self._program(v, reads=vas, cr3=self._cr3_for(v, tree))
        armed = self._arm_flush(round_no, len(picks)) if self.config.flush else 0
        self.flushes_requested += len(flags) + armed
        self.via.count(round_no, len(flags) + armed)
        self._run(self.readers)
        if armed:
            self._disarm_flush()
        self._check(round_no, picks, after_flush=True)

    def _arm_flush(self, round_no: int, pages: int) -> int:
        """Each reader flushes by itself on its next pass (flushvia.py); returns the
        flushes requested (INVLPG: one per address)."""
        n = 0
        for v in self.readers:
            req = self.via.request(round_no, v, self._flush_cr3(v))
            flushvia.program(self.mem, self.layout.ctl(v), req)
            if req.op != flushvia.OP_NONE:
                n += pages if req.op == flushvia.OP_INVLPG else 1
        return n

    def _flush_cr3(self, vcpu: int) -> int:
        """The CR3 the reader runs on after this pass's switch, without the no-flush bit:
        loading it again is a flushing MOV to CR3 (--flush-via cr3)."""
        tree = self.current[vcpu]
        return self.layout.trees[vcpu][tree].pml4 | (tree if self.guest.pcid else 0)

    def _disarm_flush(self) -> None:
        for v in self.readers:
            ctl = self.layout.ctl(v)
            if struct.unpack_from("<Q", self.mem, ctl + flushvia.CTL_FLUSH_OP)[0] == flushvia.OP_HYPERCALL:
                self.hypercall_results.append(flushvia.hypercall_result(self.mem, ctl))
            flushvia.program(self.mem, ctl, flushvia.Request(flushvia.OP_NONE))

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> dict[int, int]:
        for w in self.workers:
            w.start()
        for w in self.workers:
            w.started_ok.wait()
        return {w.vcpu.index: w.tid for w in self.workers}

    def stop(self) -> bool:
        """Ask the workers to exit; True when all did (their vCPUs are then idle)."""
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(timeout=PHASE_TIMEOUT_S)
        return not any(w.is_alive() for w in self.workers)

    def run_rounds(self) -> float:
        t0 = time.perf_counter()
        for r in range(self.config.rounds):
            self.round(r)
            if self.config.progress is not None:
                self.config.progress(r + 1, self.config.rounds)
        return time.perf_counter() - t0
