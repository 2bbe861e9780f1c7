"""Exact evidence: KVM's own root state (``Kind.ROOT_STATE``) read at guest re-entry.

The exact probes read ``vcpu->arch.mmu`` (``struct kvm_mmu``): slot 0 is ``root`` (the root
the vCPU enters with), slots 1..N are ``prev_roots[]`` (the cached roots a later CR3 load may
switch to without any sync: ``kvm_mmu_new_pgd`` -> ``fast_pgd_switch``).  For each the root
SP's ``unsync`` and ``unsync_children`` are what ``kvm_mmu_sync_roots()`` itself tests
(arch/x86/kvm/mmu/mmu.c, ``is_unsync_root``): ``kvm_mmu_mark_parents_unsync()`` sets a bit in
every parent of an SP that goes unsync, up to the root, and ``link_shadow_page()`` does the
same when it links an SP with unsync children.  So a root whose ``unsync_children`` is 0 has
no unsync SP below it, and one whose count is > 0 has one (or had one since its last sync:
the bitmap is cleaned lazily by ``mmu_unsync_walk``, which every sync runs first).

When a snapshot counts for a flush window (``counts_for``):
- it was read on the window's own thread (the vCPU that serviced the flush);
- it was read after the flush was serviced: no flush-path, shadow-page or root-switch event
  of that thread comes after it in the window (those events stamp ``VcpuState.state_tick``),
  so a snapshot taken while ``kvm_mmu_sync_roots()`` was still walking does not count;
- it precedes, or is read with, the evidence that closes the window;
- slot 0 holds a valid root SP (gfn >= 0); a vCPU between ``kvm_mmu_unload`` and
  ``kvm_mmu_load``, or shadowing a PAE guest through ``pae_root``, has none there.

What it decides (``Reading``):
- clean (no slot unsync or with unsync children): **ok**, evidence exact;
- dirty: **violation**, evidence exact, when the dirt can only be an SP that was unsync when
  the window opened - no SP of the VM still unsync went unsync after the window opened (an
  SP another vCPU unsyncs after the flush is legal and also sets the root's bits), and no
  sync or zap ran in the VM between the snapshot and the close;
- dirty otherwise, or a slot the probe could not identify (gfn -1, unsync -1): nothing
  exact; the window falls back to the event-stream decision.

May import: the contract and this package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class RootSlot:
    """One slot of ``vcpu->arch.mmu`` as read: 0 = root, i = prev_roots[i-1]."""

    slot: int
    gfn: int
    role: int
    unsync: int
    unsync_children: int

    @property
    def valid(self) -> bool:
        return self.gfn >= 0

    @property
    def unknown(self) -> bool:
        """A valid root whose SP the probe could not identify (gfn -1, unsync -1)."""
        return self.gfn < 0 and self.unsync < 0

    @property
    def dirty(self) -> bool:
        return self.valid and (self.unsync > 0 or self.unsync_children > 0)

    def to_dict(self) -> dict:
        return {"slot": self.slot, "gfn": self.gfn, "role": self.role,
                "unsync": self.unsync, "unsync_children": self.unsync_children}


@dataclass
class Snapshot:
    """The rows of one ROOT_STATE read (same thread, same ts)."""

    ts: int
    tick: int                          # Replayer.tick when its first row was handled
    slots: dict = field(default_factory=dict)     # slot -> RootSlot

    def add(self, slot: RootSlot) -> None:
        self.slots[slot.slot] = slot

    @property
    def current(self) -> Optional[RootSlot]:
        s = self.slots.get(0)
        return s if s is not None and s.valid else None

    def dirty_slots(self) -> list:
        return [s for _, s in sorted(self.slots.items()) if s.dirty]


def counts_for(snap: Optional[Snapshot], open_tick: int, state_tick: int) -> bool:
    """Does ``snap`` (the thread's latest) count for the window closing now?  See above."""
    return (snap is not None and snap.tick > open_tick and snap.tick > state_tick
            and snap.current is not None)


@dataclass
class Reading:
    """What a counting snapshot says about one window (passed to window.decide)."""

    snapshot: Snapshot
    explained: bool          # dirt can only be SPs unsync since before the window opened

    @property
    def clean(self) -> bool:
        """Nothing unsync under any root slot, and every slot identified."""
        slots = self.snapshot.slots.values()
        return not self.snapshot.dirty_slots() and not any(s.unknown for s in slots)

    @property
    def dirty(self) -> bool:
        return bool(self.snapshot.dirty_slots())

    def describe(self) -> str:
        snap = self.snapshot
        root = snap.current
        prev = sum(1 for s in snap.slots.values() if s.slot > 0 and s.valid)
        head = f"root gfn {root.gfn:#x} role {root.role:#x}" if root else "no root"
        dirty = snap.dirty_slots()
        if not dirty:
            return (f"KVM's own state at re-entry: {head} and {prev} previous root"
                    f"{'' if prev == 1 else 's'}, none unsync and none with unsync children")
        parts = [f"{'root' if s.slot == 0 else f'prev root {s.slot}'} gfn {s.gfn:#x} "
                 f"role {s.role:#x} unsync_children {s.unsync_children}"
                 + (" (unsync)" if s.unsync > 0 else "") for s in dirty]
        return "KVM's own state at re-entry: " + "; ".join(parts)
