"""Generate small traces of a guest TLB flush as each kernel generation services it.

This machine cannot record the function-probe path (no kprobes, no fentry), so these
fixtures are written from the kernel source.  Each one is the same story, the one the lab
capture (fixtures/lab_two_vcpu_flush.ftrace.txt) shows for real:

  vCPU1 builds a 4-level shadow path root -> L3 -> L2 -> L1 (SP gfn 0x1003); vCPU0 shares
  the root (same guest CR3), writes a PTE in the L1 table so its SP goes unsync
  (mmu_try_to_unsync_pages), and asks for a PV flush of the preempted vCPU1
  (kvm_flush_tlb_multi sets KVM_VCPU_FLUSH_TLB in vCPU1's steal-time ``preempted``);
  vCPU1's next KVM_RUN services it in record_steal_time():

    arch/x86/kvm/x86.c record_steal_time() (v5.10 .. v6.x):
        trace_kvm_pv_tlb_flush(vcpu->vcpu_id, st_preempted & KVM_VCPU_FLUSH_TLB);
        if (st_preempted & KVM_VCPU_FLUSH_TLB)
                kvm_vcpu_flush_tlb_guest(vcpu);

  and what ``kvm_vcpu_flush_tlb_guest()`` does is the generation (DESIGN §2).

Usage: ``python3 -m kvmtrace.analysis.generations fixtures/generations`` writes one JSON
Lines trace per scenario and ``expected.json`` (the verdict each must produce).  Output is
deterministic: regenerating gives byte-identical files.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..frame import from_rows
from ..schema import Kind, TraceMeta
from ..tracefile import write_trace

TGID = 5000
TID = {0: 5001, 1: 5002}
NX_RECOVERY_TID = 5003
# union kvm_mmu_page_role of a 64-bit guest's shadow pages: access=7 (bits 8-10), efer_nx
# (bit 12), cr0_wp (bit 13); level in bits 0-3.  The lab shows the same 0x37xx roles.
ROLE_BASE = 0x3700
ROOT_GFN, L3_GFN, L2_GFN, L1_GFN = 0x1000, 0x1001, 0x1002, 0x1003
DATA_GFN = 0x2000
START_NS = 1_000_000_000_000
STEP_NS = 1_000

TRACEPOINTS = ["tracepoint:kvm:kvm_pv_tlb_flush", "tracepoint:kvm:kvm_entry",
               "tracepoint:kvm:kvm_exit", "tracepoint:kvm:kvm_page_fault",
               "tracepoint:kvmmmu:kvm_mmu_get_page", "tracepoint:kvmmmu:kvm_mmu_unsync_page",
               "tracepoint:kvmmmu:kvm_mmu_sync_page", "tracepoint:kvmmmu:kvm_mmu_prepare_zap_page",
               "tracepoint:kvmmmu:kvm_mmu_pagetable_walk",
               "tracepoint:kvmmmu:kvm_mmu_paging_element", "tracepoint:kvmmmu:kvm_mmu_set_spte"]
PVM_TRACEPOINTS = [p for p in TRACEPOINTS if "kvm_entry" not in p and "kvm_exit" not in p] + [
    "tracepoint:kvm:kvm_emulate_insn", "tracepoint:kvm:kvm_pio", "tracepoint:kvm:kvm_userspace_exit"]


def _role(level: int) -> int:
    return ROLE_BASE | level


class TraceBuilder:
    """Rows in time order, one VM, vCPU n on thread TID[n] and host CPU n."""

    def __init__(self, kernel_entry: bool = True, functions: bool = False) -> None:
        self.rows: list[dict] = []
        self.ts = START_NS
        self.kernel_entry = kernel_entry      # the host emits kvm_entry/kvm_exit (not PVM)
        self.functions = functions            # function probes attached

    def ev(self, on: int, kind: Kind, tid: int | None = None, **fields) -> None:
        """An event on vCPU ``on``'s thread (fields may include the event's own vcpu id)."""
        self.ts += STEP_NS
        tid = TID[on] if tid is None else tid
        comm = f"CPU {on}/KVM" if tid in TID.values() else "kvm-nx-lpage-recovery"
        row = {"ts": self.ts, "cpu": on, "tgid": TGID, "tid": tid,
               "kind": int(kind), "comm": comm}
        row.update(fields)
        self.rows.append(row)

    def lost(self, count: int) -> None:
        """A collector's lost-records marker (no VM, no thread)."""
        self.ts += STEP_NS
        self.rows.append({"ts": self.ts, "cpu": 1, "kind": int(Kind.LOST), "value": count})

    def fn(self, vcpu: int, kind: Kind, **fields) -> None:
        """A function-probe event; dropped when the scenario has no function probes."""
        if self.functions:
            self.ev(vcpu, kind, **fields)

    def sp(self, vcpu: int, kind: Kind, gfn: int, level: int, **fields) -> None:
        self.ev(vcpu, kind, gfn=gfn, role=_role(level), level=level, **fields)

    # ---------------------------------------------------------------- building blocks
    def vcpu_load(self, vcpu: int, need_flush: int = 0) -> None:
        """KVM_RUN -> kvm_arch_vcpu_load sets KVM_REQ_STEAL_UPDATE -> vcpu_enter_guest ->
        record_steal_time -> trace_kvm_pv_tlb_flush (every run, need_flush 0 or 1)."""
        self.ev(vcpu, Kind.FLUSH_REQUEST_PV, vcpu=vcpu, need_flush=need_flush)

    def mmu_load(self, vcpu: int, created: int, synced: tuple = ()) -> None:
        """vcpu_enter_guest -> kvm_mmu_reload -> kvm_mmu_load (arch/x86/kvm/mmu/mmu.c, v5.10
        .. v6.x): mmu_alloc_shadow_roots -> mmu_alloc_root -> kvm_mmu_get_page (the root),
        then kvm_mmu_sync_roots -> mmu_sync_children -> kvm_sync_page ->
        kvm_unlink_unsync_page -> trace_kvm_mmu_sync_page, then kvm_mmu_load_pgd."""
        self.fn(vcpu, Kind.MMU_LOAD_ENTRY)
        self.sp(vcpu, Kind.SP_GET, ROOT_GFN, 4, created=created, root_count=0 if created else 1,
                unsync=0)
        self.fn(vcpu, Kind.SYNC_ROOTS)
        for gfn, level in synced:
            self.sp(vcpu, Kind.SP_SYNC, gfn, level, unsync=1)
        self.fn(vcpu, Kind.MMU_LOAD_RETURN, value=0)

    def run(self, vcpu: int) -> None:
        """Guest execution starts: kvm_entry where the vendor run loop emits it; on PVM the
        first sign is a guest fault's SPTE install or an emulated instruction."""
        if self.kernel_entry:
            self.ev(vcpu, Kind.GUEST_ENTRY, vcpu=vcpu, value=0x401000)
        else:
            self.ev(vcpu, Kind.EMULATE, value=0x10100)

    def exit_(self, vcpu: int, reason: int = 14) -> None:
        if self.kernel_entry:
            self.ev(vcpu, Kind.GUEST_EXIT, vcpu=vcpu, value=reason)

    def walk(self, vcpu: int, addr: int, leaf_gfn: int) -> None:
        """kvm_mmu_pagetable_walk + one kvm_mmu_paging_element per level (FNAME(walk_addr))."""
        self.ev(vcpu, Kind.PAGE_FAULT, value=addr)
        self.ev(vcpu, Kind.WALK_START, value=addr)
        for level, table in ((4, L3_GFN), (3, L2_GFN), (2, L1_GFN), (1, leaf_gfn)):
            self.ev(vcpu, Kind.WALK_ELEMENT, level=level, value=(table << 12) | 0x67)

    def fault_build_path(self, vcpu: int) -> None:
        """A guest #PF: FNAME(fetch) -> kvm_mmu_get_child_sp for each missing level, top down,
        then mmu_set_spte (trace kvm_mmu_set_spte)."""
        self.exit_(vcpu)
        self.walk(vcpu, 0x400000, DATA_GFN)
        self.sp(vcpu, Kind.SP_GET, L3_GFN, 3, created=1, root_count=0, unsync=0)
        self.sp(vcpu, Kind.SP_GET, L2_GFN, 2, created=1, root_count=0, unsync=0)
        self.sp(vcpu, Kind.SP_GET, L1_GFN, 1, created=1, root_count=0, unsync=0)
        self.ev(vcpu, Kind.SPTE_INSTALL, gfn=DATA_GFN, level=1, value=0x123456A25)
        self.run(vcpu)

    def unsync_write(self, vcpu: int) -> None:
        """The guest writes a PTE of the L1 table: make_spte -> mmu_try_to_unsync_pages ->
        kvm_unsync_page (trace kvm_mmu_unsync_page), then the writable SPTE."""
        self.exit_(vcpu)
        self.walk(vcpu, 0x403000, L1_GFN)
        self.sp(vcpu, Kind.SP_UNSYNC, L1_GFN, 1, root_count=0, unsync=0)
        self.ev(vcpu, Kind.SPTE_INSTALL, gfn=L1_GFN, level=1, value=0x123457E67)
        self.run(vcpu)

    def preempt(self, vcpu: int) -> None:
        """KVM_RUN returns (vCPU preempted / exits to user space)."""
        self.exit_(vcpu, reason=30)
        self.ev(vcpu, Kind.USERSPACE_EXIT, value=2)

    def setup(self, *, unsync: bool = True) -> None:
        """vCPU1 builds the path, vCPU0 joins the shared root and (optionally) unsyncs L1."""
        self.vcpu_load(1)
        self.mmu_load(1, created=1)
        self.run(1)
        self.fault_build_path(1)
        self.preempt(1)
        self.vcpu_load(0)
        self.mmu_load(0, created=0)
        self.run(0)
        if unsync:
            self.unsync_write(0)

    def guest_runs_on(self, vcpu: int) -> None:
        """After the flush: the guest runs and touches memory again (a fault on a data page)."""
        self.run(vcpu)
        self.exit_(vcpu)
        self.walk(vcpu, 0x400000, DATA_GFN + 1)
        self.ev(vcpu, Kind.SPTE_INSTALL, gfn=DATA_GFN + 1, level=1, value=0x123458A25)
        self.run(vcpu)


# ----------------------------------------------------------------------------- flushes

def flush_v5_10(b: TraceBuilder) -> None:
    """v5.10 arch/x86/kvm/x86.c kvm_vcpu_flush_tlb_guest():
        ++vcpu->stat.tlb_flush;
        kvm_x86_ops.tlb_flush_guest(vcpu);          (vmx_flush_tlb_guest)
    No shadow sync at all: the L1 SP stays unsync while vCPU1 runs on."""
    b.vcpu_load(1, need_flush=1)
    b.fn(1, Kind.FLUSH_GUEST_ENTRY)
    b.fn(1, Kind.HW_FLUSH)
    b.fn(1, Kind.FLUSH_GUEST_RETURN)
    b.run(1)


def flush_v5_13(b: TraceBuilder) -> None:
    """v5.13 kvm_vcpu_flush_tlb_guest() ("KVM: X86: fix tlb_flush_guest()", lore
    20210531172256.2908-1-jiangshanlai@gmail.com):
        if (!tdp_enabled) { kvm_mmu_unload(vcpu); return; }
    then vcpu_enter_guest -> kvm_mmu_reload -> kvm_mmu_load -> mmu_alloc_root (get_page of
    the still-hashed root: "existing") -> kvm_mmu_sync_roots -> sync_page(L1) -> entry."""
    b.vcpu_load(1, need_flush=1)
    b.fn(1, Kind.FLUSH_GUEST_ENTRY)
    b.fn(1, Kind.MMU_UNLOAD)
    b.fn(1, Kind.FLUSH_GUEST_RETURN)
    b.mmu_load(1, created=0, synced=((L1_GFN, 1),))
    b.run(1)


def flush_v5_16(b: TraceBuilder) -> None:
    """v5.16 kvm_vcpu_flush_tlb_guest() (commit 61b05a9fd4ae "KVM: X86: Don't unload MMU in
    kvm_vcpu_flush_tlb_guest()"):
        if (!tdp_enabled) { kvm_mmu_sync_roots(vcpu); kvm_mmu_sync_prev_roots(vcpu); }
        static_call(kvm_x86_tlb_flush_guest)(vcpu);
    kvm_mmu_sync_roots -> mmu_sync_children -> kvm_sync_page -> trace_kvm_mmu_sync_page."""
    b.vcpu_load(1, need_flush=1)
    b.fn(1, Kind.FLUSH_GUEST_ENTRY)
    b.fn(1, Kind.SYNC_ROOTS)
    b.sp(1, Kind.SP_SYNC, L1_GFN, 1, unsync=1)
    b.fn(1, Kind.SYNC_PREV_ROOTS)
    b.fn(1, Kind.HW_FLUSH)
    b.fn(1, Kind.FLUSH_GUEST_RETURN)
    b.run(1)


def flush_v6_1_inlined(b: TraceBuilder) -> None:
    """v6.1 (Debian 12), same code as 5.16 but kvm_vcpu_flush_tlb_guest() and
    record_steal_time() are inlined into vcpu_enter_guest: no entry/return probe, only the
    callees kvm_mmu_sync_roots / kvm_mmu_sync_prev_roots / vmx_flush_tlb_guest."""
    b.vcpu_load(1, need_flush=1)
    b.fn(1, Kind.SYNC_ROOTS)
    b.sp(1, Kind.SP_SYNC, L1_GFN, 1, unsync=1)
    b.fn(1, Kind.SYNC_PREV_ROOTS)
    b.fn(1, Kind.HW_FLUSH)
    b.run(1)


def flush_v6_1_request(b: TraceBuilder) -> None:
    """v6.1 KVM_REQ_TLB_FLUSH_GUEST (e.g. emulated INVPCID all-context) with no PV event:
    vcpu_enter_guest -> kvm_service_local_tlb_flush_requests() ->
    kvm_check_request(KVM_REQ_TLB_FLUSH_GUEST) -> kvm_vcpu_flush_tlb_guest() (inlined).
    A second service call for KVM_REQ_TLB_FLUSH_CURRENT only (no guest flush, no sync) must
    not count as a flush window."""
    b.fn(1, Kind.FLUSH_SERVICE)
    b.fn(1, Kind.SYNC_ROOTS)
    b.sp(1, Kind.SP_SYNC, L1_GFN, 1, unsync=1)
    b.fn(1, Kind.SYNC_PREV_ROOTS)
    b.fn(1, Kind.HW_FLUSH)
    b.run(1)
    b.exit_(1)
    b.fn(1, Kind.FLUSH_SERVICE)         # KVM_REQ_TLB_FLUSH_CURRENT: vmx_flush_tlb_current
    b.run(1)


def flush_tracepoints_sync(b: TraceBuilder) -> None:
    """Tracepoints only, a 5.16+ host (as the lab capture on 6.18 PVM): the sync shows as
    kvm_mmu_sync_page between kvm_pv_tlb_flush and the next guest run."""
    b.vcpu_load(1, need_flush=1)
    b.sp(1, Kind.SP_SYNC, L1_GFN, 1, unsync=1)
    b.guest_runs_on(1)


def flush_tracepoints_reload(b: TraceBuilder) -> None:
    """Tracepoints only, a 5.13-5.15 host: the unload is invisible, the reload shows as a
    root kvm_mmu_get_page ("existing") followed by kvm_mmu_sync_page."""
    b.vcpu_load(1, need_flush=1)
    b.mmu_load(1, created=0, synced=((L1_GFN, 1),))
    b.guest_runs_on(1)


def flush_tracepoints_none(b: TraceBuilder) -> None:
    """Tracepoints only, a pre-5.13 host: nothing between the flush and the guest running."""
    b.vcpu_load(1, need_flush=1)
    b.guest_runs_on(1)


def flush_tracepoints_lost(b: TraceBuilder) -> None:
    """The collector dropped records while the window was open."""
    b.vcpu_load(1, need_flush=1)
    b.lost(17)
    b.guest_runs_on(1)


def flush_tracepoints_open(b: TraceBuilder) -> None:
    """The trace ends before vCPU1 runs guest code again."""
    b.vcpu_load(1, need_flush=1)


# ----------------------------------------------------------------------------- scenarios

@dataclass
class Scenario:
    name: str
    kernel: str
    doc: str
    flush: Callable[[TraceBuilder], None]
    functions: bool
    kernel_entry: bool = True
    backend: str = "kvm_intel"
    unsync: bool = True
    start_late: bool = False          # trace starts after the shadow path was built
    expected: dict = field(default_factory=dict)

    def build(self) -> tuple[list[dict], TraceMeta]:
        b = TraceBuilder(kernel_entry=self.kernel_entry, functions=self.functions)
        if self.start_late:
            # Only the unsync write and the flush are in the trace: no root, no links.
            b.vcpu_load(0)
            b.run(0)
            b.unsync_write(0)
        else:
            b.setup(unsync=self.unsync)
        b.preempt(0)
        self.flush(b)
        probes = list(TRACEPOINTS if self.kernel_entry else PVM_TRACEPOINTS)
        if self.functions:
            probes += [f"kprobe:{f}" for f in _probed_functions(b.rows)]
        meta = TraceMeta(source="generated", source_format="kvmtrace-generator",
                         source_path=f"analysis/generations.py:{self.name}",
                         kernel_release=self.kernel, kvm_backend=self.backend, tdp=False,
                         clock="boot", start_time_ns=b.rows[0]["ts"], probes=probes,
                         notes=[self.doc])
        return b.rows, meta


_FUNCTION_NAMES = {Kind.FLUSH_GUEST_ENTRY: "kvm_vcpu_flush_tlb_guest",
                   Kind.FLUSH_GUEST_RETURN: "kvm_vcpu_flush_tlb_guest",
                   Kind.FLUSH_SERVICE: "kvm_service_local_tlb_flush_requests",
                   Kind.HW_FLUSH: "vmx_flush_tlb_guest", Kind.MMU_UNLOAD: "kvm_mmu_unload",
                   Kind.MMU_LOAD_ENTRY: "kvm_mmu_load", Kind.MMU_LOAD_RETURN: "kvm_mmu_load",
                   Kind.SYNC_ROOTS: "kvm_mmu_sync_roots",
                   Kind.SYNC_PREV_ROOTS: "kvm_mmu_sync_prev_roots"}


def _probed_functions(rows: list[dict]) -> list[str]:
    names = {_FUNCTION_NAMES[Kind(r["kind"])] for r in rows if Kind(r["kind"]) in _FUNCTION_NAMES}
    return sorted(names | {"kvm_mmu_load", "kvm_mmu_unload", "kvm_mmu_sync_roots"})


def _windows(total=1, meaningful=1, ok=0, violation=0, suspect=0, inconclusive=0, open_=0):
    return {"total": total, "meaningful": meaningful, "ok": ok, "violation": violation,
            "suspect": suspect, "inconclusive": inconclusive, "open": open_}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("fn-5.10-hardware-flush-only", "5.10.209", "pre-5.13 (5.10.y): vendor flush only",
             flush_v5_10, functions=True,
             expected={"verdict": "violation", "pattern": "hardware-flush-only", "exit": 1,
                       "windows": _windows(violation=1), "outstanding_gfns": [L1_GFN]}),
    Scenario("fn-5.10-harmless", "5.10.209",
             "pre-5.13 with nothing unsync: still a violation (harmless this time)",
             flush_v5_10, functions=True, unsync=False,
             expected={"verdict": "violation", "pattern": "hardware-flush-only", "exit": 1,
                       "windows": _windows(meaningful=0, violation=1), "harmless": True}),
    Scenario("fn-5.13-unload-reload", "5.13.19", "5.13-5.15: kvm_mmu_unload, reload syncs",
             flush_v5_13, functions=True,
             expected={"verdict": "ok", "pattern": "unload-reload", "exit": 0,
                       "windows": _windows(ok=1)}),
    Scenario("fn-5.16-sync-in-place", "5.16.20", "5.16+: sync_roots + sync_prev_roots",
             flush_v5_16, functions=True,
             expected={"verdict": "ok", "pattern": "sync-in-place", "exit": 0,
                       "windows": _windows(ok=1)}),
    Scenario("fn-6.1-inlined", "6.1.0-18-amd64",
             "6.1 with kvm_vcpu_flush_tlb_guest inlined: only its callees are probed",
             flush_v6_1_inlined, functions=True,
             expected={"verdict": "ok", "pattern": "sync-in-place", "exit": 0,
                       "windows": _windows(ok=1)}),
    Scenario("fn-6.1-request", "6.1.0-18-amd64",
             "6.1 KVM_REQ_TLB_FLUSH_GUEST via kvm_service_local_tlb_flush_requests",
             flush_v6_1_request, functions=True,
             expected={"verdict": "ok", "pattern": "sync-in-place", "exit": 0,
                       "windows": _windows(ok=1)}),
    Scenario("tp-sync-in-place", "6.18.44-fc", "tracepoints only, PVM host, 5.16+ code",
             flush_tracepoints_sync, functions=False, kernel_entry=False, backend="kvm_pvm",
             expected={"verdict": "ok", "pattern": "sync-in-place", "exit": 0,
                       "windows": _windows(ok=1)}),
    Scenario("tp-unload-reload", "5.15.0-generated", "tracepoints only, 5.13-5.15 code",
             flush_tracepoints_reload, functions=False,
             expected={"verdict": "ok", "pattern": "unload-reload", "exit": 0,
                       "windows": _windows(ok=1)}),
    Scenario("tp-violation", "5.10.209", "tracepoints only, pre-5.13 code, reachability known",
             flush_tracepoints_none, functions=False,
             expected={"verdict": "violation", "pattern": "hardware-flush-only", "exit": 1,
                       "windows": _windows(violation=1), "outstanding_gfns": [L1_GFN]}),
    Scenario("tp-suspect", "5.10.209",
             "tracepoints only, trace started after the shadow path was built: reachability "
             "of the unsync SP from vCPU1's root is unknown",
             flush_tracepoints_none, functions=False, start_late=True,
             expected={"verdict": "suspect", "pattern": "unknown", "exit": 3,
                       "windows": _windows(suspect=1)}),
    Scenario("tp-lost", "5.10.209", "tracepoints only, events lost inside the window",
             flush_tracepoints_lost, functions=False,
             expected={"verdict": "inconclusive", "pattern": "unknown", "exit": 3,
                       "windows": _windows(inconclusive=1)}),
    Scenario("tp-open", "6.18.44-fc", "tracepoints only, the trace ends inside the window",
             flush_tracepoints_open, functions=False, kernel_entry=False, backend="kvm_pvm",
             expected={"verdict": "inconclusive", "pattern": "unknown", "exit": 3,
                       "windows": _windows(open_=1)}),
    Scenario("tp-nothing-unsync", "6.18.44-fc",
             "tracepoints only, nothing unsync at the flush: ok but not meaningful",
             flush_tracepoints_none,
             functions=False, kernel_entry=False, backend="kvm_pvm", unsync=False,
             expected={"verdict": "ok", "pattern": "unknown", "exit": 0,
                       "windows": _windows(meaningful=0, ok=1)}),
)


def generate(out_dir: str | Path) -> list[Path]:
    """Write every scenario as NAME.jsonl plus expected.json into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    expected = {}
    for sc in SCENARIOS:
        rows, meta = sc.build()
        path = out / f"{sc.name}.jsonl"
        write_trace(path, from_rows(rows), meta)
        written.append(path)
        expected[path.name] = {"kernel": sc.kernel, "description": sc.doc, **sc.expected}
    exp = out / "expected.json"
    exp.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    written.append(exp)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 -m kvmtrace.analysis.generations OUT_DIR", file=sys.stderr)
        return 2
    for path in generate(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
