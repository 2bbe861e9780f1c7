"""Host discovery (kvmtrace.host) on recorded and hand-made sysroots under tests/data/hosts."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.host import FormatError, Kallsyms, KernelConfig, find_mount, gather, parse_format
from kvmtrace.host.probepoints import CLONE, MISSING, OTHER_BACKEND, PRESENT, discover

HOSTS = Path(__file__).parent / "data" / "hosts"
LAB_FORMATS = Path(__file__).resolve().parent / "data" / "lab" / "tracepoint_formats.txt"


def host(name: str):
    return gather(HOSTS / name)


def by_name(statuses):
    return {s.name: s for s in statuses}


# ----------------------------------------------------------------------------- backend / TDP

def test_pvm_host_is_shadow_paging_and_exposed():
    h = host("pvm_6_18")
    assert h.kernel_release == "6.18.44-fc-v657"
    assert h.kvm_backend == "kvm_pvm"
    assert h.backend.present == ["kvm_pvm"]
    assert h.tdp is False and h.backend.exposed is True and h.backend.paging == "shadow"
    # Built in, no /proc/modules: found through /sys/module and its vcpu_run symbol.
    assert any("pvm_vcpu_run" in e for e in h.backend.evidence["kvm_pvm"])


def test_intel_ept_on_is_tdp_not_exposed():
    h = host("intel_5_10")
    assert h.kvm_backend == "kvm_intel"
    assert h.tdp is True and h.backend.exposed is False
    assert "ept = Y" in h.backend.tdp_source


def test_amd_npt_parameter_decides_tdp():
    assert host("amd_6_1_npt").tdp is True
    shadow = host("amd_6_6_shadow")
    assert shadow.kvm_backend == "kvm_amd" and shadow.tdp is False and shadow.backend.exposed


def test_no_kvm_at_all(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text("0000000000000000 T _text\n")
    h = gather(tmp_path)
    assert h.kvm_backend == "" and h.tdp is None and h.backend.exposed is None
    assert h.tracefs is None


# ----------------------------------------------------------------------------- kernel config

def test_kernel_config_from_boot_file():
    h = host("pvm_6_18")
    assert h.config.known and h.config.get("CONFIG_KPROBES") == "n"
    assert h.config.get("CONFIG_KVM_PVM") == "y"
    assert host("intel_5_10").config.get("CONFIG_KPROBES") == "y"
    assert not host("amd_6_1_npt").config.known
    assert host("amd_6_1_npt").config.get("CONFIG_KPROBES") is None


def test_kernel_config_parse():
    cfg = KernelConfig.parse('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\n', "t")
    assert (cfg.get("CONFIG_A"), cfg.get("CONFIG_B"), cfg.get("CONFIG_C"), cfg.get("CONFIG_D")) == ("y", "n", "x y", "n")


# ----------------------------------------------------------------------------- kallsyms

def test_kallsyms_parse_modules_clones_and_non_text():
    ks = Kallsyms.parse(
        "ffffffffc0a00000 t kvm_mmu_load\t[kvm]\n"
        "ffffffffc0a00100 t kvm_mmu_sync_prev_roots.isra.0\t[kvm]\n"
        "ffffffffc0a00200 t kvm_mmu_sync_prev_roots.cold\t[kvm]\n"
        "ffffffff82000000 D some_data\n"
        "garbage line\n")
    assert ks.has("kvm_mmu_load") and ks.lookup("kvm_mmu_load")[0].module == "kvm"
    assert not ks.has("some_data")                     # data symbols cannot take a kprobe
    assert ks.clones_of("kvm_mmu_sync_prev_roots") == ["kvm_mmu_sync_prev_roots.isra.0"]
    assert "kvm" in ks.modules


# ----------------------------------------------------------------------------- functions

def test_functions_5_10_flush_function_has_a_symbol():
    st = by_name(discover(host("intel_5_10").kallsyms, "kvm_intel"))
    assert st["kvm_vcpu_flush_tlb_guest"].status == PRESENT
    assert st["vmx_flush_tlb_guest"].status == PRESENT
    assert st["kvm_mmu_sync_prev_roots"].status == MISSING
    assert st["kvm_service_local_tlb_flush_requests"].status == MISSING
    assert st["svm_flush_tlb_asid"].status == OTHER_BACKEND
    # a .cold split part is not a clone to attach to
    assert st["kvm_mmu_sync_roots"].status == PRESENT


def test_functions_6_1_flush_function_inlined():
    st = by_name(discover(host("amd_6_1_npt").kallsyms, "kvm_amd"))
    assert st["kvm_vcpu_flush_tlb_guest"].status == MISSING
    assert "inlined" in st["kvm_vcpu_flush_tlb_guest"].detail
    assert st["svm_flush_tlb_current"].status == PRESENT
    assert st["svm_flush_tlb"].status == MISSING and st["svm_flush_tlb_asid"].status == MISSING
    assert st["vmx_flush_tlb_guest"].status == OTHER_BACKEND


def test_functions_6_6_vendor_name_and_clone():
    st = by_name(discover(host("amd_6_6_shadow").kallsyms, "kvm_amd"))
    assert st["svm_flush_tlb_asid"].status == PRESENT
    assert st["svm_flush_tlb_current"].status == MISSING
    clone = st["kvm_mmu_sync_prev_roots"]
    assert clone.status == CLONE and clone.symbol == "kvm_mmu_sync_prev_roots.isra.0" and clone.attachable


def test_functions_on_pvm_host():
    st = by_name(discover(host("pvm_6_18").kallsyms, "kvm_pvm"))
    assert st["pvm_flush_tlb_guest"].status == PRESENT
    assert st["kvm_vcpu_flush_tlb_guest"].status == MISSING
    for name in ("kvm_mmu_load", "kvm_mmu_unload", "kvm_mmu_sync_roots", "kvm_mmu_sync_prev_roots",
                 "kvm_service_local_tlb_flush_requests"):
        assert st[name].status == PRESENT, name


def test_filter_functions_marks_notrace():
    st = by_name(discover(host("pvm_6_18").kallsyms, "kvm_pvm", {"kvm_mmu_load"}))
    assert st["kvm_mmu_load"].traceable is True
    assert st["kvm_mmu_unload"].traceable is False and "notrace" in st["kvm_mmu_unload"].detail


def test_filter_functions_file_names_functions_without_their_module(tmp_path):
    from kvmtrace.host import Tracefs
    tfs = Tracefs(tmp_path)
    assert tfs.filter_functions() is None                   # unreadable is not "empty"
    (tmp_path / "available_filter_functions").write_text("kvm_mmu_load [kvm]\nschedule\n\n")
    assert tfs.filter_functions() == {"kvm_mmu_load", "schedule"}


def test_functions_without_kallsyms_are_unknown():
    assert {s.status for s in discover(None, "kvm_intel")} <= {"unknown", OTHER_BACKEND}


# ----------------------------------------------------------------------------- tracefs

def test_tracefs_that_only_root_may_look_into_is_mounted_not_a_traceback(monkeypatch, tmp_path):
    # Root bypasses file modes, so stand in for the EACCES a non-root stat() of the 0700
    # tracefs root gets (pathlib raises it instead of answering False).
    point = tmp_path / "sys/kernel/tracing"
    point.mkdir(parents=True)
    assert find_mount(tmp_path) is None                 # an empty mount point: not mounted
    real = Path.is_dir

    def is_dir(self):
        if point in self.parents or self == point / "events":
            raise PermissionError(13, "Permission denied")
        return real(self)
    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert find_mount(tmp_path) == point
    assert gather(tmp_path).tracefs.exists("kvm", "kvm_pv_tlb_flush") is False


def test_tracefs_mount_from_proc_mounts_including_debugfs_path():
    assert find_mount(HOSTS / "pvm_6_18") == HOSTS / "pvm_6_18" / "sys/kernel/tracing"
    assert find_mount(HOSTS / "amd_6_6_shadow") == HOSTS / "amd_6_6_shadow" / "sys/kernel/debug/tracing"


def test_format_parsing_real_pvm_formats():
    tfs = host("pvm_6_18").tracefs
    pv = tfs.format("kvm", "kvm_pv_tlb_flush")
    assert (pv.fields["vcpu_id"].offset, pv.fields["vcpu_id"].size, pv.fields["vcpu_id"].signed) == (8, 4, False)
    assert (pv.fields["need_flush_tlb"].offset, pv.fields["need_flush_tlb"].size) == (12, 1)
    exit_ = tfs.format("kvm", "kvm_exit")
    assert exit_.fields["requests"].offset == 64 and exit_.fields["requests"].size == 8
    emul = tfs.format("kvm", "kvm_emulate_insn")
    assert emul.fields["insn"].array and not emul.fields["insn"].is_scalar
    assert tfs.format("kvm", "kvm_nonexistent") is None
    ue = tfs.format("kvm", "kvm_userspace_exit")
    assert ue.fields["errno"].signed and "errno@12:s32" in ue.layout()


def test_format_parsing_lab_file_sections():
    text = LAB_FORMATS.read_text()
    sections = [s for s in text.split("===== ") if s.strip()]
    parsed = {}
    for s in sections:
        header, _, body = s.partition("\n")
        system, event = header.strip().split("/")
        parsed[event] = parse_format(body, system, event)
    assert parsed["kvm_mmu_get_page"].fields["created"].offset == 33
    assert parsed["kvm_entry"].fields["rip"].offset == 16
    assert parsed["kvm_pv_tlb_flush"].id == 51


def test_format_errors_are_reported():
    with pytest.raises(FormatError):
        parse_format("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:zz;\n", "s", "x")
    with pytest.raises(FormatError):
        parse_format("name: x\nID: 1\nformat:\n", "s", "x")
    with pytest.raises(FormatError):
        host("pvm_6_18").tracefs.format("kvm", "x; rm -rf /")


def _kallsyms_texts():
    texts = {p.parent.parent.name: p.read_text() for p in HOSTS.glob("*/proc/kallsyms")}
    texts["tricky"] = ("ffffffff81000000 T kvm_mmu_load\n"
                       "ffffffff81000010 T __kvm_mmu_load\n"          # the name inside another
                       "ffffffff81000020 D kvm_mmu_data\n"            # not text
                       "ffffffff81000030 t kvm_mmu_sync_roots.isra.0\t[kvm]\n"
                       "zzzz T kvm_not_a_symbol\n"                    # no address
                       "ffffffff81000040 T kvm_x[weird]\n"
                       "ffffffff81000050 W kvm_weak\n"
                       "ffffffff81000060 T aaaa\n"                    # keys that overlap
                       "ffffffff81000070 T xaaa\n"                    # themselves ("aaa")
                       "ffffffff81000080 t aaaaaaa\n"
                       "ffffffff81000090 T [aaaa\n")
    try:
        texts["this host"] = Path("/proc/kallsyms").read_text()
    except OSError:
        pass
    return texts


@pytest.mark.parametrize("name", sorted(_kallsyms_texts()))
def test_kallsyms_family_lookups_agree_with_the_full_name_set(name):
    """has()/clones_of() scan one family of names; they must say what the full set says."""
    text = _kallsyms_texts()[name]
    full = Kallsyms.parse(text).names
    from kvmtrace.functions import PROBED_FUNCTIONS
    from kvmtrace.host.backend import RUN_SYMBOL
    asked = {f.name for f in PROBED_FUNCTIONS} | set(RUN_SYMBOL.values()) | {"kvm_vcpu_ioctl"}
    asked |= set(sorted(full)[::max(1, len(full) // 10)])           # and ~10 of every kind
    bases = sorted({c.split(".")[0] for c in full if ".isra" in c or ".constprop" in c})
    asked |= set(bases[::max(1, len(bases) // 10)])                  # ~10 with clones
    asked |= {"kvm_not_a_symbol", "kvm_mmu_data", "kvm_x", "kvm_weak", "kv", "",
              "aaaa", "xaaa", "aaaaaaa", "aaaaa", "[aaaa"}
    ks = Kallsyms.parse(text)
    from kvmtrace.host.kallsyms import _CLONE_RE
    dotted = [c for c in full if "." in c and ".cold" not in c]
    for n in sorted(asked):
        assert ks.has(n) == (n in full), n
        clones = sorted(c for c in dotted if (m := _CLONE_RE.match(c)) and m.group("base") == n)
        assert ks.clones_of(n) == clones, n
    assert ks.names == full


def _fake_root(tmp_path, kallsyms: str, modules: str) -> Path:
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc/kallsyms").write_text(kallsyms)
    (tmp_path / "proc/modules").write_text(modules)
    return tmp_path


def _copied(root: Path, size: int) -> None:
    """Wait until the prefetching child has copied ``size`` bytes."""
    import os
    import time
    from kvmtrace.host import kallsyms as K
    job = K._pending[str(root / "proc/kallsyms")]
    deadline = time.monotonic() + 30
    while os.fstat(job.fd).st_size < size:
        assert time.monotonic() < deadline, "cat did not copy the file"
        time.sleep(0.01)


OLD = "ffffffff81000000 T kvm_mmu_load\n"
NEW = "ffffffff81000000 T kvm_mmu_unload\n"


def test_prefetched_kallsyms_is_the_copy_taken_when_it_started(tmp_path):
    from kvmtrace.host import kallsyms as K
    root = _fake_root(tmp_path, OLD, "kvm 1 0 - Live 0x0\n")
    assert K.prefetch(root)
    _copied(root, len(OLD))
    (root / "proc/kallsyms").write_text(NEW)
    ks = Kallsyms.load(root)
    assert ks.has("kvm_mmu_load") and not ks.has("kvm_mmu_unload")    # the copy
    assert Kallsyms.load(root).has("kvm_mmu_unload")                 # used once only


def test_prefetch_is_dropped_when_modules_changed_or_it_is_old(tmp_path):
    from kvmtrace.host import kallsyms as K
    root = _fake_root(tmp_path, OLD, "kvm 1 0 - Live 0x0\n")
    K.prefetch(root)
    _copied(root, len(OLD))
    _fake_root(tmp_path, NEW, "kvm 1 0 - Live 0x0\nkvm_intel 1 0 - Live 0x0\n")   # a module came
    assert Kallsyms.load(root).has("kvm_mmu_unload")
    _fake_root(tmp_path, OLD, "kvm 1 0 - Live 0x0\n")
    K.prefetch(root)
    _copied(root, len(OLD))
    K._pending[str(root / "proc/kallsyms")].started -= K.MAX_AGE + 1
    (root / "proc/kallsyms").write_text(NEW)
    assert Kallsyms.load(root).has("kvm_mmu_unload")


def test_prefetch_of_an_unreadable_kallsyms_reads_as_none(tmp_path):
    from kvmtrace.host import kallsyms as K
    assert K.prefetch(tmp_path)                 # no proc/kallsyms: cat fails
    assert Kallsyms.load(tmp_path) is None
