"""One vCPU as the trace sees it through its host thread.

KVM runs a vCPU (``struct kvm_vcpu``) on whichever thread calls ``KVM_RUN`` on its fd; VMMs
keep one thread per vCPU (QEMU names it ``CPU n/KVM``).  The kvmmmu tracepoints carry no
vCPU id, so the replay keys vCPU state by thread and learns the vCPU id from events that
carry one (``kvm_pv_tlb_flush``'s ``vcpu_id``, ``kvm_entry``), or from a QEMU-style name.

State kept per vCPU:
- ``root``: the SP key of ``vcpu->arch.mmu->root`` as last seen (a root-level
  ``kvm_mmu_get_page`` on this thread: mmu_alloc_shadow_roots -> mmu_alloc_root), or None
  when unknown / unloaded (``kvm_mmu_unload`` frees ``root`` and ``prev_roots``).
- ``path``: this thread's latest SP per level, which is how a fault's ``get_page`` chain
  (FNAME(fetch) -> kvm_mmu_get_child_sp) gives parent->child links.
- ``window``: the open flush window, if a guest TLB flush is being serviced.
- ``snap``: the latest snapshot of ``vcpu->arch.mmu``'s roots read by the exact probes.

``root`` is None (unknown) at trace start and after anything that can switch the root
without a kvmmmu event (replay.py ``_forget_root``); only a root-level get_page on this
thread or a ROOT_STATE slot 0 sets it again.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from kvmtrace.analysis.exact import Snapshot
from kvmtrace.analysis.shadow import SPKey
from kvmtrace.analysis.window import FlushWindow

_QEMU_VCPU_COMM = re.compile(r"^CPU (\d+)/KVM$")

# Flush-path function events seen since this thread's last guest-run evidence.  A window
# opened by a mid-path event (the vendor flush) inherits them: on 5.16+ the syncs come
# before the vendor flush inside kvm_vcpu_flush_tlb_guest().
SINCE_SYNC_ROOTS = 1
SINCE_UNLOAD = 2


def vcpu_from_comm(comm: str) -> int:
    m = _QEMU_VCPU_COMM.match(comm or "")
    return int(m.group(1)) if m else -1


@dataclass
class VcpuState:
    tgid: int
    tid: int
    vcpu: int = -1
    comm: str = ""
    root: Optional[SPKey] = None
    root_level: int = 0
    path: dict = field(default_factory=dict)          # level -> SPKey
    window: Optional[FlushWindow] = None
    since_run: int = 0                                # SINCE_* flags
    recent: deque = field(default_factory=lambda: deque(maxlen=4))
    # Replay sequence of the last event that re-established what the model knows of this
    # vCPU's shadow state after losses (kvm_mmu_sync_roots, a root reload in kvm_mmu_load,
    # an exact root snapshot): a loss on the VM with a later sequence taints it.
    clean_seq: int = 0
    # Replayer.tick of this thread's latest flush-path / shadow-page / root-switch event,
    # and its latest ROOT_STATE snapshot (exact.py decides when one counts for a window).
    state_tick: int = 0
    snap: Optional[Snapshot] = None

    def learn_vcpu(self, vcpu: int) -> bool:
        """Record the vCPU id; False when it contradicts what was already learnt."""
        if vcpu < 0:
            return True
        if self.vcpu < 0:
            self.vcpu = vcpu
            return True
        return self.vcpu == vcpu

    def learn_comm(self, comm: str) -> None:
        if comm and not self.comm:
            self.comm = comm
            if self.vcpu < 0:
                self.vcpu = vcpu_from_comm(comm)

    def set_root(self, key: SPKey, level: int) -> None:
        self.root = key
        self.root_level = level
        self.path = {level: key}

    def drop_root(self) -> None:
        self.root = None
        self.root_level = 0
        self.path = {}
