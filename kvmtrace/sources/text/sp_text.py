"""Printed forms of a kvmmmu shadow-page event (struct kvm_mmu_page) back into its fields.

The kernel prints ``kvm_mmu_{get,unsync,sync,prepare_zap}_page`` with KVM_MMU_PAGE_PRINTK
(arch/x86/kvm/mmu/mmutrace.h); the format moved over the years:

- 6.x (has_4_byte_gpte, 5.18+):  ``sp gen 0 gfn 4 l1 8-byte q0 wux nxe ad root 0 unsync``
- 5.x (gpte_is_8_bytes):         the same words, ``gen`` printed with %lx before 5.4
- 4.x:                           ``sp gfn 4 l1 8-byte q0 wux nxe ad root 0 sync``
- 3.x:                           ``sp gfn 4 1 pae q0 wux nxe root 0 sync`` (" pae" = 8-byte gptes)
- optional words: `` direct``, `` invalid``, ``!nxe`` (EFER.NX clear), ``!ad`` (A/D bits disabled);
  ``kvm_mmu_get_page`` appends `` new`` or `` existing``.

libtraceevent's kvm plugin (trace-cmd report, perf when the plugin loads) replaces that with
its own printer (plugins/plugin_kvm.c): ``new sp gfn 4 1 q0 wux !pae nxe wp root 0 sync`` for
get_page and, for the other three events, ``1 q0 wux !pae nxe wp root 0 sync`` - with **no
gfn**.  Its role bits are read from the raw word with an old layout whose positions still
match bits 0-15, so they are kept as raw bits.  ``WORD: 00003701`` appears when it cannot
decode the word.

Role word.  The ``role`` column is rebuilt in today's ``union kvm_mmu_page_role`` layout
(schema.ROLE_*): level (0-3), has_4_byte_gpte (4), quadrant (5-6), direct (7), access (8-10),
invalid (11), efer_nx (12), ad_disabled (16).  The kernel's text does not show, and this
decoder therefore leaves 0: cr0_wp (13), smep_andnot_wp (14), smap_andnot_wp (15),
guest_mode (17), passthrough (18) and smm/as_id (24-31).  So the lab's 0x3701 reads back as
0x1701.  The plugin's text shows cr0_wp/smep/smap/smm but not ad_disabled or guest_mode.
Raw-field forms (``trace-cmd report -R``, ``[FAILED TO PARSE] ... role=14081``) carry the
exact word.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from kvmtrace.schema import (ROLE_AD_DISABLED, ROLE_DIRECT, ROLE_EFER_NX, ROLE_HAS_4_BYTE_GPTE,
                      ROLE_INVALID, ROLE_LEVEL_MASK, ROLE_QUADRANT_SHIFT, ROLE_ACCESS_SHIFT,
                      ROLE_CR0_WP, ROLE_SMEP_ANDNOT_WP, ROLE_SMAP_ANDNOT_WP)

# mmutrace.h access_str[]: index = ACC_EXEC_MASK(1) | ACC_WRITE_MASK(2) | ACC_USER_MASK(4).
ACCESS_STR = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")
ACCESS_BITS = {s: i for i, s in enumerate(ACCESS_STR)}
ROLE_SMM_LOW = 1 << 24     # role.smm (as_id) is bits 24-31; text shows only whether it is set

_ACC = r"(?P<acc>[-w][-u][-x])"
_TAIL = r" root (?P<root>\d+) (?P<sync>sync|unsync)"

KERNEL_SP = re.compile(
    r"sp (?:gen \w+ )?gfn (?P<gfn>[0-9a-f]+) l?(?P<level>\d+)"
    r"(?: (?P<gpte>[48])-byte| (?P<pae>pae))? q(?P<q>\d)(?P<direct> direct)? " + _ACC +
    r"(?P<invalid> invalid)? (?P<nxe>!?)nxe(?: (?P<ad>!?)ad)?" + _TAIL +
    r"(?: (?P<created>new|existing))?\s*$", re.A)

PLUGIN_SP = re.compile(
    r"(?:(?P<created>new|existing) sp gfn (?P<gfn>[0-9a-f]+) )?"
    r"(?:(?P<level>\d+) q(?P<q>\d)(?P<direct> direct)? " + _ACC + r"(?P<invalid> invalid)?"
    r" (?P<pae>!?)pae (?P<nxe>!?)nxe (?P<wp>!?)wp(?P<smep> smep)?(?P<smap> smap)?(?P<smm> smm)?"
    r"|WORD: (?P<word>[0-9a-f]+))" + _TAIL + r"\s*$", re.A)


# The kvm plugin of trace-cmd 1.x/2.x (and perf of that time) printed the 2.6.3x role union
# (level:4, glevels:4, quadrant:2, ..., direct, access:3, invalid, cr4_pge, nxe):
# "%u/%u q%u%s %s%s %spge %snxe" = level/glevels, then " root %u %s"; kvm_mmu_get_page is
# prefixed with "new|existing sp gfn %llx ".  glevels 2 is a 32-bit guest (4-byte gptes);
# cr4_pge has no place in today's role and is dropped.
OLD_PLUGIN_SP = re.compile(
    r"(?:(?P<created>new|existing) sp gfn (?P<gfn>[0-9a-f]{1,16}) )?"
    r"(?P<level>\d{1,2})/(?P<glevels>\d{1,2}) q(?P<q>\d)(?P<direct> direct)? " + _ACC +
    r"(?P<invalid> invalid)? (?P<pge>!?)pge (?P<nxe>!?)nxe" + _TAIL + r"\s*$", re.A)


class SpFields(NamedTuple):
    gfn: int          # -1 when the printed form omits it (libtraceevent kvm plugin)
    role: int
    level: int
    root_count: int
    unsync: int
    created: int      # -1 unless kvm_mmu_get_page
    plugin: bool      # printed by libtraceevent's kvm plugin


def _kernel_role(m: re.Match) -> int:
    level = int(m.group("level"))
    if m.group("gpte"):
        four_byte = m.group("gpte") == "4"
    else:
        # Before "%u-byte" (4.x/3.x) " pae" meant 8-byte gptes; its absence meant 4-byte.
        four_byte = m.group("pae") is None
    role = level
    role |= ROLE_HAS_4_BYTE_GPTE if four_byte else 0
    role |= int(m.group("q")) << ROLE_QUADRANT_SHIFT
    role |= ROLE_DIRECT if m.group("direct") else 0
    role |= ACCESS_BITS[m.group("acc")] << ROLE_ACCESS_SHIFT
    role |= ROLE_INVALID if m.group("invalid") else 0
    role |= ROLE_EFER_NX if not m.group("nxe") else 0
    role |= ROLE_AD_DISABLED if m.group("ad") else 0
    return role


def _plugin_role(m: re.Match) -> int:
    if m.group("word"):
        return int(m.group("word"), 16) & 0xFFFFFFFF
    role = int(m.group("level"))
    role |= ROLE_HAS_4_BYTE_GPTE if not m.group("pae") else 0    # raw bit 4, as printed
    role |= int(m.group("q")) << ROLE_QUADRANT_SHIFT
    role |= ROLE_DIRECT if m.group("direct") else 0
    role |= ACCESS_BITS[m.group("acc")] << ROLE_ACCESS_SHIFT
    role |= ROLE_INVALID if m.group("invalid") else 0
    role |= ROLE_EFER_NX if not m.group("nxe") else 0
    role |= ROLE_CR0_WP if not m.group("wp") else 0
    role |= ROLE_SMEP_ANDNOT_WP if m.group("smep") else 0
    role |= ROLE_SMAP_ANDNOT_WP if m.group("smap") else 0
    role |= ROLE_SMM_LOW if m.group("smm") else 0
    return role


def _old_plugin_role(m: re.Match) -> int:
    role = int(m.group("level"))
    role |= ROLE_HAS_4_BYTE_GPTE if m.group("glevels") == "2" else 0
    role |= int(m.group("q")) << ROLE_QUADRANT_SHIFT
    role |= ROLE_DIRECT if m.group("direct") else 0
    role |= ACCESS_BITS[m.group("acc")] << ROLE_ACCESS_SHIFT
    role |= ROLE_INVALID if m.group("invalid") else 0
    role |= ROLE_EFER_NX if not m.group("nxe") else 0
    return role


def _created(m: re.Match) -> int:
    c = m.group("created")
    return -1 if c is None else int(c == "new")


def parse_sp(body: str) -> SpFields | None:
    """Decode a printed SP event body; None when it is in none of the known forms."""
    m = KERNEL_SP.match(body)
    if m is not None:
        role = _kernel_role(m)
        return SpFields(int(m.group("gfn"), 16), role, role & ROLE_LEVEL_MASK,
                        int(m.group("root")), int(m.group("sync") == "unsync"), _created(m), False)
    m = PLUGIN_SP.match(body)
    if m is not None:
        role = _plugin_role(m)
        gfn = int(m.group("gfn"), 16) if m.group("gfn") else -1
        return SpFields(gfn, role, role & ROLE_LEVEL_MASK, int(m.group("root")),
                        int(m.group("sync") == "unsync"), _created(m), True)
    m = OLD_PLUGIN_SP.match(body)
    if m is not None:
        role = _old_plugin_role(m)
        gfn = int(m.group("gfn"), 16) if m.group("gfn") else -1
        return SpFields(gfn, role, role & ROLE_LEVEL_MASK, int(m.group("root")),
                        int(m.group("sync") == "unsync"), _created(m), True)
    return None
