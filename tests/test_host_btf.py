"""The BTF reader (kvmtrace/host/btf.py) and the exact-probe layout drawn from it
(kvmtrace/host/exactlayout.py): on hand-built blobs, and on this host's real BTF."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.host.btf import Btf, BtfError, load_kernel
from kvmtrace.host.exactlayout import FIELDS, discover, from_btf
from tests.btf_blob import BlobBuilder

REAL = Path("/sys/kernel/btf/vmlinux")


def kvm_like(b: BlobBuilder, *, unsync_bitfield: bool = False, drop: str | None = None) -> None:
    """Types shaped like the kernel's, at offsets unlike this host's."""
    u8, u32, u64 = b.int_("u8", 1), b.int_("unsigned int", 4), b.int_("long long unsigned int", 8)
    b.func_proto(u32, [u64, u64])            # a kind the reader must skip by size
    gfn_t = b.typedef("gfn_t", u64)
    role = b.struct("kvm_mmu_page_role", 4, [("word", u32, 0)], union=True)
    rmap = b.struct("kvm_rmap_head", 8, [("val", b.const(u64), 0)])
    sp_members = [("gfn", gfn_t, 64), ("role", role, 32), ("spt", b.ptr(u64), 128),
                  ("", b.struct("", 8, [("unsync_children", u32, 0), ("x", u32, 32)], union=True), 192),
                  ("parent_ptes", rmap, 256)]
    if unsync_bitfield:
        sp_members.append(("unsync", u8, 8))
    else:
        sp_members.append(("unsync", u8, 16))
    sp_members = [m for m in sp_members if m[0] != drop]
    b.struct("kvm_mmu_page", 64, sp_members, bitfields={"unsync": 1} if unsync_bitfield else None)
    desc = b._add("pte_list_desc", 7, 0, 0)   # a forward declaration (BTF_KIND_FWD)
    idx = b.int_("int", 4)
    b.struct("pte_list_desc", 48, [("more", b.ptr(desc), 0), ("spte_count", u32, 64),
                                   ("sptes", b.array(b.ptr(u64), idx, 4), 128)])
    node = b.struct("hlist_node", 16, [("next", b.ptr(u64), 0), ("pprev", b.ptr(u64), 64)])
    head = b.struct("hlist_head", 8, [("first", b.ptr(node), 0)])
    b.struct("task_struct", 4096, [("pid", idx, 0), ("preempt_notifiers", head, 8 * 1000)])
    info = b.struct("kvm_mmu_root_info", 16, [("pgd", u64, 0), ("hpa", u64, 64)])
    mmu = b.struct("kvm_mmu", 200, [("root", info, 8 * 24), ("prev_roots", b.array(info, idx, 3), 8 * 120)])
    arch = b.struct("kvm_vcpu_arch", 64, [("regs", u64, 0), ("mmu", b.ptr(mmu), 8 * 40)])
    pn = b.struct("preempt_notifier", 24, [("link", node, 0), ("ops", b.ptr(u64), 128)])
    b.struct("kvm_vcpu", 512, [("kvm", b.ptr(u64), 0), ("preempt_notifier", pn, 8 * 16),
                               ("vcpu_id", idx, 8 * 44), ("arch", arch, 8 * 100)])


def test_hand_built_blob_offsets():
    b = BlobBuilder()
    kvm_like(b)
    btf = Btf(b.blob(), "hand")
    assert btf.member("kvm_mmu_page", "gfn").offset == 8
    assert btf.member("kvm_mmu_page", "gfn").size == 8
    assert btf.member("kvm_mmu_page", "role.word").offset == 4
    # through an anonymous union, as C does
    assert btf.member("kvm_mmu_page", "unsync_children").offset == 24
    assert btf.member("kvm_vcpu", "arch.mmu").offset == 100 + 40
    assert btf.member("kvm_vcpu", "arch.mmu").type_name == "struct kvm_mmu *"
    pr = btf.member("kvm_mmu", "prev_roots")
    assert (pr.offset, pr.nelems, pr.elem_size, pr.size) == (120, 3, 16, 48)
    assert btf.member("kvm_mmu", "root.hpa").offset == 32
    assert btf.member("kvm_mmu_page", "nosuch") is None
    assert btf.member("nosuch_struct", "x") is None


def test_layout_from_hand_built_blob_is_usable():
    b = BlobBuilder()
    kvm_like(b)
    layout = from_btf(Btf(b.blob(), "hand"), "hand")
    assert layout.usable, layout.problems
    assert layout.offset("task_notifiers") == 1000
    assert layout.offset("vcpu_notifier") == 16
    assert layout.prev_roots == 3 and layout.prev_root_stride == 16
    assert layout.desc_slots == 4
    assert not layout.has("sp_root_count")            # optional, absent here
    assert any("root_count: absent (optional)" in l for l in layout.lines())


def test_layout_names_a_missing_field():
    b = BlobBuilder()
    kvm_like(b, drop="parent_ptes")
    layout = from_btf(Btf(b.blob(), "hand"), "hand")
    assert not layout.usable
    assert layout.problems == ["kvm_mmu_page.parent_ptes.val not in BTF"]


def test_layout_refuses_a_bitfield():
    b = BlobBuilder()
    kvm_like(b, unsync_bitfield=True)
    layout = from_btf(Btf(b.blob(), "hand"), "hand")
    assert layout.problems == ["kvm_mmu_page.unsync: is a 1-bit bitfield"]


def test_split_btf_continues_ids_and_strings():
    base = BlobBuilder()
    u64 = base.int_("u64", 8)
    base_btf = Btf(base.blob(), "base")
    split = BlobBuilder(base_strings=len(base.strings), first_id=2)
    split.struct("kvm_mmu_root_info", 16, [("pgd", u64, 0), ("hpa", u64, 64)])
    btf = Btf(split.blob(), "split", base=base_btf)
    m = btf.member("kvm_mmu_root_info", "hpa")
    assert m.offset == 8 and m.type_name == "u64"


@pytest.mark.parametrize("data,msg", [
    (b"\x9f\xeb", "too short"),
    (b"\x00\x00" + bytes(22), "bad magic"),
])
def test_bad_blobs(data, msg):
    with pytest.raises(BtfError, match=msg):
        Btf(data, "x")


def test_truncated_type_section():
    b = BlobBuilder()
    b.int_("u64", 8)
    blob = bytearray(b.blob())
    blob[8:12] = (100).to_bytes(4, "little")  # type_len beyond the data
    with pytest.raises(BtfError, match="past the end"):
        Btf(bytes(blob), "x")


def test_unknown_kind_is_an_error_not_a_guess():
    b = BlobBuilder()
    b._add("weird", 31, 0, 0)
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        Btf(b.blob(), "x")


def test_no_btf_says_why(tmp_path):
    layout = discover(tmp_path)
    assert not layout.usable
    assert "CONFIG_DEBUG_INFO_BTF" in layout.problems[0]


@pytest.mark.skipif(not REAL.exists(), reason="no /sys/kernel/btf/vmlinux on this machine")
def test_real_btf_layout():
    btf, detail = load_kernel()
    layout = from_btf(btf, detail)
    assert layout.usable, layout.problems
    assert len(layout.lines()) == len(FIELDS)
    # Internal consistency the kernel's definitions imply.
    mmu_root = btf.member("kvm_mmu", "root")
    assert layout.offset("mmu_root_hpa") == mmu_root.offset + layout.offset("root_info_hpa")
    assert layout.prev_roots >= 1 and layout.prev_root_stride == btf.struct_size("kvm_mmu_root_info")
    sp_size = btf.struct_size("kvm_mmu_page")
    for key in ("sp_gfn", "sp_role", "sp_spt", "sp_parent_ptes", "sp_unsync_children"):
        m = layout.members[key]
        assert m.offset + m.size <= sp_size
    assert btf.member("kvm_vcpu", "preempt_notifier").offset == layout.offset("vcpu_notifier")


def test_vcpu_pvm_comes_from_kvm_pvms_own_split_btf_when_it_is_a_module(tmp_path):
    # kvm_pvm as a module: struct vcpu_pvm is only in /sys/kernel/btf/kvm_pvm (split BTF on
    # vmlinux); the PVM hypercall fields must be read from there, not reported missing.
    from kvmtrace.host import exactlayout
    base = BlobBuilder()
    u64 = base.int_("u64", 8)
    vcpu = base.struct("kvm_vcpu", 64, [("cpu", u64, 0)])
    base_blob = base.blob()
    split = BlobBuilder(base_strings=len(base.strings), first_id=3)
    regs = split.array(u64, u64, 16)
    exit_ = split.struct("pvm_exit", 16, [("vector", u64, 0), ("error_code", u64, 64)])
    n = split.struct("pvm_n", 16 + 128, [("exit", exit_, 0), ("regs", regs, 128)])
    split.struct("vcpu_pvm", 64 + 144, [("vcpu", vcpu, 0), ("n", n, 64 * 8)])
    btf_dir = tmp_path / "sys/kernel/btf"
    btf_dir.mkdir(parents=True)
    (btf_dir / "vmlinux").write_bytes(base_blob)
    before = exactlayout.discover(tmp_path)
    assert not before.has("pvm_regs")
    (btf_dir / "kvm_pvm").write_bytes(split.blob())
    layout = exactlayout.discover(tmp_path)
    assert layout.offset("pvm_vcpu") == 0
    assert layout.offset("pvm_exit_vector") == 64
    assert layout.offset("pvm_regs") == 64 + 16
    assert "kvm_pvm" in layout.source


def _reference_walk(data: bytes) -> list[int]:
    """Where each type starts, record by record (the reader's vectorized walk must agree)."""
    import struct
    from kvmtrace.host.btf import HEADER, TYPE, _extra_size
    _m, _v, _f, hdr_len, type_off, type_len, _so, _sl = HEADER.unpack_from(data)
    pos, end, out = hdr_len + type_off, hdr_len + type_off + type_len, []
    while pos < end:
        out.append(pos)
        _name, info, _st = TYPE.unpack_from(data, pos)
        pos += TYPE.size + _extra_size((info >> 24) & 0x1F, info & 0xFFFF)
    return out


def test_walk_matches_a_record_by_record_walk_on_a_hand_built_blob():
    b = BlobBuilder()
    kvm_like(b)
    data = b.blob()
    assert list(Btf(data, "hand")._offsets) == _reference_walk(data)


@pytest.mark.skipif(not REAL.exists(), reason="no /sys/kernel/btf/vmlinux on this machine")
def test_real_btf_walk_and_name_lookups_agree_with_decoding_every_type():
    from kvmtrace.host.btf import ENUM, INT, STRUCT, TYPEDEF, UNION
    data = REAL.read_bytes()
    btf = Btf(data, str(REAL))
    assert list(btf._offsets) == _reference_walk(data)
    by_name: dict[tuple[int, str], list] = {}
    for tid in range(1, btf._next_id):
        t = btf.type(tid)
        if t.name and t.kind in (STRUCT, UNION, TYPEDEF, INT, ENUM):
            by_name.setdefault((t.kind, t.name), []).append(t)
    keys = sorted(by_name)
    for kind, name in keys[::max(1, len(keys) // 300)] + [(STRUCT, "kvm_mmu_page"), (INT, "u64")]:
        if (kind, name) not in by_name:
            continue
        types = by_name[(kind, name)]
        want = next((t for t in types if t.vlen), types[0]) if kind in (STRUCT, UNION) else types[0]
        assert btf.find(name, kind).id == want.id, (kind, name)
    assert btf.find("no_such_struct_anywhere") is None


@pytest.mark.parametrize("count", range(0, 18))
def test_walk_of_any_number_of_types(count):
    """The walk goes 8 records per step: every count, and every kind of record length."""
    b = BlobBuilder()
    u64 = b.int_("u64", 8)
    makers = [lambda i: b.ptr(u64), lambda i: b.struct(f"s{i}", 8, [("a", u64, 0)] * (i % 4)),
              lambda i: b.func_proto(u64, [u64] * (i % 3)), lambda i: b.array(u64, u64, i),
              lambda i: b.typedef(f"t{i}", u64)]
    for i in range(count):
        makers[i % len(makers)](i)
    data = b.blob()
    btf = Btf(data, "hand")
    assert list(btf._offsets) == _reference_walk(data)
    assert btf._next_id == count + 2


def test_a_record_running_past_the_type_section_is_an_error():
    import struct
    b = BlobBuilder()
    u64 = b.int_("u64", 8)
    b.struct("s", 8, [("a", u64, 0)])
    data = bytearray(b.blob())
    # the struct (second record, after the 16-byte int) claims 3 members, has 1
    at = 24 + 16 + 4
    name_off, info = struct.unpack_from("<II", data, at - 4)
    struct.pack_into("<I", data, at, (info & ~0xFFFF) | 3)
    with pytest.raises(BtfError, match="type 2 runs past the type section"):
        Btf(bytes(data), "x")
