"""What a trace shows of one VM's shadow MMU: its shadow pages, which are unsync, and links.

KVM keeps one ``struct kvm_mmu_page`` (a shadow page, SP) per guest page table it shadows,
hashed VM-wide by ``(gfn, union kvm_mmu_page_role)`` (arch/x86/kvm/mmu/mmu.c,
kvm_mmu_find_shadow_page / kvm_mmu_get_page before 6.0).  The kvmmmu tracepoints print that
pair, so ``(gfn, role)`` is the SP's identity here.  ``role`` includes the ``invalid`` bit:
a root zapped while in use stays alive as an invalid page with a different key, exactly as
``kvm_mmu_get_page`` skips it and builds a fresh one.

An SP goes **unsync** (``kvm_mmu_unsync_page``, mmu_try_to_unsync_pages) when KVM lets the
guest write a last-level page table without write-protecting it; it is synced again by
``kvm_sync_page`` (``kvm_mmu_sync_page``), which also fires when an unsync SP is zapped
(kvm_mmu_prepare_zap_page -> kvm_unlink_unsync_page in 5.x-6.x).

Links: a shadow PTE in a parent SP points at a child SP (``sp->parent_ptes`` is the reverse
map).  Tracepoints never print a link; the replay infers them (see replay.py) and records
them here.  ``reachable()`` answers the question that decides a verdict: is this unsync SP
reachable from that vCPU's root (``vcpu->arch.mmu->root``) through links we know of?
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

from kvmtrace.schema import ROLE_DIRECT, ROLE_LEVEL_MASK

SPKey = tuple[int, int]          # (gfn, role)

# Level bits and the bits that legitimately differ between a parent SP and its child in
# the same shadow walk (level; quadrant for 4-byte guest PTEs; access, which is the
# accumulated guest permission of the path).  Everything else of the role is the MMU mode
# (cr0_wp, efer_nx, smep/smap, ad_disabled, guest_mode ...) and is shared along a walk.
_FAMILY_MASK = ~(ROLE_LEVEL_MASK | (0x3 << 5) | (0x7 << 8))


def role_family(role: int) -> int:
    return role & _FAMILY_MASK


@dataclass
class ShadowPage:
    """One ``struct kvm_mmu_page`` as far as the trace has shown it."""

    gfn: int
    role: int
    level: int
    created_in_trace: bool = False       # its creating get_page ("new") is in the trace
    parents: set = field(default_factory=set)
    children: set = field(default_factory=set)

    @property
    def key(self) -> SPKey:
        return (self.gfn, self.role)

    @property
    def direct(self) -> bool:
        return bool(self.role & ROLE_DIRECT)


@dataclass
class UnsyncRecord:
    """When and where an SP went unsync (``kvm_mmu_unsync_page``)."""

    seq: int          # replay-wide sequence number: orders unsync against window opens
    ts: int
    tid: int
    # SPs under this key that went unsync and were not synced since.  More than one means
    # SPs that print alike (KVM_MMU_PAGE_PRINTK omits cr0_wp, smep/smap_andnot_wp,
    # guest_mode, smm, passthrough): mmu_try_to_unsync_pages() unsyncs every SP shadowing
    # the written gfn, and kvm_unsync_page() fires only for an SP not yet unsync.
    count: int = 1
    ambiguous: bool = False   # had count > 1: the printed key stands for several SPs
    # A sync took one of several SPs under this key: which one is left unsync is unknown,
    # so a link to the key no longer proves the one left is reachable.  While no sync took
    # any of them, every SP that went unsync under the key still is, whichever a link is
    # of (also when a trace repeats an unsync line).
    partial: bool = False
    last_seq: int = 0         # seq of its latest unsync event


class ShadowMMU:
    """One VM's shadow pages, the set that is unsync, and the known parent->child links."""

    def __init__(self) -> None:
        self.pages: dict[SPKey, ShadowPage] = {}
        # Insertion-ordered by seq: an SP that is synced and goes unsync again is re-inserted
        # at the end, so "unsync since before seq S" is a prefix scan.
        self.unsync: dict[SPKey, UnsyncRecord] = {}
        self.alias_seq = -1          # seq of the latest unsync of a key already unsync
        self._by_gfn_level: dict[tuple[int, int], set] = {}

    # ------------------------------------------------------------------ pages
    def page(self, gfn: int, role: int, level: int, created: bool = False) -> ShadowPage:
        key = (gfn, role)
        sp = self.pages.get(key)
        if sp is None:
            sp = ShadowPage(gfn, role, level if level >= 0 else role & ROLE_LEVEL_MASK,
                            created_in_trace=created)
            self.pages[key] = sp
            self._by_gfn_level.setdefault((gfn, sp.level), set()).add(key)
        elif created:
            # A "new" get_page for a key we hold means the old SP was freed unseen.
            self._unlink_all(sp)
            sp.created_in_trace = True
        return sp

    def find(self, gfn: int, level: int, like_role: int | None = None) -> Optional[ShadowPage]:
        """The SP shadowing guest table ``gfn`` at ``level``, if exactly one fits."""
        keys = self._by_gfn_level.get((gfn, level))
        if not keys:
            return None
        if len(keys) > 1 and like_role is not None:
            fam = role_family(like_role)
            keys = {k for k in keys if role_family(k[1]) == fam}
        if len(keys) != 1:
            return None
        return self.pages[next(iter(keys))]

    def link(self, parent: ShadowPage, child: ShadowPage) -> None:
        if parent is child:
            return
        parent.children.add(child.key)
        child.parents.add(parent.key)

    def unlink(self, parent: ShadowPage, child: ShadowPage) -> None:
        parent.children.discard(child.key)
        child.parents.discard(parent.key)

    def zap(self, key: SPKey) -> bool:
        """kvm_mmu_prepare_zap_page: the SP leaves the hash and its links go.

        Returns whether it was unsync (the kernel then also fires sync_page for it).
        """
        rec = self.unsync.get(key)
        was_unsync = rec is not None
        if rec is not None and rec.count <= 1:
            del self.unsync[key]
        # With SPs that print alike still unsync, the zapped one may not be among them:
        # the kvm_mmu_sync_page that kvm_mmu_prepare_zap_page fires for an unsync SP
        # (kvm_unlink_unsync_page) takes it off instead.
        sp = self.pages.pop(key, None)
        if sp is not None:
            self._unlink_all(sp)
            bucket = self._by_gfn_level.get((sp.gfn, sp.level))
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self._by_gfn_level[(sp.gfn, sp.level)]
        return was_unsync

    def _unlink_all(self, sp: ShadowPage) -> None:
        for ck in sp.children:
            child = self.pages.get(ck)
            if child is not None:
                child.parents.discard(sp.key)
        for pk in sp.parents:
            parent = self.pages.get(pk)
            if parent is not None:
                parent.children.discard(sp.key)
        sp.children.clear()
        sp.parents.clear()

    # ------------------------------------------------------------------ unsync set
    def mark_unsync(self, gfn: int, role: int, level: int, seq: int, ts: int, tid: int,
                    refresh_before: int = 0) -> None:
        """``refresh_before``: a record older than this sequence (a loss came after it, so
        the page may have been synced and gone unsync again unseen) is replaced."""
        self.page(gfn, role, level)
        key = (gfn, role)
        old = self.unsync.get(key)
        if old is not None and old.seq < refresh_before:
            del self.unsync[key]          # re-inserted at the end: the dict stays seq-ordered
            old = None
        if old is None:
            self.unsync[key] = UnsyncRecord(seq, ts, tid, last_seq=seq)
        else:
            # A second unsync_page for a key still unsync: two SPs print alike.
            old.count += 1
            old.ambiguous = True
            old.last_seq = seq
            self.alias_seq = seq

    def mark_sync(self, key: SPKey) -> Optional[UnsyncRecord]:
        """One SP of ``key`` synced: its record (popped when no SP of it is left unsync)."""
        rec = self.unsync.get(key)
        if rec is None:
            return None
        rec.count -= 1
        if rec.count <= 0:
            del self.unsync[key]
        else:
            rec.partial = True
        return rec

    def fresh_since(self, seq: int) -> bool:
        """Did an SP still unsync go unsync at or after ``seq``?"""
        if self.alias_seq >= seq:
            return True
        last = next(reversed(self.unsync.values()), None)
        return last is not None and last.seq >= seq

    def unsync_before(self, seq: int) -> Iterator[tuple[SPKey, UnsyncRecord]]:
        """SPs unsync now that were already unsync before ``seq`` (oldest first)."""
        for key, rec in self.unsync.items():
            if rec.seq >= seq:
                break
            yield key, rec

    # ------------------------------------------------------------------ reachability
    def reachable(self, key: SPKey, root: Optional[SPKey]) -> Optional[bool]:
        """Is SP ``key`` reachable from ``root`` through known links?

        True: a chain of known links leads from root to it.  False: every known path up
        from it ends at another root and every page on those paths was created inside the
        trace (so none of its parent links can predate the trace).  None: unknown.
        """
        if root is None:
            return None
        if key == root:
            return True
        seen = {key}
        stack = [key]
        complete = True
        while stack:
            sp = self.pages.get(stack.pop())
            if sp is None or not sp.created_in_trace:
                complete = False
                if sp is None:
                    continue
            if not sp.parents and sp.level < 4:
                complete = False          # a non-root SP whose parent we never saw
            for pk in sp.parents:
                if pk == root:
                    return True
                if pk not in seen:
                    seen.add(pk)
                    stack.append(pk)
        return False if complete else None
