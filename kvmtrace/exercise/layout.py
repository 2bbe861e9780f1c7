"""Guest-physical memory layout and the guest's x86-64 4-level page tables.

Everything is identity-mapped (GVA == GPA) with 4 KiB pages.  Memory is a *system* region
(guest code, steal-time areas, VIF pages, per-vCPU control blocks and all page tables)
followed by a *test window* of ``tables`` 2 MiB regions, each mapped by its own last-level
page table (PT).  Every vCPU has its own PML4/PDPT/PD and its own copy of the window's PTs,
so a PTE rewrite in vCPU v's tables makes a shadow page of v's root unsync, and the flush
KVM then services on v has something to sync (docs/design.md §4: a *meaningful* window).  The
system region's PTs are shared.

With ``address_spaces`` N > 1 every vCPU has N page-table trees (PML4/PDPT/PD each) that
it switches between with CR3 loads.  Window table t is *shared* by all N trees of a vCPU
when t is even (one PT page under N page directories: its shadow page has N parents) and
copied per tree when t is odd; a remap rewrites the PTE in every copy, so all trees map
the same frames and the stale-read check holds whichever tree a reader runs on.

In window region t the *pair* k is two adjacent frames A = base + 2k*4K and B = A + 4K.
The virtual address VA = A maps to A (identity) or, after the writer rewrites PTE 2k, to B.

Paging entries (Intel SDM vol. 3A §4.5): bit 0 P, 1 R/W, 2 U/S, 5 A, 6 D; bits 51:12 the
frame.  Accessed/Dirty are preset so KVM's guest-walker never writes A/D bits back into the
tables (arch/x86/kvm/mmu/paging_tmpl.h, ``update_accessed_dirty_bits``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

PAGE = 4096
LARGE = 2 << 20                  # what one last-level table maps
ENTRIES = 512
PAIRS_PER_TABLE = 4              # few pairs, so pairs flip A->B->A across rounds

P, RW, US, ACCESSED, DIRTY = 1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 6
FRAME_MASK = 0x000F_FFFF_FFFF_F000

CTL_SIZE = 2 * PAGE              # per-vCPU control block (see guestcode.py for its layout)
CODE_GPA = 0x1000
STEAL_GPA = 0x2000               # one page of 64-byte struct kvm_steal_time slots
VIF_GPA = 0x3000                 # one page per vCPU from here
MAX_VCPUS = PAGE // 64           # one 64-byte struct kvm_steal_time each in the STEAL_GPA page


def table_entry(next_gpa: int, user: bool) -> int:
    """A non-leaf entry (PML4E/PDPTE/PDE) pointing at the next table."""
    return (next_gpa & FRAME_MASK) | P | RW | ACCESSED | (US if user else 0)


def leaf_entry(frame_gpa: int, user: bool) -> int:
    """A last-level PTE mapping a 4 KiB frame."""
    return (frame_gpa & FRAME_MASK) | P | RW | ACCESSED | DIRTY | (US if user else 0)


@dataclass(frozen=True)
class AddressSpace:
    """One vCPU's page tables: its CR3 (the PML4) and the window's last-level tables."""

    pml4: int
    pdpt: int
    pd: int
    window_pts: tuple[int, ...]


MAX_ADDRESS_SPACES = 16


def shared_table(table: int, address_spaces: int) -> bool:
    """Is window table ``table`` one page shared by all of a vCPU's trees?"""
    return address_spaces > 1 and table % 2 == 0


def _vcpu_pages(tables: int, n: int) -> int:
    shared = sum(1 for t in range(tables) if shared_table(t, n))
    return n * 3 + shared + n * (tables - shared)


@dataclass(frozen=True)
class Layout:
    vcpus: int
    tables: int                  # last-level tables in the test window, per address space
    sys_pts: int                 # shared last-level tables mapping the system region
    ctl_base: int
    trees: tuple[tuple[AddressSpace, ...], ...]   # [vcpu][tree]
    window_base: int             # = size of the system region, 2 MiB aligned

    @property
    def spaces(self) -> tuple[AddressSpace, ...]:
        """Each vCPU's first tree (the one it starts on)."""
        return tuple(t[0] for t in self.trees)

    @property
    def address_spaces(self) -> int:
        return len(self.trees[0])

    @staticmethod
    def build(vcpus: int, tables: int, address_spaces: int = 1) -> "Layout":
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError(f"vcpus must be 1..{MAX_VCPUS}")
        if not 1 <= tables:
            raise ValueError("tables must be >= 1")
        if not 1 <= address_spaces <= MAX_ADDRESS_SPACES:
            raise ValueError(f"address spaces must be 1..{MAX_ADDRESS_SPACES}")
        ctl_base = VIF_GPA + vcpus * PAGE
        tables_base = ctl_base + vcpus * CTL_SIZE
        per_vcpu = _vcpu_pages(tables, address_spaces) * PAGE
        sys_pts = 1
        while True:                                   # the system PTs live in the region they map
            sys_end = tables_base + sys_pts * PAGE + vcpus * per_vcpu
            need = -(-sys_end // LARGE)
            if need <= sys_pts:
                break
            sys_pts = need
        if sys_pts + tables > ENTRIES:
            raise ValueError("layout does not fit in the 1 GiB one page directory maps")
        trees = []
        base = tables_base + sys_pts * PAGE
        for v in range(vcpus):
            pages = iter(range(base + v * per_vcpu, base + (v + 1) * per_vcpu, PAGE))
            shared = {t: next(pages) for t in range(tables) if shared_table(t, address_spaces)}
            mine = []
            for _ in range(address_spaces):
                pml4, pdpt, pd = next(pages), next(pages), next(pages)
                pts = tuple(shared[t] if t in shared else next(pages) for t in range(tables))
                mine.append(AddressSpace(pml4, pdpt, pd, pts))
            trees.append(tuple(mine))
        return Layout(vcpus, tables, sys_pts, ctl_base, tuple(trees), sys_pts * LARGE)

    # -- addresses -------------------------------------------------------------------
    @property
    def sys_pt_base(self) -> int:
        return self.ctl_base + self.vcpus * CTL_SIZE

    @property
    def memory_size(self) -> int:
        return self.window_base + self.tables * LARGE

    def steal_time(self, vcpu: int) -> int:
        return STEAL_GPA + 64 * vcpu

    def vif(self, vcpu: int) -> int:
        return VIF_GPA + PAGE * vcpu

    def ctl(self, vcpu: int) -> int:
        return self.ctl_base + CTL_SIZE * vcpu

    def frame(self, table: int, pair: int, which: int) -> int:
        """GPA of frame A (which=0) or B (which=1) of ``pair`` in window region ``table``."""
        return self.window_base + table * LARGE + (2 * pair + which) * PAGE

    def va(self, table: int, pair: int) -> int:
        """The virtual address the pair is read through (identity-mapped to frame A)."""
        return self.frame(table, pair, 0)

    def pte_address(self, vcpu: int, table: int, pair: int) -> int:
        """GPA (== GVA) of the PTE that maps ``va(table, pair)`` in vCPU v's first tree."""
        return self.spaces[vcpu].window_pts[table] + 8 * (2 * pair)

    def pte_addresses(self, vcpu: int, table: int, pair: int) -> tuple[int, ...]:
        """That PTE in every distinct copy of the table among vCPU v's trees."""
        pts = dict.fromkeys(space.window_pts[table] for space in self.trees[vcpu])
        return tuple(pt + 8 * (2 * pair) for pt in pts)

    # -- page tables -----------------------------------------------------------------
    def page_table_pages(self, user: bool) -> Iterator[tuple[int, list[int]]]:
        """Every paging-structure page as (GPA, its 512 entries); absent entries are 0."""
        sys_pts = [self.sys_pt_base + j * PAGE for j in range(self.sys_pts)]
        for j, pt in enumerate(sys_pts):                   # shared system PTs, identity
            base = j * LARGE
            yield pt, [leaf_entry(base + i * PAGE, user) if base + i else 0 for i in range(ENTRIES)]
        written: set[int] = set()
        for space in (s for tree in self.trees for s in tree):
            yield space.pml4, [table_entry(space.pdpt, user)] + [0] * (ENTRIES - 1)
            yield space.pdpt, [table_entry(space.pd, user)] + [0] * (ENTRIES - 1)
            pd = [table_entry(pt, user) for pt in sys_pts + list(space.window_pts)]
            yield space.pd, pd + [0] * (ENTRIES - len(pd))
            for t, pt in enumerate(space.window_pts):
                if pt in written:                      # a table shared between trees
                    continue
                written.add(pt)
                region = self.window_base + t * LARGE
                yield pt, [leaf_entry(region + i * PAGE, user) for i in range(ENTRIES)]

    def write_page_tables(self, mem, user: bool) -> None:
        """Fill ``mem`` (a writable buffer of the guest's memory) with the page tables."""
        for gpa, entries in self.page_table_pages(user):
            struct.pack_into(f"<{ENTRIES}Q", mem, gpa, *entries)
