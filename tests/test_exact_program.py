"""The exact probe mode's planning and generated C, from sysroot samples and hand-built BTF
(no BCC, no root)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.host import gather
from kvmtrace.host.btf import Btf
from kvmtrace.host.exactlayout import from_btf
from kvmtrace.sources.live import LiveUnavailable, Recorder
from kvmtrace.sources.live.capabilities import kprobes
from kvmtrace.sources.live.plan import build
from kvmtrace.sources.live.program import EXACT_SP_EVENTS, ProgramConfig, ProgramError, generate
from tests.btf_blob import BlobBuilder
from tests.test_host_btf import kvm_like

HOSTS = Path(__file__).parent / "data" / "hosts"


def layout(**kw):
    b = BlobBuilder()
    kvm_like(b, **kw)
    return from_btf(Btf(b.blob(), "hand-built"), "hand-built")


def plan(mode="auto", **kw):
    facts = gather(HOSTS / "pvm_6_18")
    return build(facts, mode, kprobes(facts), None, layout(**kw))


def test_auto_takes_the_exact_mode_when_btf_has_every_field():
    p = plan()
    assert p.exact is not None
    names = {t.name for t in p.tracepoints}
    assert not names & {f"kvmmmu:{e}" for e in EXACT_SP_EVENTS}     # read raw instead
    assert "kvm:kvm_pv_tlb_flush" in names and "kvmmmu:kvm_mmu_set_spte" in names
    assert p.names[:4] == [f"raw_tracepoint:{e}" for e in EXACT_SP_EVENTS]
    assert p.exact_line().startswith("exact mode: on")


def test_auto_falls_back_to_tracepoints_and_says_which_field_is_missing():
    p = plan(drop="parent_ptes")
    assert p.exact is None
    assert "kvm_mmu_page.parent_ptes.val not in BTF" in p.exact_off
    assert "kvmmmu:kvm_mmu_sync_page" in {t.name for t in p.tracepoints}
    assert "parent_ptes" in p.exact_line()


def test_tracepoint_mode_never_takes_the_exact_mode():
    p = plan("tracepoints")
    assert p.exact is None and not p.raw_names


def test_generated_program_reads_btf_offsets():
    p = plan()
    text = generate(ProgramConfig((1234,)), p.tracepoints, p.functions, p.exact)
    lay = p.exact
    assert f"#define KT_OFF_SP_GFN {lay.offset('sp_gfn')}" in text
    assert f"#define KT_OFF_TASK_NOTIFIERS 1000" in text       # the hand-built offset
    assert "#define KT_PREV_ROOTS 3" in text and "#define KT_DESC_SLOTS 4" in text
    assert "#define KT_OFF_SP_ROOT_COUNT" not in text                 # absent: not read
    for e in EXACT_SP_EVENTS:
        assert f"KT_EXACT_PROBE({e})" in text
        assert f"kt_tp__kvmmmu__{e}(" not in text
    # every guest-run evidence handler checks for a due root snapshot
    handler = text.split("int kt_tp__kvmmmu__kvm_mmu_set_spte(")[1].split("\n}")[0]
    assert "kt_exact_evidence(id);" in handler
    assert "#define KT_TGID_SLOTS 4" in text and "1234" not in text


def test_no_offsets_without_a_usable_layout():
    p = plan()
    with pytest.raises(ProgramError, match="parent_ptes"):
        generate(ProgramConfig(), p.tracepoints, p.functions, layout(drop="parent_ptes"))


def test_tracepoint_program_has_no_exact_code():
    p = plan("tracepoints")
    text = generate(ProgramConfig(), p.tracepoints, p.functions)
    assert "KT_EXACT" not in text.split("#include")[0] and "KT_EXACT_PROBE" not in text


def test_recorder_exact_mode_off_names_the_reason():
    # The sample sysroots hold no real BTF: --probes exact must refuse, saying why.
    rec = Recorder(None, probes="exact", root=HOSTS / "pvm_6_18")
    with pytest.raises(LiveUnavailable, match="bad magic"):
        rec.plan()
    auto = Recorder(None, probes="auto", root=HOSTS / "pvm_6_18").plan()
    assert auto.exact is None and "bad magic" in auto.exact_off
    none = Recorder(None, probes="auto", root=HOSTS / "intel_5_10").plan()
    assert none.exact is None and "CONFIG_DEBUG_INFO_BTF" in none.exact_off


# ----------------------------------------------------------------------------- PVM hypercalls

def _with_pvm(lay, write_msr=True):
    """The kvm_pvm fields exact.c's write_msr probe reads (offsets as on the project's host)."""
    from kvmtrace.host.btf import Member
    lay.members.update({
        "pvm_vcpu": Member("vcpu", 0, 5952, 0, 0, "struct kvm_vcpu"),
        "pvm_exit_vector": Member("n.exit.vector", 51064, 8, 0, 0, "u64"),
        "pvm_regs": Member("n.regs", 50912, 136, 0, 0, "[17] long unsigned int", 17, 8),
        "vcpu_exits": Member("stat.exits", 5656, 8, 0, 0, "u64")})
    lay.write_msr_tracepoint = write_msr
    return lay


def test_pvm_hypercall_probe_only_with_its_btf_fields():
    facts = gather(HOSTS / "pvm_6_18")
    bare = build(facts, "auto", kprobes(facts), None, layout())
    assert "vcpu_pvm" in bare.exact.pvm_hypercall_problem()
    assert "raw_tracepoint:write_msr" not in bare.names
    text = generate(ProgramConfig((1234,)), bare.tracepoints, bare.functions, bare.exact)
    assert "#define KT_PVM_HC" not in text
    assert "PVM flush hypercalls not seen" in bare.exact_line()

    p = build(facts, "auto", kprobes(facts), None, _with_pvm(layout()))
    assert p.exact.pvm_hypercall_problem() == ""
    assert "raw_tracepoint:write_msr" in p.names
    text = generate(ProgramConfig((1234,)), p.tracepoints, p.functions, p.exact)
    assert "#define KT_PVM_HC 1" in text and "KT_EXACT_PROBE(write_msr)" in text
    assert "#define KT_OFF_PVM_EXIT_VECTOR 51064" in text and "#define KT_OFF_PVM_REGS 50912" in text
    assert "#define KT_PVM_HC_VECTOR 0x1b" in text
    assert "(nr) == 0x1007ULL || (nr) == 0x100eULL" in text
    assert "#define KT_KIND_FLUSH_PVM_HYPERCALL 40" in text


def test_pvm_hypercall_probe_off_without_the_msr_tracepoint():
    lay = _with_pvm(layout(), write_msr=False)
    assert "write_msr" in lay.pvm_hypercall_problem()


def test_invlpg_address_read_only_with_its_btf_fields():
    from kvmtrace.host.btf import Member
    facts = gather(HOSTS / "pvm_6_18")
    bare = build(facts, "auto", kprobes(facts), None, layout())
    assert "x86_emulate_ctxt" in bare.exact.invlpg_address_problem()
    text = generate(ProgramConfig((1234,)), bare.tracepoints, bare.functions, bare.exact)
    assert "#define KT_INVLPG_EA" not in text
    lay = layout()
    lay.members.update({
        "vcpu_emulate_ctxt": Member("arch.emulate_ctxt", 2368, 8, 0, 0, "struct x86_emulate_ctxt *"),
        "emul_mode": Member("mode", 88, 4, 0, 0, "enum x86emul_mode"),
        "emul_src_ea": Member("src.addr.mem.ea", 184, 8, 0, 0, "ulong"),
        "emul_src_seg": Member("src.addr.mem.seg", 192, 4, 0, 0, "unsigned int")})
    assert "X86EMUL_MODE_PROT64" in lay.invlpg_address_problem()
    lay.mode_prot64 = 4
    p = build(facts, "auto", kprobes(facts), None, lay)
    text = generate(ProgramConfig((1234,)), p.tracepoints, p.functions, p.exact)
    assert "#define KT_INVLPG_EA 1" in text and "#define KT_EMUL_MODE_PROT64 4" in text
    assert "#define KT_OFF_EMUL_SRC_EA 184" in text
    assert "static __always_inline s64 kt_invlpg_address(void);" in text
