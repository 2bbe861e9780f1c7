"""Text importers: ftrace, trace-cmd report and perf script into the event schema.

Most inputs are real captures of the lab VMM on this host (fixtures/text/, see
fixtures/README.md); the rest are hand-written in the formats those tools print.
"""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from kvmtrace import functions
from kvmtrace.sources.frame import conform
from kvmtrace.sources.stream import load
from kvmtrace.sources.text.payloads import KVM_REQ_TLB_FLUSH_GUEST_BIT, decode
from kvmtrace.sources.text.sp_text import ROLE_SMM_LOW, parse_sp
from kvmtrace.schema import (ROLE_AD_DISABLED, ROLE_CR0_WP, ROLE_DIRECT, ROLE_EFER_NX,
                             ROLE_HAS_4_BYTE_GPTE, ROLE_INVALID, ROLE_SMAP_ANDNOT_WP,
                             ROLE_SMEP_ANDNOT_WP, Kind)
from kvmtrace.sources.native import TraceFileError

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "fixtures"
TEXT = FIX / "text"
LAB = FIX / "lab_two_vcpu_flush.ftrace.txt"

# Role bits that the kernel's KVM_MMU_PAGE_PRINTK shows (see sp_text's docstring).
KERNEL_TEXT_ROLE_BITS = (0xF | ROLE_HAS_4_BYTE_GPTE | 0x3 << 5 | ROLE_DIRECT | 0x7 << 8
                         | ROLE_INVALID | ROLE_EFER_NX | ROLE_AD_DISABLED)

# The test's own map from printed event name to kind, for the independent count.
EVENT_KIND = {
    "kvm_pv_tlb_flush": Kind.FLUSH_REQUEST_PV,
    "kvm_mmu_get_page": Kind.SP_GET,
    "kvm_mmu_unsync_page": Kind.SP_UNSYNC,
    "kvm_mmu_sync_page": Kind.SP_SYNC,
    "kvm_mmu_prepare_zap_page": Kind.SP_ZAP,
    "kvm_mmu_set_spte": Kind.SPTE_INSTALL,
    "kvm_emulate_insn": Kind.EMULATE,
    "kvm_pio": Kind.PIO,
    "kvm_userspace_exit": Kind.USERSPACE_EXIT,
    "kvm_mmu_pagetable_walk": Kind.WALK_START,
    "kvm_mmu_paging_element": Kind.WALK_ELEMENT,
    "kvm_entry": Kind.GUEST_ENTRY,
    "kvm_exit": Kind.GUEST_EXIT,
    "kvm_mmio": Kind.MMIO,
    "kvm_hypercall": Kind.HYPERCALL,
    "kvm_page_fault": Kind.PAGE_FAULT,
}


def grep_counts(path: Path) -> Counter:
    """Count event lines per name with a plain regex, independent of the importer."""
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        m = re.search(r"\d\.\d{6,9}: +(?:kvm:|kvmmmu:)?(\w+):", line)
        if m:
            counts[m.group(1)] += 1
    return counts


def kind_counts(events: pd.DataFrame) -> Counter:
    return Counter({Kind(int(k)): int(n) for k, n in events["kind"].value_counts().items()})


def one(events: pd.DataFrame, **where) -> pd.Series:
    sel = events
    for col, val in where.items():
        sel = sel[sel[col] == val]
    assert len(sel) == 1, f"expected one row for {where}, got {len(sel)}"
    return sel.iloc[0]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


# ----------------------------------------------------------------------------- lab capture

def test_lab_capture_accounts_for_every_model_event():
    trace = load(LAB)
    ev = trace.events
    grep = grep_counts(LAB)
    got = kind_counts(ev)
    for name, kind in EVENT_KIND.items():
        assert got.get(kind, 0) == grep.get(name, 0), name
    # Every event line is either a row or an ignored event: nothing vanishes.
    ignored = sum(n for name, n in grep.items() if name not in EVENT_KIND)
    assert len(ev) + ignored == 182 == sum(grep.values())
    assert got[Kind.FLUSH_REQUEST_PV] == 6 and got[Kind.SP_ZAP] == 5


def test_lab_capture_decoded_values():
    trace = load(LAB)
    ev = trace.events
    sync = one(ev, kind=Kind.SP_SYNC)
    assert (sync.gfn, sync.level, sync.unsync, sync.tid, sync.comm) == (4, 1, 1, 13939, "pvmvcpu1")
    assert sync.role == 0x1701          # the kernel's 0x3701 less cr0_wp, which text omits
    assert sync.ts == 2252_596_630_000
    flush = one(ev, kind=Kind.FLUSH_REQUEST_PV, need_flush=1)
    assert (flush.vcpu, flush.tid, flush.ts) == (1, 13939, 2252_596_626_000)
    assert (ev[ev.kind == Kind.FLUSH_REQUEST_PV].need_flush == 0).sum() == 5
    new_root = one(ev, kind=Kind.SP_GET, gfn=1, created=1)
    assert (new_root.level, new_root.role, new_root.root_count) == (4, 0x1704, 0)
    existing = one(ev, kind=Kind.SP_GET, created=0)
    assert (existing.gfn, existing.root_count, existing.tid) == (1, 1, 13938)
    unsync = one(ev, kind=Kind.SP_UNSYNC)
    assert (unsync.gfn, unsync.unsync, unsync.tid) == (4, 0, 13938)
    zaps = ev[ev.kind == Kind.SP_ZAP]
    assert zaps.comm.tolist()[:4] == ["kvm-nx-lpage-re"] * 4
    assert (zaps.tid.tolist()[:4], zaps.tid.iloc[4]) == ([13940] * 4, 13897)
    assert zaps.role.iloc[4] & ROLE_INVALID and not zaps.role.iloc[3] & ROLE_INVALID
    assert zaps.root_count.iloc[3] == 2
    spte = one(ev, kind=Kind.SPTE_INSTALL, gfn=0x51)
    assert (spte.level, spte.value, spte.tid) == (1, 0x1196A8A25, 13939)
    assert one(ev, kind=Kind.PIO, value=0x21).tid == 13939
    assert one(ev, kind=Kind.EMULATE, value=0x10112).tid == 13939
    assert set(ev[ev.kind == Kind.USERSPACE_EXIT].value) == {2}
    walk = ev[ev.kind == Kind.WALK_START]
    assert walk.value.iloc[0] == 0x10100
    elem = ev[ev.kind == Kind.WALK_ELEMENT].iloc[0]
    assert (elem.value, elem.level) == (0x2007, 4)
    assert (ev.vcpu[~ev.kind.isin([Kind.FLUSH_REQUEST_PV])] == -1).all()


def test_lab_capture_meta_and_notes():
    trace = load(LAB)
    m = trace.meta
    assert (m.source, m.source_format, m.source_path) == ("imported", "ftrace", str(LAB))
    assert m.vm_assignment == "single-vm-assumed"
    assert set(trace.events.tgid) == {0}
    assert m.start_time_ns == 2252_595_347_000 == int(trace.events.ts.min())
    assert m.lost_events == 0
    ignored = [n for n in m.notes if n.startswith("ignored")]
    assert len(ignored) == 1 and "kvm_fpu (12)" in ignored[0] and "ignored 56 events" in ignored[0]
    assert trace.warnings == m.notes
    assert trace.events.ts.is_monotonic_increasing


@pytest.mark.parametrize("path", sorted(TEXT.glob("*.txt")) + [LAB], ids=lambda p: p.name)
def test_every_fixture_imports_to_a_conforming_frame(path):
    ev = load(path).events
    assert len(ev) > 0
    assert conform(ev).equals(ev)
    assert ev.ts.is_monotonic_increasing


# ----------------------------------------------------------------------------- dialects

def test_dialect_is_chosen_by_content_not_name(tmp_path):
    as_ftrace = write(tmp_path, "capture.ftrace.txt", (TEXT / "perf_script_pid_tid.txt").read_text())
    assert load(as_ftrace).meta.source_format == "perf"
    as_perf = write(tmp_path, "perf.script", (TEXT / "trace_cmd_report.txt").read_text())
    assert load(as_perf).meta.source_format == "trace-cmd"
    assert load(TEXT / "ftrace_tgid_irqinfo.txt").meta.source_format == "ftrace"


def test_tgid_column_assigns_threads_to_the_vmm():
    trace = load(TEXT / "ftrace_tgid_irqinfo.txt")
    ev = trace.events
    assert trace.meta.vm_assignment == "tgid"
    assert set(ev.tgid) == {6529}
    assert set(ev.comm) == {"pvmvcpu0", "pvmvcpu1", "kvm-nx-lpage-re", "pvmvmm"}
    assert not any("assumed" in n for n in trace.meta.notes)


def test_same_capture_same_events_in_every_trace_cmd_form():
    """ftrace_tgid_irqinfo and the trace_cmd_report* files are one capture (same buffer)."""
    ftrace = load(TEXT / "ftrace_tgid_irqinfo.txt").events
    raw = load(TEXT / "trace_cmd_report_raw.txt").events
    plugin = load(TEXT / "trace_cmd_report.txt")
    lat = load(TEXT / "trace_cmd_report_latency_ns.txt").events
    common = ["cpu", "tid", "vcpu", "kind", "level", "root_count", "unsync", "created",
              "need_flush", "value"]
    assert ftrace[common + ["ts", "gfn", "comm"]].equals(raw[common + ["ts", "gfn", "comm"]])
    assert ftrace[common + ["ts"]].equals(plugin.events[common + ["ts"]])
    assert ftrace[common].equals(lat[common])
    # -t prints nanoseconds: same instants, finer.
    assert ((lat.ts - ftrace.ts).abs() < 1000).all() and (lat.ts % 1000 != 0).any()
    sp = ftrace.kind.isin([Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP])
    # Raw fields carry the exact role word; the kernel's text the bits it prints.
    assert set(raw.role[sp]) == {0x3701, 0x3702, 0x3703, 0x3704, 0x3F04}
    assert (ftrace.role[sp] == raw.role[sp] & KERNEL_TEXT_ROLE_BITS).all()
    # libtraceevent's kvm plugin shows cr0_wp but drops the gfn of all but get_page.
    assert (plugin.events.role[sp] == raw.role[sp]).all()
    no_gfn = plugin.events[sp & (plugin.events.gfn == -1)]
    assert set(no_gfn.kind) == {Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP} and len(no_gfn) == 7
    assert any("omits the gfn" in n for n in plugin.meta.notes)
    assert set(lat.comm) >= {"kvm-nx-l"}            # -l cuts comm to 8 characters


def test_perf_script_pid_tid_and_failed_to_parse_fields():
    path = TEXT / "perf_script_pid_tid.txt"
    trace = load(path)
    ev = trace.events
    assert trace.meta.source_format == "perf" and trace.meta.vm_assignment == "tgid"
    assert set(ev.tgid) == {6262} and set(ev.tid) == {6262, 6304, 6305, 6306}
    grep = grep_counts(path)
    got = kind_counts(ev)
    for name, kind in EVENT_KIND.items():
        assert got.get(kind, 0) == grep.get(name, 0), name
    # perf 6.1 cannot parse the SP print fmt and prints raw decimal fields.
    sync = one(ev, kind=Kind.SP_SYNC)
    assert (sync.gfn, sync.role, sync.level, sync.unsync, sync.tid) == (4, 0x3701, 1, 1, 6305)
    assert one(ev, kind=Kind.FLUSH_REQUEST_PV, need_flush=1).vcpu == 1
    assert ev.ts.iloc[0] == 524_990_422_000


def test_perf_script_default_fields_and_header():
    trace = load(TEXT / "perf_script_header.txt")
    assert trace.meta.kernel_release == "6.18.44-fc-v657"
    assert trace.meta.vm_assignment == "single-vm-assumed"
    assert set(trace.events.tid) == {6262, 6304, 6305, 6306}
    same = load(TEXT / "perf_script_pid_tid.txt").events
    cols = ["ts", "tid", "kind", "gfn", "role", "value", "vcpu"]
    assert trace.events[cols].equals(same[cols])


def test_ftrace_without_irq_flags():
    ev = load(TEXT / "ftrace_no_irqinfo.txt").events
    assert one(ev, kind=Kind.SP_SYNC).gfn == 4
    assert len(ev[ev.kind == Kind.FLUSH_REQUEST_PV]) == 6


def test_vmx_host_kprobes_names_and_exit_requests():
    trace = load(TEXT / "ftrace_vmx_kprobes.txt")
    ev = trace.events
    t2102 = ev[ev.tid == 2102]
    assert [Kind(k) for k in t2102.kind[:8]] == [
        Kind.FLUSH_REQUEST_PV, Kind.FLUSH_GUEST_ENTRY, Kind.MMU_UNLOAD, Kind.FLUSH_GUEST_RETURN,
        Kind.MMU_LOAD_ENTRY, Kind.SYNC_ROOTS, Kind.MMU_LOAD_RETURN, Kind.GUEST_ENTRY]
    assert set(t2102.comm) == {"CPU 1/KVM"}            # "<...>" filled from the thread's name
    loads = t2102[t2102.kind == Kind.MMU_LOAD_RETURN]
    assert loads.value.tolist() == [0, -12]            # arg1=0xfffffff4 is -ENOMEM
    exit0 = ev[(ev.tid == 2101) & (ev.kind == Kind.GUEST_EXIT)]
    assert exit0.value.tolist() == [1 << KVM_REQ_TLB_FLUSH_GUEST_BIT, 0]
    guest_req = one(ev, kind=Kind.FLUSH_REQUEST_GUEST)
    assert (guest_req.vcpu, guest_req.ts) == (0, exit0.ts.iloc[0])
    # The exit row precedes its request row at the same instant.
    idx = ev.index[ev.ts == guest_req.ts].tolist()
    assert [Kind(k) for k in ev.kind[idx]] == [Kind.GUEST_EXIT, Kind.FLUSH_REQUEST_GUEST]
    t2101 = ev[ev.tid == 2101]
    assert [Kind(k) for k in t2101.kind[3:8]] == [
        Kind.FLUSH_SERVICE, Kind.SYNC_ROOTS, Kind.SP_SYNC, Kind.SYNC_PREV_ROOTS, Kind.HW_FLUSH]
    assert one(ev, kind=Kind.GUEST_ENTRY, tid=2101, ts=8812_104_511_000).value == \
        0xFFFFFFFF81A3C2F4 - (1 << 64)
    assert one(ev, kind=Kind.PAGE_FAULT).vcpu == 0
    assert one(ev, kind=Kind.MMIO).value == 0xFEE000B0
    assert one(ev, kind=Kind.HYPERCALL).value == 0xB
    assert one(ev, kind=Kind.FLUSH_REQUEST_HYPERV).value == 0x3
    assert ev[ev.kind == Kind.USERSPACE_EXIT].value.tolist() == [-4, 6]
    zap = ev[ev.kind == Kind.SP_ZAP]
    assert zap.comm.tolist() == ["kvm-nx-lpage-re"] * 2 and zap.gfn.tolist() == [0x1B3C7, 0x2A40]
    assert zap.role.iloc[1] & ROLE_DIRECT
    assert set(ev.tgid) == {2090}
    assert "kprobe:vmx_flush_tlb_guest" in trace.meta.probes
    assert "kretprobe:kvm_mmu_load" in trace.meta.probes
    notes = " ".join(trace.meta.notes)
    assert "entry_probe (1)" in notes and "kvm_fpu (2)" in notes


@pytest.mark.parametrize("name", ["p_kvm_mmu_load_0", "zz_top", "kvmtrace_load", "x"])
def test_kprobe_recognised_by_function_whatever_its_name(tmp_path, name):
    text = ("# tracer: nop\n"
            f"       CPU 3/KVM-777     [001] .....   100.000001: {name}: (kvm_mmu_load+0x0/0x1d0 [kvm])\n"
            f"       CPU 3/KVM-777     [001] .....   100.000002: {name}_r: "
            "(vcpu_enter_guest+0x4f1/0x1a70 [kvm] <- kvm_mmu_load [kvm]) arg1=0x0\n"
            f"       CPU 3/KVM-777     [001] .....   100.000003: {name}2: (kvm_mmu_sync_roots+0x4/0x1e0)\n"
            f"       CPU 3/KVM-777     [001] .....   100.000004: {name}3: (svm_flush_tlb_asid+0x0/0x40 [kvm_amd])\n"
            f"       CPU 3/KVM-777     [001] .....   100.000005: {name}4: (foo_flush_tlb_guest+0x0/0x40 [foo])\n")
    ev = load(write(tmp_path, "k.txt", text)).events
    assert [Kind(k) for k in ev.kind] == [Kind.MMU_LOAD_ENTRY, Kind.MMU_LOAD_RETURN,
                                          Kind.SYNC_ROOTS, Kind.HW_FLUSH, Kind.HW_FLUSH]
    assert set(ev.comm) == {"CPU 3/KVM"} and set(ev.tid) == {777}


def test_perf_probes_by_event_name():
    trace = load(TEXT / "perf_script_probes.txt")
    ev = trace.events
    assert [Kind(k) for k in ev.kind] == [
        Kind.FLUSH_REQUEST_PV, Kind.FLUSH_GUEST_ENTRY, Kind.MMU_UNLOAD, Kind.FLUSH_GUEST_RETURN,
        Kind.MMU_LOAD_ENTRY, Kind.SYNC_ROOTS, Kind.SP_SYNC, Kind.MMU_LOAD_RETURN, Kind.SYNC_ROOTS,
        Kind.HW_FLUSH, Kind.GUEST_ENTRY, Kind.GUEST_EXIT, Kind.GUEST_EXIT, Kind.FLUSH_REQUEST_GUEST]
    sync = one(ev, kind=Kind.SP_SYNC)
    assert (sync.gfn, sync.role, sync.unsync) == (0x1B3C7, 0x3701, 1)   # decimal raw fields
    assert ev.ts.iloc[0] == 8812_105_001_223                             # 9 decimals exact
    assert set(ev.tgid) == {2090} and set(ev.comm) == {"CPU 1/KVM", "CPU 0/KVM"}
    assert "probe:kvm_arch_vcpu_ioctl_run (1)" in " ".join(trace.meta.notes)


def test_old_kernel_print_formats():
    trace = load(TEXT / "ftrace_old_kernels.txt")
    ev = trace.events
    gets = ev[ev.kind == Kind.SP_GET]
    # 3.x "sp gfn 7a 2 pae q0 ...": 8-byte gptes; without " pae": 4-byte.
    assert gets.role.tolist() == [0x1702, 0x1732, 0x1781, 0x1472]
    assert gets.gfn.tolist() == [0x7A, 0x7B, 0x100, 0x9D]
    assert gets.created.tolist() == [1, 1, 0, 1]
    assert one(ev, kind=Kind.SP_UNSYNC).role == 0x1701 | ROLE_AD_DISABLED
    zap = one(ev, kind=Kind.SP_ZAP)
    assert zap.role == 4 | 0x700 | ROLE_INVALID and zap.root_count == 1 and zap.gfn == 0x3F0
    assert ev[ev.kind == Kind.GUEST_ENTRY].value.tolist() == [0, 0xFFFFFFFF81A3C2F4 - (1 << 64)]
    assert ev[ev.kind == Kind.GUEST_EXIT].vcpu.tolist() == [-1, 2]
    assert ev[ev.kind == Kind.GUEST_EXIT].value.tolist() == [-1, -1]
    assert one(ev, kind=Kind.PAGE_FAULT).value == 0x7F3A2C1000
    assert one(ev, kind=Kind.USERSPACE_EXIT).value == -14
    assert one(ev, kind=Kind.FLUSH_REQUEST_HYPERV).value == 1
    lost = one(ev, kind=Kind.LOST)
    assert (lost.cpu, lost.value, lost.ts) == (5, -1, 1523_331_020_000)
    assert trace.meta.lost_events == 4                          # 20 written, 16 in buffer
    assert any("overwritten" in n for n in trace.meta.notes)


# ----------------------------------------------------------------------------- losses

def test_trace_pipe_lost_line_becomes_a_lost_row():
    trace = load(TEXT / "trace_pipe_lost.txt")
    ev = trace.events
    lost = one(ev, kind=Kind.LOST)
    assert (lost.cpu, lost.value, lost.ts, lost.tid) == (1, 2935, 596_359_633_000, -1)
    assert trace.meta.lost_per_cpu == {"1": 2935} and trace.meta.lost_events == 2935
    assert ev.kind.iloc[0] == Kind.LOST


def test_trace_cmd_events_dropped(tmp_path):
    text = ("version = 6\ncpus=2\n"
            "        pvmvcpu1-6571  [001]   561.390985: kvm_pv_tlb_flush:     vcpu 1 need_flush_tlb false\n"
            "CPU:1 [204600 EVENTS DROPPED]\n"
            "        pvmvcpu0-6570  [000]   561.391199: kvm_pv_tlb_flush:     vcpu 0 need_flush_tlb true\n"
            "        pvmvcpu1-6571  [001]   561.391200: kvm_pv_tlb_flush:     vcpu 1 need_flush_tlb true\n"
            "CPU:0 [EVENTS DROPPED]\n")
    trace = load(write(tmp_path, "tc.txt", text))
    ev = trace.events
    assert [Kind(k) for k in ev.kind] == [Kind.FLUSH_REQUEST_PV, Kind.FLUSH_REQUEST_PV,
                                          Kind.LOST, Kind.FLUSH_REQUEST_PV, Kind.LOST]
    assert ev[ev.kind == Kind.LOST][["cpu", "value"]].values.tolist() == [[1, 204600], [0, -1]]
    assert trace.meta.lost_per_cpu == {"1": 204600}


def test_stack_and_call_chain_lines_are_not_events(tmp_path):
    ftrace = ("# tracer: nop\n"
              "   a-10   [000] .....   5.000100: kvm_pio: pio_write at 0x1 size 1 count 1 val 0x0 \n"
              "   a-10   [000] .....   5.000101: <stack trace>\n"
              " => kvm_fast_pio\n"
              " => vcpu_enter_guest\n"
              "   a-10   [000] .....   5.000102: kvm_pio: pio_write at 0x2 size 1 count 1 val 0x0 \n")
    assert load(write(tmp_path, "s.txt", ftrace)).events.value.tolist() == [1, 2]
    perf = ("       CPU 0/KVM  2090/2101  [002]  8812.104511:  kvm:kvm_pio: pio_write at 0x1 size 1 count 1 val 0x0 \n"
            "\tffffffffc0a2f1b0 kvm_fast_pio+0x50 ([kernel.kallsyms])\n"
            "\tffffffffc0a31c44 vcpu_enter_guest+0x7e4 ([kernel.kallsyms])\n"
            "\n"
            "       CPU 0/KVM  2090/2101  [002]  8812.104512:  250000 cpu-clock:  ffffffff81a3c2f4 native_safe_halt+0x4 ([kernel.kallsyms])\n"
            "       CPU 0/KVM  2090/2101  [002]  8812.104513:  kvm:kvm_pio: pio_write at 0x2 size 1 count 1 val 0x0 \n")
    trace = load(write(tmp_path, "p.txt", perf))
    assert trace.events.value.tolist() == [1, 2]
    assert "cpu-clock (1)" in " ".join(trace.meta.notes)


# ----------------------------------------------------------------------------- bad input

def _lab_events_text() -> str:
    return LAB.read_text()


def test_partial_last_line_is_skipped_with_a_warning(tmp_path):
    text = _lab_events_text()
    cut = text[: text.rindex("sync") + 2]              # last line cut inside its body
    trace = load(write(tmp_path, "cut.txt", cut))
    full = load(LAB).events
    assert len(trace.events) == len(full) - 1
    assert any("partial last line 194" in w for w in trace.warnings)


def test_unparsable_last_line_with_newline_is_skipped(tmp_path):
    trace = load(write(tmp_path, "t.txt", _lab_events_text() + "   pvmvmm-13897   [001] d..1\n"))
    assert len(trace.events) == len(load(LAB).events)
    assert any("partial last line 195" in w for w in trace.warnings)


def test_unparsable_line_in_the_middle_is_skipped_and_counted(tmp_path):
    lines = _lab_events_text().splitlines(keepends=True)
    lines.insert(40, "this is not a trace line\n")
    path = write(tmp_path, "bad.txt", "".join(lines))
    trace = load(path)
    assert trace.events.equals(load(LAB).events)
    skipped = trace.skipped_lines
    assert skipped["total"] == 1 and skipped["decisive"] == 0
    assert skipped["by_reason"][0]["examples"][0]["line"] == 41
    with pytest.raises(TraceFileError, match=r"line 41: not an event line"):
        load(path, strict=True)


def test_undecodable_known_event_in_the_middle_is_skipped_and_decisive(tmp_path):
    lines = _lab_events_text().splitlines(keepends=True)
    lines[50] = "   pvmvcpu1-13939   [000] .....  2252.595555: kvm_pv_tlb_flush: vcpu one\n"
    path = write(tmp_path, "bad.txt", "".join(lines))
    trace = load(path)
    assert trace.skipped_lines["decisive"] == 1
    assert trace.skipped_lines["by_reason"][0]["reason"] == "cannot decode the kvm_pv_tlb_flush payload"
    assert any("could change the verdict" in n for n in trace.meta.notes)
    with pytest.raises(TraceFileError, match=r"line 51: cannot decode the kvm_pv_tlb_flush"):
        load(path, strict=True)


@pytest.mark.parametrize("content", [
    b"hello world\nthis is not a trace\n",
    bytes(range(256)) * 40,
    b"\x7fELF\x02\x01\x01" + b"\x00" * 500,
    b"\n\n\n",
    b"# only a comment\n",
], ids=["garbage", "binary", "elf", "blank", "comment"])
def test_not_a_trace_is_a_trace_file_error(tmp_path, content):
    with pytest.raises(TraceFileError, match="not a recognised trace"):
        load(write(tmp_path, "x.txt", content))


@pytest.mark.parametrize("content", [b"", b"garbage garbage\n", bytes(range(256)) * 8],
                         ids=["empty", "garbage", "binary"])
def test_cli_show_bad_input_exits_2_with_one_line(tmp_path, content):
    path = write(tmp_path, "input.txt", content)
    proc = subprocess.run([sys.executable, "-m", "kvmtrace", "show", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_number_too_big_for_its_column_is_a_trace_file_error(tmp_path):
    text = ("# tracer: nop\n"
            "   a-10   [000] .....   5.000100: kvm_pv_tlb_flush: vcpu 99999999999 need_flush_tlb true\n")
    path = write(tmp_path, "big.txt", text)
    with pytest.raises(TraceFileError, match="no line decoded.*vcpu value out of range"):
        load(path)
    with pytest.raises(TraceFileError, match="line 2: vcpu value out of range"):
        load(path, strict=True)


def test_header_only_ftrace_is_an_empty_trace(tmp_path):
    trace = load(write(tmp_path, "h.txt", "# tracer: nop\n#\n# entries-in-buffer/entries-written: 0/0   #P:2\n"))
    assert len(trace.events) == 0 and any("no events" in w for w in trace.warnings)


# ----------------------------------------------------------------------------- time, threads

def test_out_of_order_cpus_are_sorted_stably(tmp_path):
    text = ("# tracer: nop\n"
            "   a-10   [001] .....   5.000300: kvm_pio: pio_write at 0x1 size 1 count 1 val 0x0 \n"
            "   a-10   [001] .....   5.000300: kvm_pio: pio_write at 0x2 size 1 count 1 val 0x0 \n"
            "   b-11   [000] .....   5.000100: kvm_pio: pio_write at 0x3 size 1 count 1 val 0x0 \n"
            "   b-11   [000] .....   5.000300: kvm_pio: pio_write at 0x4 size 1 count 1 val 0x0 \n")
    ev = load(write(tmp_path, "o.txt", text)).events
    assert ev.value.tolist() == [3, 1, 2, 4]
    assert ev.ts.tolist() == [5_000_100_000, 5_000_300_000, 5_000_300_000, 5_000_300_000]


def test_timestamps_going_back_on_one_cpu_are_a_trace_file_error(tmp_path):
    # The lab's flush request and the sync_page that follows it, swapped: both on CPU 0.
    lines = LAB.read_text().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if "need_flush_tlb true" in line)
    assert "kvm_mmu_sync_page" in lines[i + 1]
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    with pytest.raises(TraceFileError, match=r"timestamps go back on CPU 0 \(2252596626000 ns "
                                             r"after 2252596630000 ns\)"):
        load(write(tmp_path, "swapped.txt", "".join(lines)))


def test_timestamps_exact_without_float_rounding(tmp_path):
    text = ("cpus=1\n"
            "   a-10   [000]  98765.123456789: kvm_pio: pio_write at 0x1 size 1 count 1 val 0x0 \n"
            "   a-10   [000]  98765.999999999: kvm_pio: pio_write at 0x2 size 1 count 1 val 0x0 \n")
    ev = load(write(tmp_path, "t.txt", text)).events
    assert ev.ts.tolist() == [98765_123_456_789, 98765_999_999_999]


def test_counter_clock_timestamps_are_kept_and_noted(tmp_path):
    text = ("# tracer: nop\n"
            "   a-10   [000] ..... 905117272711: kvm_pio: pio_write at 0x1 size 1 count 1 val 0x0 \n")
    trace = load(write(tmp_path, "c.txt", text))
    assert trace.events.ts.tolist() == [905117272711] and trace.meta.clock == "counter"


def test_tgid_map_assigns_threads(tmp_path):
    path = TEXT / "ftrace_no_irqinfo.txt"
    ev = load(path).events
    tids = sorted(set(ev.tid))
    vmm = min(tids)                                    # pvmvmm, the main thread
    trace = load(path, tgid_map={t: vmm for t in tids if t != vmm})
    assert trace.meta.vm_assignment == "tgid-map" and set(trace.events.tgid) == {vmm}
    partial = load(path, tgid_map={tids[1]: vmm})      # others join the only VM, noted
    assert set(partial.events.tgid) == {vmm}
    assert any("assigned to the only VM" in n for n in partial.meta.notes)
    with pytest.raises(TraceFileError, match="belong to none of the VMs"):
        load(path, tgid_map={tids[1]: 1, tids[2]: 2})


def test_gzipped_text(tmp_path):
    p = tmp_path / "lab.txt.gz"
    p.write_bytes(gzip.compress(LAB.read_bytes()))
    assert load(p).events.equals(load(LAB).events)


# ----------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".jsonl.gz"])
def test_convert_lab_capture_round_trip(tmp_path, suffix):
    out = tmp_path / f"lab{suffix}"
    proc = subprocess.run([sys.executable, "-m", "kvmtrace", "convert", str(LAB), "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    original = load(LAB)
    back = load(out)
    assert back.events.equals(original.events)
    assert back.meta == original.meta


# ----------------------------------------------------------------------------- SP text

ACCESS = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")


def kernel_sp_text(gfn, level, four_byte, quadrant, direct, access, invalid, efer_nx, ad_disabled,
                   root_count, unsync, created, gen=0) -> str:
    """mmutrace.h KVM_MMU_PAGE_PRINTK (6.x), written out here from its format string."""
    s = ("sp gen %u gfn %x l%u %u-byte q%u%s %s%s %snxe %sad root %u %s" % (
        gen, gfn, level, 4 if four_byte else 8, quadrant, " direct" if direct else "",
        ACCESS[access], " invalid" if invalid else "", "" if efer_nx else "!",
        "!" if ad_disabled else "", root_count, "unsync" if unsync else "sync"))
    return s if created is None else s + (" new" if created else " existing")


def old_sp_text(gfn, level, four_byte, quadrant, direct, access, invalid, efer_nx,
                root_count, unsync) -> str:
    """3.x: "sp gfn %llx %u%s q%u%s %s%s %snxe root %u %s" (" pae" = 8-byte gptes)."""
    return "sp gfn %x %u%s q%u%s %s%s %snxe root %u %s" % (
        gfn, level, "" if four_byte else " pae", quadrant, " direct" if direct else "",
        ACCESS[access], " invalid" if invalid else "", "" if efer_nx else "!", root_count,
        "unsync" if unsync else "sync")


def plugin_sp_text(role: int, root_count: int, unsync: int, gfn=None, created=None) -> str:
    """libtraceevent plugins/plugin_kvm.c kvm_mmu_print_role(), from its format string."""
    s = "%u q%u%s %s%s %spae %snxe %swp%s%s%s root %u %s" % (
        role & 0xF, role >> 5 & 3, " direct" if role & ROLE_DIRECT else "", ACCESS[role >> 8 & 7],
        " invalid" if role & ROLE_INVALID else "", "" if role & ROLE_HAS_4_BYTE_GPTE else "!",
        "" if role & ROLE_EFER_NX else "!", "" if role & ROLE_CR0_WP else "!",
        " smep" if role & ROLE_SMEP_ANDNOT_WP else "", " smap" if role & ROLE_SMAP_ANDNOT_WP else "",
        " smm" if role >> 24 & 0xFF else "", root_count, "unsync" if unsync else "sync")
    if gfn is not None:
        s = "%s sp gfn %x %s" % ("new" if created else "existing", gfn, s)
    return s


sp_fields = st.fixed_dictionaries({
    "gfn": st.integers(0, (1 << 52) - 1), "level": st.integers(1, 5),
    "four_byte": st.booleans(), "quadrant": st.integers(0, 3), "direct": st.booleans(),
    "access": st.integers(0, 7), "invalid": st.booleans(), "efer_nx": st.booleans(),
    "ad_disabled": st.booleans(), "root_count": st.integers(0, 2**32 - 1),
    "unsync": st.booleans(), "created": st.sampled_from([None, True, False]),
})


def role_of(f: dict) -> int:
    return (f["level"] | (ROLE_HAS_4_BYTE_GPTE if f["four_byte"] else 0) | f["quadrant"] << 5
            | (ROLE_DIRECT if f["direct"] else 0) | f["access"] << 8
            | (ROLE_INVALID if f["invalid"] else 0) | (ROLE_EFER_NX if f["efer_nx"] else 0)
            | (ROLE_AD_DISABLED if f["ad_disabled"] else 0))


@settings(max_examples=300, deadline=None)
@given(sp_fields, st.integers(0, 255))
def test_kernel_sp_text_round_trip(f, gen):
    sp = parse_sp(kernel_sp_text(**f, gen=gen))
    assert sp is not None
    assert (sp.gfn, sp.role, sp.level, sp.root_count, sp.unsync) == (
        f["gfn"], role_of(f), f["level"], f["root_count"], int(f["unsync"]))
    assert sp.created == (-1 if f["created"] is None else int(f["created"]))
    assert not sp.plugin


@settings(max_examples=200, deadline=None)
@given(sp_fields)
def test_old_sp_text_round_trip(f):
    sp = parse_sp(old_sp_text(**{k: v for k, v in f.items() if k not in ("ad_disabled", "created")}))
    assert sp is not None
    assert (sp.gfn, sp.role) == (f["gfn"], role_of({**f, "ad_disabled": False}))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 100), st.booleans(), st.integers(0, 2**40),
       st.sampled_from([None, True, False]))
def test_plugin_sp_text_round_trip(word, root_count, unsync, gfn, created):
    shown = 0xF | ROLE_HAS_4_BYTE_GPTE | 3 << 5 | ROLE_DIRECT | 7 << 8 | ROLE_INVALID | \
        ROLE_EFER_NX | ROLE_CR0_WP | ROLE_SMEP_ANDNOT_WP | ROLE_SMAP_ANDNOT_WP
    role = word & shown
    text = plugin_sp_text(word, root_count, int(unsync), gfn if created is not None else None, created)
    sp = parse_sp(text)
    assert sp is not None and sp.plugin
    assert sp.role & shown == role and sp.root_count == root_count and sp.unsync == int(unsync)
    assert bool(sp.role & ROLE_SMM_LOW) == bool(word >> 24 & 0xFF)
    assert sp.gfn == (gfn if created is not None else -1)


@pytest.mark.parametrize("event,body", [
    ("kvm_mmu_sync_page", "sp gen 0 gfn 4 l1 8-byte q0 wux nxe ad root 0"),
    ("kvm_mmu_sync_page", "sp gen 0 gfn 4 l1 8-byte q0 wux nxe ad root 0 synced"),
    ("kvm_pv_tlb_flush", "vcpu 1 need_flush_tlb maybe"),
    ("kvm_entry", "rip 0x10"),
    ("kvm_pio", "pio_write at port 0x20"),
])
def test_decoders_refuse_malformed_bodies(event, body):
    assert decode(event, body) is None


# ----------------------------------------------------------------------------- functions table

def test_function_kinds():
    assert functions.kind_for("kvm_mmu_load", False) == Kind.MMU_LOAD_ENTRY
    assert functions.kind_for("kvm_mmu_load", True) == Kind.MMU_LOAD_RETURN
    assert functions.kind_for("kvm_vcpu_flush_tlb_guest", False) == Kind.FLUSH_GUEST_ENTRY
    assert functions.kind_for("kvm_service_local_tlb_flush_requests", False) == Kind.FLUSH_SERVICE
    for vendor in ("vmx_flush_tlb_guest", "svm_flush_tlb", "svm_flush_tlb_current",
                   "svm_flush_tlb_asid", "svm_flush_tlb_guest", "pvm_flush_tlb_guest",
                   "tdx_flush_tlb_guest"):
        assert functions.kind_for(vendor, False) == Kind.HW_FLUSH, vendor
    assert functions.kind_for("kvm_mmu_sync_roots.isra.0", False) == Kind.SYNC_ROOTS
    assert functions.kind_for("kvm_mmu_unload", True) is None
    assert functions.kind_for("kvm_arch_vcpu_ioctl_run", False) is None
    assert functions.perf_probe_function("kvm_mmu_load__return") == ("kvm_mmu_load", True)
    assert functions.perf_probe_function("kvm_mmu_sync_roots_2") == ("kvm_mmu_sync_roots", False)
    assert functions.perf_probe_function("do_sys_open") is None
    assert all(f.role and f.versions for f in functions.PROBED_FUNCTIONS)
