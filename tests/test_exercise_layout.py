"""Offline tests of the exercise guest's building blocks: page tables, guest code, CPUID
feature checks, backend detection, the round planner.  They run anywhere."""
from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from kvmtrace.exercise import backend as be
from kvmtrace.exercise import guestcode, kvmabi, paravirt
from kvmtrace.exercise.layout import (ACCESSED, DIRTY, ENTRIES, FRAME_MASK, LARGE, P, PAGE,
                                      PAIRS_PER_TABLE, RW, US, Layout, leaf_entry, table_entry)
from kvmtrace.exercise.protocol import RoundPlanner, tables_for, tag
from kvmtrace.exercise.result import ExerciseConfig


# -- page tables ----------------------------------------------------------------------
def test_pte_words():
    assert leaf_entry(0x5000, user=False) == 0x5000 | P | RW | ACCESSED | DIRTY == 0x5063
    assert leaf_entry(0x5000, user=True) == 0x5067
    assert table_entry(0x3000, user=False) == 0x3023
    assert table_entry(0x3000, user=True) == 0x3027
    assert leaf_entry(0x1234_5678_9FFF, user=False) & FRAME_MASK == 0x1234_5678_9000


def walk(mem: bytearray, cr3: int, va: int) -> tuple[int, list[int]]:
    """A 4-level x86-64 walk of ``va``: (physical address, the four entries)."""
    table, entries = cr3, []
    for shift in (39, 30, 21, 12):
        entry = struct.unpack_from("<Q", mem, table + 8 * (va >> shift & 0x1FF))[0]
        assert entry & P, f"va {va:#x}: not present at shift {shift}"
        entries.append(entry)
        table = entry & FRAME_MASK
    return table | (va & 0xFFF), entries


@pytest.mark.parametrize("user", [True, False])
def test_page_tables_identity_map_and_user_bit_quirk(user):
    lay = Layout.build(vcpus=3, tables=8)
    mem = bytearray(lay.memory_size)
    lay.write_page_tables(mem, user=user)
    for v in range(3):
        cr3 = lay.spaces[v].pml4
        for va in (lay.ctl(v), lay.steal_time(v), lay.vif(v), 0x1000,
                   lay.spaces[v].window_pts[7], lay.va(7, 3), lay.frame(7, 3, 1),
                   lay.window_base + 8 * LARGE - PAGE):
            pa, entries = walk(mem, cr3, va)
            assert pa == va                                   # identity map
            # PVM's quirk: User at every level; otherwise supervisor-only.
            assert all(bool(e & US) == user for e in entries)
            assert all(e & RW for e in entries)
    assert struct.unpack_from("<Q", mem, lay.sys_pt_base)[0] == 0    # page 0 unmapped


def test_each_vcpu_has_its_own_last_level_tables():
    lay = Layout.build(vcpus=4, tables=16)
    pts = [pt for s in lay.spaces for pt in s.window_pts]
    assert len(set(pts)) == 4 * 16
    # the PTE the writer rewrites is in that vCPU's table, slot 2k
    assert lay.pte_address(2, 5, 3) == lay.spaces[2].window_pts[5] + 8 * 6
    # pair frames are adjacent, distinct per table, inside guest memory
    frames = {lay.frame(t, k, w) for t in range(16) for k in range(PAIRS_PER_TABLE) for w in (0, 1)}
    assert len(frames) == 16 * PAIRS_PER_TABLE * 2
    assert max(frames) < lay.memory_size
    # the system region (incl. all tables) fits below the window
    assert max(pts) < lay.window_base


def test_remapped_pte_maps_frame_b():
    lay = Layout.build(vcpus=2, tables=8)
    mem = bytearray(lay.memory_size)
    lay.write_page_tables(mem, user=True)
    struct.pack_into("<Q", mem, lay.pte_address(1, 4, 2), leaf_entry(lay.frame(4, 2, 1), True))
    assert walk(mem, lay.spaces[1].pml4, lay.va(4, 2))[0] == lay.frame(4, 2, 1)
    assert walk(mem, lay.spaces[0].pml4, lay.va(4, 2))[0] == lay.frame(4, 2, 0)


def test_large_layout_grows_the_system_region():
    lay = Layout.build(vcpus=64, tables=128)
    assert lay.sys_pts > 1
    last = lay.spaces[-1].window_pts[-1]
    assert last + PAGE <= lay.window_base
    with pytest.raises(ValueError):
        Layout.build(vcpus=2, tables=ENTRIES)


# -- guest code -----------------------------------------------------------------------
def _instruction_starts() -> list[int]:
    starts, off = [], 0
    for hexbytes, _ in guestcode.INSTRUCTIONS:
        starts.append(off)
        off += len(bytes.fromhex(hexbytes))
    return starts


def test_guest_branches_land_on_instruction_boundaries():
    starts = _instruction_starts()
    code = guestcode.CODE
    branches = 0
    for start, (hexbytes, asm) in zip(starts, guestcode.INSTRUCTIONS):
        op = bytes.fromhex(hexbytes)
        if op[0] in (0xEB, 0xE3, 0x74, 0x75):          # jmp / jrcxz / jz / jne rel8
            target = start + 2 + struct.unpack("b", op[1:2])[0]
            assert target in starts, asm
            branches += 1
    assert branches == 16
    assert code[starts[-2]:starts[-1]] == bytes([0xE6, guestcode.PARK_PORT])    # out PARK_PORT, al
    # the loop closes back to the first instruction (jmp rel32)
    assert code[starts[-1]] == 0xE9
    assert starts[-1] + 5 + struct.unpack("<i", code[-4:])[0] == 0


def test_guest_code_offsets_match_control_block_layout():
    text = " ".join(asm for _, asm in guestcode.INSTRUCTIONS)
    for offset in (guestcode.CTL_STORES, guestcode.CTL_FLAGS, guestcode.CTL_READS,
                   guestcode.CTL_RESULTS, guestcode.CTL_NFLAGS, guestcode.CTL_NREADS,
                   guestcode.CTL_FLUSH_OP, guestcode.CTL_FLUSH_ARGS, guestcode.CTL_FLUSH_RET):
        assert f"rbx+{offset:#04x}" in text
    assert f"out {guestcode.PARK_PORT:#x}" in text
    assert f"byte ptr [rax], {paravirt.KVM_VCPU_FLUSH_TLB}" in text


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None,
                    reason="GNU binutils (as, objcopy) not installed")
def test_guest_bytes_are_what_gnu_as_makes_of_the_source(tmp_path):
    (tmp_path / "g.s").write_text(guestcode.assembly_source())
    subprocess.run(["as", "--64", "-o", str(tmp_path / "g.o"), str(tmp_path / "g.s")], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "g.o"),
                    str(tmp_path / "g.bin")], check=True)
    assert (tmp_path / "g.bin").read_bytes() == guestcode.CODE


# -- KVM ABI and PV features ----------------------------------------------------------
def test_uapi_struct_sizes_and_ioctl_numbers():
    import ctypes as C
    assert C.sizeof(kvmabi.KvmRegs) == 144
    assert C.sizeof(kvmabi.KvmSregs) == 312
    assert C.sizeof(kvmabi.KvmCpuidEntry2) == 40
    assert C.sizeof(kvmabi.KvmUserspaceMemoryRegion) == 32
    # values as the C macros expand on x86-64 (e.g. KVM_RUN = _IO(0xAE, 0x80))
    assert kvmabi.KVM_RUN == 0xAE80
    assert kvmabi.KVM_SET_SREGS == 0x4138AE84
    assert kvmabi.KVM_GET_SUPPORTED_CPUID == 0xC008AE05
    assert kvmabi.KVM_SET_MSRS == 0x4008AE89
    assert kvmabi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46


def test_pv_feature_bits():
    both = 1 << 5 | 1 << 9
    assert paravirt.missing_features(both) == []
    assert paravirt.missing_features(0x1007EFB) == []      # what this PVM host offers
    assert paravirt.missing_features(1 << 5) == ["KVM_FEATURE_PV_TLB_FLUSH"]
    assert paravirt.missing_features(1 << 9) == ["KVM_FEATURE_STEAL_TIME"]
    assert paravirt.missing_features(None) == ["KVM_CPUID_FEATURES leaf"]
    assert paravirt.steal_time_msr_value(0x2040) == 0x2041
    with pytest.raises(ValueError):
        paravirt.steal_time_msr_value(0x2010)


# -- backend detection ----------------------------------------------------------------
def _sysmodule(tmp_path, module, params=None):
    d = tmp_path / module / "parameters"
    d.mkdir(parents=True)
    for k, v in (params or {}).items():
        (d / k).write_text(v + "\n")
    return tmp_path


def test_backend_detection(tmp_path):
    pvm = be.detect_backend(_sysmodule(tmp_path / "a", "kvm_pvm"))
    assert (pvm.vendor, pvm.tdp, pvm.exposed) == ("pvm", False, True)
    assert pvm.quirks.user_bit_everywhere and pvm.quirks.vif_page
    ept = be.detect_backend(_sysmodule(tmp_path / "b", "kvm_intel", {"ept": "Y"}))
    assert (ept.vendor, ept.tdp, ept.exposed) == ("vmx", True, False)
    assert not ept.quirks.user_bit_everywhere and not ept.quirks.vif_page
    shadow = be.detect_backend(_sysmodule(tmp_path / "c", "kvm_amd", {"npt": "0"}))
    assert (shadow.vendor, shadow.tdp, shadow.exposed) == ("svm", False, True)
    none = be.detect_backend(tmp_path / "d")
    assert none.vendor == "unknown" and none.quirks is None and not none.exposed


# -- rounds ---------------------------------------------------------------------------
def test_planner_uses_distinct_tables_and_flips_pairs():
    planner = RoundPlanner(seed=7, tables=tables_for(4), pages=4)
    seen_tables, state = set(), {}
    back_to_a = 0
    for _ in range(200):
        picks = planner.next_round()
        assert len({m.table for m in picks}) == 4
        for m in picks:
            assert state.get((m.table, m.pair), 0) == m.old
            state[(m.table, m.pair)] = m.new
            back_to_a += m.old == 1
            seen_tables.add(m.table)
    assert seen_tables == set(range(8))
    assert back_to_a > 50                        # A -> B -> A happens


def test_planner_is_seeded():
    def sequence(seed):
        planner = RoundPlanner(seed, 8, 2)
        return [planner.next_round() for _ in range(20)]
    assert sequence(1) == sequence(1)
    assert sequence(1) != sequence(2)


def test_tags_distinguish_round_page_and_frame():
    tags = {tag(r, t, k, w) for r in range(3) for t in range(8) for k in range(4) for w in (0, 1)}
    assert len(tags) == 3 * 8 * 4 * 2
    assert tag(5, 3, 2, 1) >> 48 == 0x6B76


def test_config_validation():
    ExerciseConfig().validate()
    for bad in (dict(vcpus=1), dict(rounds=0), dict(pages=0), dict(pages=200),
                dict(vcpus=64, pages=64)):
        with pytest.raises(ValueError):
            ExerciseConfig(**bad).validate()
