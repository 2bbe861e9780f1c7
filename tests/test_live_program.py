"""BPF program generation and probe planning, from sysroot samples (no BCC, no root)."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from kvmtrace.host import gather, parse_format
from kvmtrace.sources.live.capabilities import kprobes
from kvmtrace.sources.live.plan import build
from kvmtrace.sources.live.program import (FunctionProbe, ProgramConfig, ProgramError, args_struct,
                                   generate, resolve, tracepoint_handler, tgid_filter_value)
from kvmtrace.sources.live.tracepoints import BY_NAME, TRACEPOINTS
from kvmtrace.schema import Kind

HOSTS = Path(__file__).parent / "data" / "hosts"


def plan_for(name: str, mode: str = "auto"):
    facts = gather(HOSTS / name)
    return build(facts, mode, kprobes(facts))


# ----------------------------------------------------------------------------- planning

def test_pvm_plan_attaches_tracepoints_and_says_why_no_functions():
    plan = plan_for("pvm_6_18")
    names = {t.name for t in plan.tracepoints}
    assert {"kvm:kvm_pv_tlb_flush", "kvmmmu:kvm_mmu_unsync_page", "kvmmmu:kvm_mmu_sync_page",
            "kvmmmu:kvm_mmu_get_page", "kvmmmu:kvm_mmu_prepare_zap_page", "kvmmmu:kvm_mmu_set_spte",
            "kvm:kvm_userspace_exit", "kvm:kvm_entry", "kvm:kvm_exit"} <= names
    assert plan.functions == []
    skipped = dict(plan.skipped)
    assert "CONFIG_KPROBES" in skipped["kprobe:kvm_mmu_load"]
    assert "inlined" in skipped["kprobe:kvm_vcpu_flush_tlb_guest"]


def test_kprobe_capability_from_files():
    assert kprobes(gather(HOSTS / "intel_5_10")).usable
    no = kprobes(gather(HOSTS / "amd_6_6_shadow"))
    assert not no.usable and "CONFIG_KPROBES" in no.detail
    # No config published: the reason still names the missing interfaces.
    assert not kprobes(gather(HOSTS / "pvm_6_18")).usable


def test_5_10_plan_probes_the_flush_function_and_opens_windows_on_it():
    plan = plan_for("intel_5_10")
    fns = {(f.symbol, f.is_return): f for f in plan.functions}
    entry = fns[("kvm_vcpu_flush_tlb_guest", False)]
    assert entry.kind == Kind.FLUSH_GUEST_ENTRY and entry.opens_window
    assert fns[("kvm_vcpu_flush_tlb_guest", True)].kind == Kind.FLUSH_GUEST_RETURN
    assert fns[("kvm_mmu_load", True)].kind == Kind.MMU_LOAD_RETURN
    assert ("vmx_flush_tlb_guest", False) in fns
    assert not any(s.startswith("svm_") or s.startswith("pvm_") for s, _ in fns)
    skipped = dict(plan.skipped)
    assert "kprobe:kvm_mmu_sync_prev_roots" in skipped       # 5.16+ only
    # tracepoints absent on this kernel are named with their reason
    assert skipped["tracepoint:kvmmmu:kvm_mmu_set_spte"] == "tracepoint absent"


def test_6_1_plan_without_the_inlined_flush_function():
    plan = plan_for("amd_6_1_npt", "functions")
    symbols = {f.symbol for f in plan.functions}
    assert "kvm_vcpu_flush_tlb_guest" not in symbols
    assert {"svm_flush_tlb_current", "kvm_service_local_tlb_flush_requests",
            "kvm_mmu_sync_prev_roots"} <= symbols
    assert plan.tracepoints == []                          # mode functions: no tracepoints


def test_tracepoints_mode_skips_functions():
    plan = plan_for("intel_5_10", "tracepoints")
    assert plan.functions == [] and plan.tracepoints


# ----------------------------------------------------------------------------- field layouts

def test_field_alternatives_follow_the_format_file():
    facts = gather(HOSTS / "intel_5_10")
    entry = resolve(BY_NAME["kvm:kvm_entry"], facts.tracefs.format("kvm", "kvm_entry"))
    assert entry.columns == {"vcpu": "args->vcpu_id", "value": "0"}      # no rip before 5.8
    exit_ = resolve(BY_NAME["kvm:kvm_exit"], facts.tracefs.format("kvm", "kvm_exit"))
    assert exit_.columns["value"] == "-1" and exit_.arg == "0"           # no requests
    pvm = gather(HOSTS / "pvm_6_18")
    exit_ = resolve(BY_NAME["kvm:kvm_exit"], pvm.tracefs.format("kvm", "kvm_exit"))
    assert exit_.columns["value"] == "args->requests"
    assert exit_.arg == "(args->requests >> 35) & 1"


def test_missing_field_or_array_field_is_a_reason_not_a_guess():
    fmt = parse_format("name: kvm_pv_tlb_flush\nID: 1\nformat:\n"
                       "\tfield:unsigned int vcpu_id;\toffset:8;\tsize:4;\tsigned:0;\n", "kvm", "kvm_pv_tlb_flush")
    assert "need_flush_tlb" in resolve(BY_NAME["kvm:kvm_pv_tlb_flush"], fmt)
    fmt = parse_format("name: kvm_pio\nID: 1\nformat:\n"
                       "\tfield:unsigned int port[2];\toffset:8;\tsize:8;\tsigned:0;\n", "kvm", "kvm_pio")
    assert "not a scalar" in resolve(BY_NAME["kvm:kvm_pio"], fmt)


def test_struct_places_fields_at_format_offsets():
    # A layout unlike any real kernel: need_flush_tlb before vcpu_id, with a gap.
    fmt = parse_format("name: kvm_pv_tlb_flush\nID: 1\nformat:\n"
                       "\tfield:bool need_flush_tlb;\toffset:8;\tsize:1;\tsigned:0;\n"
                       "\tfield:unsigned int vcpu_id;\toffset:20;\tsize:4;\tsigned:0;\n",
                       "kvm", "kvm_pv_tlb_flush")
    rt = resolve(BY_NAME["kvm:kvm_pv_tlb_flush"], fmt)
    text = args_struct(rt)
    assert re.search(r"u8 __pad0\[8\];\s*u8 need_flush_tlb;.*u8 __pad1\[11\];\s*u32 vcpu_id;", text, re.S)
    assert "offsetof(struct kt_args__kvm__kvm_pv_tlb_flush, vcpu_id) == 20" in text
    assert "packed" not in text
    handler = tracepoint_handler(rt)
    assert "return kt_pv_flush(&e);" in handler and "e.need_flush = args->need_flush_tlb != 0;" in handler


def test_unaligned_field_gets_a_packed_struct():
    fmt = parse_format("name: kvm_pio\nID: 1\nformat:\n"
                       "\tfield:unsigned int port;\toffset:10;\tsize:4;\tsigned:0;\n", "kvm", "kvm_pio")
    assert "__attribute__((packed))" in args_struct(resolve(BY_NAME["kvm:kvm_pio"], fmt))


def test_userspace_exit_intr_does_not_close_the_window():
    facts = gather(HOSTS / "pvm_6_18")
    rt = resolve(BY_NAME["kvm:kvm_userspace_exit"], facts.tracefs.format("kvm", "kvm_userspace_exit"))
    assert rt.arg == "!((s32)args->errno < 0 || args->reason == 10)"
    assert f"return kt_evidence(&e, {rt.arg});" in tracepoint_handler(rt)


# ----------------------------------------------------------------------------- safety

@pytest.mark.parametrize("tgids", [("1); bpf_override_return(0",), (0,), (-5,), (2**22,), (True,), (1.5,)])
def test_only_valid_tgids_reach_the_c_text(tgids):
    with pytest.raises(ProgramError):
        generate(ProgramConfig(tgids=tgids), [], [])


def test_tgid_filter_text():
    # The TGIDs themselves go into kt_tgid_filter: the text depends on how many at most.
    text = generate(ProgramConfig(tgids=(42, 4242)), [], [])
    assert "#define KT_TGID_SLOTS 4" in text and "4242" not in text
    assert text == generate(ProgramConfig(tgids=(7, 8, 9)), [], [])
    assert "#define KT_TGID_SLOTS 0" in generate(ProgramConfig(), [], [])
    assert "#define KT_TGID_SLOTS 16" in generate(ProgramConfig(tgids=tuple(range(1, 6))), [], [])
    assert "#define KT_TGID_SLOTS 64" in generate(ProgramConfig(tgids=tuple(range(1, 65))), [], [])


def test_tgid_filter_value_is_struct_kt_tgids():
    value = tgid_filter_value((42, 4242))
    assert struct.unpack("<5I", value) == (2, 42, 4242, 0, 0)
    assert len(tgid_filter_value(tuple(range(1, 17)))) == 4 * 17


@pytest.mark.parametrize("pages", [0, 3, 1000, 1 << 20, "64"])
def test_ring_buffer_size_validated(pages):
    with pytest.raises(ProgramError):
        ProgramConfig(ringbuf_pages=pages).validate()


def test_function_symbol_validated():
    with pytest.raises(ProgramError):
        generate(ProgramConfig(), [], [FunctionProbe("kvm_mmu_load; }", Kind.MMU_LOAD_ENTRY)])
    clone = FunctionProbe("kvm_mmu_sync_prev_roots.isra.0", Kind.SYNC_PREV_ROOTS)
    assert clone.fn_name == "kt_fn__kvm_mmu_sync_prev_roots_isra_0"
    assert "int kt_fn__kvm_mmu_sync_prev_roots_isra_0(struct pt_regs *ctx)" in generate(ProgramConfig(), [], [clone])


def test_format_file_text_cannot_close_a_comment_or_name_a_struct():
    # The declared type is format-file text the generator echoes in a comment; a "*/" in it
    # must not end the comment early.  Names become identifiers and must be identifiers.
    fmt = parse_format("name: kvm_pio\nID: 1\nformat:\n"
                       "\tfield:int */ evil /* port;\toffset:8;\tsize:4;\tsigned:0;\n",
                       "kvm", "kvm_pio")
    rt = resolve(BY_NAME["kvm:kvm_pio"], fmt)
    text = args_struct(rt)
    assert "evil" not in text and text.count("*/") == text.count("/*") == 1
    from dataclasses import replace
    bad = replace(rt, probe=replace(rt.probe, system="kvm { } int x;"))
    with pytest.raises(ProgramError):
        tracepoint_handler(bad)


def test_every_known_tracepoint_resolves_on_this_lab_host_sample():
    facts = gather(HOSTS / "pvm_6_18")
    for tp in TRACEPOINTS:
        if facts.tracefs.exists(tp.system, tp.event):
            assert not isinstance(resolve(tp, facts.tracefs.format(tp.system, tp.event)), str), tp.name


def test_unreadable_format_is_a_stated_reason(tmp_path):
    import shutil
    root = tmp_path / "host"
    shutil.copytree(HOSTS / "pvm_6_18", root)
    fmt = root / "sys/kernel/tracing/events/kvm/kvm_pv_tlb_flush/format"
    fmt.unlink()
    fmt.mkdir()                                   # reading it fails (not "absent")
    facts = gather(root)
    plan = build(facts, "auto", kprobes(facts))
    why = dict(plan.skipped)["tracepoint:kvm:kvm_pv_tlb_flush"]
    assert "cannot read" in why and "absent" not in why
    assert any(t.name == "kvmmmu:kvm_mmu_sync_page" for t in plan.tracepoints)
