"""BCC compiles what kvmtrace generates, including the function-probe program that cannot
attach on this host (no kprobes): compiling and verifier-loading need no kprobes."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.host import gather, parse_format
from kvmtrace.sources.live.bccload import captured_stderr
from kvmtrace.sources.live.capabilities import kprobes
from kvmtrace.sources.live.plan import build
from kvmtrace.sources.live.program import ProgramConfig, generate, resolve
from kvmtrace.sources.live.tracepoints import BY_NAME

from live_support import bcc as bcc_module, bpf_unavailable_reason, kvm_tracing_unavailable_reason

REASON = bpf_unavailable_reason()
KVM_REASON = kvm_tracing_unavailable_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(REASON is not None, reason=f"BCC: {REASON}")]
HOSTS = Path(__file__).parent / "data" / "hosts"


def compile_and_load(text: str, tracepoints=(), functions=()):
    bcc = bcc_module()
    with captured_stderr() as err:
        b = bcc.BPF(text=text.encode())
    try:
        for rt in tracepoints:
            assert b.load_func(rt.fn_name.encode(), bcc.BPF.TRACEPOINT).fd >= 0
        for fp in functions:
            assert b.load_func(fp.fn_name.encode(), bcc.BPF.KPROBE).fd >= 0   # passes the verifier
    finally:
        b.cleanup()
    return err


@pytest.mark.parametrize("sample", ["intel_5_10", "amd_6_1_npt", "amd_6_6_shadow"])
def test_function_probe_program_compiles_and_verifies(sample):
    facts = gather(HOSTS / sample)
    # Plan as if kprobes worked (the sample says whether they do; we only compile here).
    from kvmtrace.sources.live.capabilities import Capability
    plan = build(facts, "auto", Capability(True, "assumed for compiling"))
    assert plan.functions, "the sample has probe-able functions"
    text = generate(ProgramConfig(tgids=(1234,)), plan.tracepoints, plan.functions)
    compile_and_load(text, plan.tracepoints, plan.functions)


def test_5_10_program_opens_windows_on_the_flush_function():
    facts = gather(HOSTS / "intel_5_10")
    plan = build(facts, "functions", kprobes(facts))
    text = generate(ProgramConfig(), [], plan.functions)
    assert "int kt_fn__kvm_vcpu_flush_tlb_guest(struct pt_regs *ctx)" in text
    body = text.split("int kt_fn__kvm_vcpu_flush_tlb_guest")[1].split("\n}\n")[0]
    assert "return kt_open(&e);" in body
    compile_and_load(text, functions=plan.functions)


@pytest.mark.skipif(KVM_REASON is not None, reason=f"this host's KVM tracepoints: {KVM_REASON}")
def test_this_hosts_tracepoint_program_compiles_and_verifies():
    facts = gather()
    plan = build(facts, "tracepoints", kprobes(facts))
    assert any(t.name == "kvm:kvm_pv_tlb_flush" for t in plan.tracepoints)
    compile_and_load(generate(ProgramConfig(), plan.tracepoints, []), plan.tracepoints)


SHUFFLED = ("name: kvm_pv_tlb_flush\nID: 1\nformat:\n"
            "\tfield:bool need_flush_tlb;\toffset:8;\tsize:1;\tsigned:0;\n"
            "\tfield:unsigned int vcpu_id;\toffset:20;\tsize:4;\tsigned:0;\n")


def test_offsets_are_checked_by_the_compiler():
    rt = resolve(BY_NAME["kvm:kvm_pv_tlb_flush"], parse_format(SHUFFLED, "kvm", "kvm_pv_tlb_flush"))
    good = generate(ProgramConfig(), [rt], [])
    bcc = bcc_module()
    with captured_stderr():
        bcc.BPF(text=good.encode()).cleanup()
    # Drop the padding before vcpu_id: the struct no longer matches the format file and
    # the generated _Static_assert stops the compile.
    bad = good.replace("\tu8 __pad1[11];\n", "", 1)
    assert bad != good
    with captured_stderr() as err:
        with pytest.raises(Exception):
            bcc.BPF(text=bad.encode())
    assert any("vcpu_id offset" in line for line in err)
