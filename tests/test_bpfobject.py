"""The relocatable program object (sources/live/bpfobject.py) and its cache (progcache.py),
on hand-built bytecode: no kernel needed."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from kvmtrace.sources.live import progcache
from kvmtrace.sources.live.bpfobject import (MapSpec, ObjectError, ProgramObject, ProgSpec,
                                             relocatable)
from kvmtrace.sources.live.progcache import ProgramCache, key


def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


MOV_R0_0 = insn(0xB7)                      # r0 = 0
EXIT = insn(0x95)


def ld_map(fd: int, src: int = 1) -> bytes:
    return insn(0x18, dst=1, src=src, imm=fd) + insn(0)


def test_map_fds_become_relocations():
    code = ld_map(7) + MOV_R0_0 + ld_map(9) + insn(0x85, imm=1) + EXIT   # call map_lookup_elem
    out, relocs = relocatable("p", code, {7: 0, 9: 1})
    assert relocs == ((0, 0), (3, 1))
    assert struct.unpack_from("<i", out, 4)[0] == 0 and struct.unpack_from("<i", out, 3 * 8 + 4)[0] == 0
    # everything else is untouched, src_reg still says BPF_PSEUDO_MAP_FD
    assert out[1] >> 4 == 1 and out[16:24] == MOV_R0_0 and out[-16:] == code[-16:]


def test_plain_64_bit_constants_are_not_relocated():
    code = insn(0x18, dst=2, imm=7) + insn(0, imm=0) + MOV_R0_0 + EXIT
    assert relocatable("p", code, {7: 0}) == (code, ())


@pytest.mark.parametrize("code, why", [
    (ld_map(5) + MOV_R0_0 + EXIT, "fd 5"),                              # not a map of ours
    (ld_map(7, src=4) + MOV_R0_0 + EXIT, "64-bit load of kind 4"),      # BPF_PSEUDO_FUNC
    (insn(0x85, src=1, imm=2) + MOV_R0_0 + EXIT, "BPF-to-BPF"),         # bpf-to-bpf call
    (insn(0x85, src=2, imm=2) + MOV_R0_0 + EXIT, "kernel-function"),    # kfunc call
    (MOV_R0_0[:5], "whole instructions"),
])
def test_what_the_loader_cannot_take_is_refused(code, why):
    with pytest.raises(ObjectError, match=why):
        relocatable("p", code, {7: 0})


def sample() -> ProgramObject:
    code, relocs = relocatable("kt_a", ld_map(3) + MOV_R0_0 + EXIT, {3: 1})
    return ProgramObject((MapSpec("kt_events", 27, 0, 0, 1 << 20), MapSpec("kt_lost", 6, 4, 8, 1)),
                         (ProgSpec("kt_a", 17, code, relocs),))


def test_object_round_trips():
    obj = sample()
    again = ProgramObject.from_bytes(obj.to_bytes())
    assert again == obj and again.prog("kt_a").relocs == ((0, 1),)


@pytest.mark.parametrize("damage", [
    lambda d: d.replace(b'"format": 1', b'"format": 2'),
    lambda d: d.replace(b'"relocs": [[0, 1]]', b'"relocs": [[2, 1]]'),      # not a 64-bit load
    lambda d: d.replace(b'"relocs": [[0, 1]]', b'"relocs": [[0, 5]]'),      # no such map
    lambda d: d.replace(b'"relocs": [[0, 1]]', b'"relocs": [[9, 0]]'),      # past the end
    lambda d: d.replace(b'"insns": "', b'"insns": "!'),                     # not base64
    lambda d: d[: len(d) // 2],
    lambda d: d.replace(b'"max_entries"', b'"max_entrie"'),
])
def test_a_damaged_object_is_refused(damage):
    with pytest.raises(ObjectError):
        ProgramObject.from_bytes(damage(sample().to_bytes()))


# ---------------------------------------------------------------- the cache


def fake_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/version").write_text("Linux version 6.18.0 #1 SMP\n")
    headers = tmp_path / "build"
    (headers / "include/generated").mkdir(parents=True)
    (headers / "include/generated/autoconf.h").write_text("#define CONFIG_KVM 1\n")
    return root, headers


def test_the_key_changes_with_everything_the_compile_depends_on(tmp_path):
    root, headers = fake_root(tmp_path)
    base = dict(text="int x;", cflags=("-g0",), compiler="bcc 0.26", headers=headers, root=root)
    k = key(**base)
    assert key(**base) == k                                     # stable
    assert key(**{**base, "text": "int y;"}) != k
    assert key(**{**base, "cflags": ("-g0", "-O1")}) != k
    assert key(**{**base, "compiler": "bcc 0.29"}) != k
    (root / "proc/version").write_text("Linux version 6.18.0 #2 SMP\n")   # rebuilt, same release
    assert key(**base) != k
    k2 = key(**base)
    conf = headers / "include/generated/autoconf.h"
    conf.write_text("#define CONFIG_KVM 1\n#define CONFIG_X 1\n")          # new headers
    assert key(**base) != k2


@pytest.fixture
def cache(tmp_path) -> ProgramCache:
    return ProgramCache(tmp_path / "cache")


def test_a_stored_object_comes_back(cache):
    assert cache.get("a" * 64) is None and cache.note == ""         # a miss says nothing
    path = cache.put("a" * 64, sample())
    assert path is not None and cache.get("a" * 64) == sample()
    assert os.stat(cache.dir).st_mode & 0o777 == 0o700
    assert cache.get("b" * 64) is None


def test_a_changed_byte_is_caught_by_the_checksum(cache):
    path = cache.put("a" * 64, sample())
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    assert cache.get("a" * 64) is None and "checksum mismatch" in cache.note


def test_a_cache_others_may_write_is_not_used(cache):
    cache.put("a" * 64, sample())
    os.chmod(cache.dir, 0o777)
    assert cache.get("a" * 64) is None and "writable by group or others" in cache.note
    assert cache.put("c" * 64, sample()) is None and "not written" in cache.note


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_an_object_of_another_user_is_not_used(cache):
    path = cache.put("a" * 64, sample())
    os.chown(path, 65534, 65534)
    assert cache.get("a" * 64) is None and "uid 65534" in cache.note


def test_the_cache_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv(progcache.ENV, "off")
    c = ProgramCache()
    assert c.dir is None and c.put("a" * 64, sample()) is None and "off" in c.note
    monkeypatch.setenv(progcache.ENV, str(tmp_path / "x"))
    assert ProgramCache().dir == tmp_path / "x"


def test_old_objects_are_pruned(cache, monkeypatch):
    monkeypatch.setattr(progcache, "KEEP", 3)
    for i in range(5):
        path = cache.put(f"{i:064x}", sample())
        os.utime(path, (1000 + i, 1000 + i))
    left = sorted(p.name[:64] for p in cache.dir.glob("*.bpfobj"))
    assert left == [f"{i:064x}" for i in (2, 3, 4)]


def test_doctor_says_where_the_cache_is_and_whether_it_is_used(cache):
    assert "empty" in cache.describe()
    cache.put("a" * 64, sample())
    assert cache.describe().startswith(f"{cache.dir}: 1 compiled program ")
    os.chmod(cache.dir, 0o770)
    assert cache.describe().startswith("not used: ") and "writable by group" in cache.describe()


def test_duplicate_names_and_sizes_out_of_range_are_refused():
    obj = sample()
    twice = ProgramObject(obj.maps + obj.maps[:1], obj.progs)
    with pytest.raises(ObjectError, match="map name appears twice"):
        twice.validate()
    huge = ProgramObject((MapSpec("kt_events", 27, 0, 0, 1 << 40),) + obj.maps[1:], obj.progs)
    with pytest.raises(ObjectError, match="out of range"):
        huge.validate()


def test_maps_are_created_again_with_the_memlock_limit_lifted_on_eperm(monkeypatch):
    # Before Linux 5.11 maps count against RLIMIT_MEMLOCK: EPERM until it is lifted.
    from kvmtrace.sources.live import bpfobject, bpfsys
    lifted = []
    fds = iter(range(100, 200))

    def map_create(*args):
        if not lifted:
            raise bpfsys.BpfError("creating map", 1)
        return next(fds)
    monkeypatch.setattr(bpfsys, "map_create", map_create)
    monkeypatch.setattr(bpfsys, "raise_memlock", lambda: lifted.append(1) or True)
    monkeypatch.setattr(bpfobject, "_close", lambda fd: None)
    loaded = bpfobject.load(sample())
    assert lifted == [1] and loaded.map_fds == {"kt_events": 100, "kt_lost": 101}
    # without a limit to lift, EPERM stays the kernel's answer
    lifted.clear()
    monkeypatch.setattr(bpfsys, "raise_memlock", lambda: False)
    with pytest.raises(bpfsys.BpfError):
        bpfobject.load(sample())


def test_a_map_value_must_have_the_maps_size(monkeypatch):
    from kvmtrace.sources.live import loader
    view = loader.MapView({"kt_tgid_filter": 5})
    monkeypatch.setattr(loader.bpfsys, "map_info", lambda fd: {"type": 2, "key_size": 4,
                                                              "value_size": 20})
    written = []
    monkeypatch.setattr(loader.bpfsys, "update", lambda fd, k, v: written.append((fd, k, v)))
    with pytest.raises(ValueError, match="a 12-byte value for 20-byte values"):
        view.put("kt_tgid_filter", 0, bytes(12))
    view.put("kt_tgid_filter", 0, bytes(20))
    assert written == [(5, bytes(4), bytes(20))]
