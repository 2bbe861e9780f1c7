"""Guest flush paths (kvmtrace/analysis/flushpaths.py): one window per path with its own
opener and obligation, on hand-made VMX traces (fixtures/flushpaths/make_handmade.py, each
event citing the kernel source that emits it) and on the decoders that reveal each path."""
import json
from pathlib import Path

import pytest

from kvmtrace.analysis.flushpaths import BY_NAME, EXERCISE_PATHS, PATHS, path_of
from kvmtrace.schema import Kind
from kvmtrace.sources.text.payloads import decode, insn_flush

from cli_support import run_main

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "flushpaths"
import importlib.util
_spec = importlib.util.spec_from_file_location("make_handmade", FIX / "make_handmade.py")
handmade = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(handmade)


def test_every_path_has_its_own_opener_kind_and_an_obligation():
    assert len({int(p.opener) for p in PATHS}) == len(PATHS)
    for p in PATHS:
        assert path_of(p.opener) is p and p.obligation in ("full", "root", "address")
        assert p.host and p.guest_action
    for kind in (Kind.FLUSH_PVM_HYPERCALL, Kind.FLUSH_CR3, Kind.FLUSH_CR4, Kind.FLUSH_INVLPG,
                 Kind.FLUSH_INVPCID, Kind.FLUSH_PVM_LOAD_PGTBL):
        assert 40 <= kind <= 49
    assert "all" not in EXERCISE_PATHS and "steal-time" in EXERCISE_PATHS


@pytest.mark.parametrize("path", sorted(handmade.PATHS))
@pytest.mark.parametrize("synced", [True, False])
def test_handmade_vmx_trace_verdicts(path, synced, capsys):
    name = FIX / f"vmx_{path}_{'ok' if synced else 'nosync'}.txt"
    assert name.read_text() == handmade.HEAD + "".join(handmade.lines(path, synced))
    _, out, _ = run_main(["analyze", "--json", str(name)], capsys)
    d = json.loads(out)
    want = handmade.EXPECTED[path][0 if synced else 1]
    assert d["verdict"] == want, (path, synced, d["findings"])
    assert d["windows_by_path"][path]["meaningful"] == 1
    if not synced:
        assert d["findings"][0]["opener"] == path
        assert d["findings"][0]["obligation"] == BY_NAME[path].obligation


def test_emulated_instructions_name_their_flush_path():
    assert insn_flush(bytes.fromhex("0f22df")) == (Kind.FLUSH_CR3, -1)       # mov cr3, rdi
    assert insn_flush(bytes.fromhex("0f22e7")) == (Kind.FLUSH_CR4, -1)       # mov cr4, rdi
    assert insn_flush(bytes.fromhex("410f22d8")) == (Kind.FLUSH_CR3, -1)     # mov cr3, r8
    assert insn_flush(bytes.fromhex("440f22c0")) is None                     # mov cr8, rax
    assert insn_flush(bytes.fromhex("0f20d8")) is None                       # mov rax, cr3
    assert insn_flush(bytes.fromhex("0f0139")) == (Kind.FLUSH_INVLPG, -1)    # invlpg [rcx]
    assert insn_flush(bytes.fromhex("0f01f8")) is None                       # swapgs
    assert insn_flush(bytes.fromhex("660f38823a")) == (Kind.FLUSH_INVPCID, -1)
    assert insn_flush(bytes.fromhex("e610")) is None
    rows = decode("kvm_emulate_insn", "0:12c0:0f 22 df (prot64)")
    assert [r[0] for r in rows] == [Kind.EMULATE, Kind.FLUSH_CR3]
    assert decode("kvm_emulate_insn", "0:12c0:0f 22 df (prot64) failed")[0] == Kind.EMULATE


def test_cr3_write_with_the_pcid_noflush_bit_opens_no_window():
    assert decode("kvm_cr", "cr_write 3 = 0x7000")[8] == 1
    assert decode("kvm_cr", "cr_write 3 = 0x8000000000007001")[8] == 0
    assert decode("kvm_cr", "cr_read 3 = 0x7000") == []
