"""Tracepoints read as raw tracepoints (kvmtrace/sources/live/rawtp.py), offline: the BTF
prototype check, the generated reads, the plan's one line and its perf fallback.  Host
sample pvm_6_18 (real format files) plus hand-built BTF blobs; no BCC, no root."""
from __future__ import annotations

from pathlib import Path

from btf_blob import BlobBuilder
from kvmtrace.host import gather
from kvmtrace.host.btf import Btf
from kvmtrace.sources.live import rawtp
from kvmtrace.sources.live.capabilities import kprobes
from kvmtrace.sources.live.plan import build
from kvmtrace.sources.live.program import ProgramConfig, generate, tracepoint_handler

HOSTS = Path(__file__).parent / "data" / "hosts"


def kvm_btf(exit_args: str = "vcpu,u32", vcpu_id_type: str = "int") -> Btf:
    """vmlinux-like BTF: struct kvm_vcpu {.. int vcpu_id @36; u64 requests @56} and the
    btf_trace_ typedefs of kvm_exit and kvm_pv_tlb_flush."""
    b = BlobBuilder()
    void_ptr = b.ptr(0)
    s32 = b.int_("int", 4)
    # BTF_INT_SIGNED is bit 0 of the encoding (bits 24-27 of the int's extra word).
    b.types[-1] = b.types[-1][:12] + ((1 << 24) | 32).to_bytes(4, "little")
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    boolean = b.int_("_Bool", 1)
    u32_t = b.typedef("u32", u32)
    u64_t = b.typedef("u64", u64)
    bool_t = b.typedef("bool", boolean)
    vcpu = b.struct("kvm_vcpu", 64, [("vcpu_id", s32 if vcpu_id_type == "int" else u64_t, 36 * 8),
                                     ("requests", u64_t, 56 * 8)])
    vcpu_ptr = b.ptr(vcpu)
    args = {"vcpu": vcpu_ptr, "u32": u32_t, "u64": u64_t}
    proto = b.func_proto(0, [void_ptr] + [args[a] for a in exit_args.split(",")])
    b.typedef("btf_trace_kvm_exit", b.ptr(proto))
    pv = b.func_proto(0, [void_ptr, u32, bool_t])
    b.typedef("btf_trace_kvm_pv_tlb_flush", b.ptr(pv))
    return Btf(b.blob(), "test-btf")


def plan(btf: Btf | None, problem: str = "no BTF (test)"):
    facts = gather(HOSTS / "pvm_6_18")
    return build(facts, "tracepoints", kprobes(facts), None, None, btf, problem)


def by_name(p, name):
    return next(t for t in p.tracepoints if t.name == name)


def test_btf_trace_params_read_the_prototype_without_the_data_pointer():
    params = kvm_btf().trace_params("kvm_exit")
    assert [p.type_name for p in params] == ["struct kvm_vcpu *", "u32"]
    assert params[0].target == "struct kvm_vcpu" and params[0].target_size == 64
    assert params[1].size == 4 and not params[1].signed
    assert kvm_btf().trace_params("kvm_entry") is None


def test_kvm_exit_reads_the_members_tp_fast_assign_reads():
    p = plan(kvm_btf())
    rt = by_name(p, "kvm:kvm_exit")
    assert rt.raw and rt.probe_name == "raw_tracepoint:kvm_exit"
    # vcpu->vcpu_id (int, sign-cast) into the format's unsigned int, vcpu->requests as u64.
    assert rt.raw_decls == ("u32 kt_f_vcpu_id = (u32)(s32)kt_rd32(ctx->args[0] + 36);",
                            "u64 kt_f_requests = (u64)(u64)kt_rd64(ctx->args[0] + 56);")
    assert rt.columns == {"vcpu": "kt_f_vcpu_id", "value": "kt_f_requests"}
    assert rt.arg == "(kt_f_requests >> 35) & 1"
    text = tracepoint_handler(rt)
    assert "int kt_raw__kvm__kvm_exit(struct bpf_raw_tracepoint_args *ctx)" in text
    assert "struct kt_args__kvm__kvm_exit" not in text
    pv = by_name(p, "kvm:kvm_pv_tlb_flush")
    assert pv.raw_decls == ("u32 kt_f_vcpu_id = (u32)ctx->args[0];",
                            "u8 kt_f_need_flush_tlb = (u8)ctx->args[1];")


def test_the_perf_form_is_kept_and_the_plan_says_which_mode():
    p = plan(kvm_btf())
    raw = [t.name for t in p.tracepoints if t.raw]
    assert raw == ["kvm:kvm_pv_tlb_flush", "kvm:kvm_exit"]
    line = p.transport_line()
    assert line.startswith(f"tracepoints: 2 as raw tracepoints (BPF links), {len(p.tracepoints) - 2} as perf events")
    assert "kvm:kvm_entry: its rip is kvm_rip_read(vcpu)" in line
    assert "kvm:kvm_hv_flush_tlb: BTF has no btf_trace_kvm_hv_flush_tlb" in line
    assert "kvmmmu:kvm_mmu_sync_page: not in the raw-tracepoint table" in line
    perf = p.without_raw("refused")
    assert not any(t.raw for t in perf.tracepoints)
    assert by_name(perf, "kvm:kvm_exit").columns == {"vcpu": "args->vcpu_id", "value": "args->requests"}
    assert perf.transport_line() == f"tracepoints: {len(p.tracepoints)} as perf events (raw tracepoints off: refused)"
    assert "raw_tracepoint:kvm_exit" in p.names and "tracepoint:kvm:kvm_exit" in perf.names


def test_a_prototype_that_differs_stays_on_perf_with_the_reason():
    for args, why in (("vcpu,u32,u32", "btf_trace_kvm_exit has 3 arguments, the table 2"),
                      ("u64,u32", "btf_trace_kvm_exit argument 0: u64 is not a pointer")):
        p = plan(kvm_btf(exit_args=args))
        assert not by_name(p, "kvm:kvm_exit").raw
        assert dict(p.on_perf)["kvm:kvm_exit"] == why
    # A member of another type (a plain u64 vcpu_id) is still read at its BTF size.
    p = plan(kvm_btf(vcpu_id_type="u64"))
    assert by_name(p, "kvm:kvm_exit").raw_decls[0] == "u32 kt_f_vcpu_id = (u32)(u64)kt_rd64(ctx->args[0] + 36);"


def test_without_btf_every_tracepoint_is_a_perf_event_and_one_line_says_so():
    p = plan(None, "no BTF (no /x/sys/kernel/btf/vmlinux)")
    assert p.tracepoints and not any(t.raw for t in p.tracepoints)
    assert p.transport_line() == (f"tracepoints: {len(p.tracepoints)} as perf events (raw tracepoints "
                                  "off: no BTF (no /x/sys/kernel/btf/vmlinux))")
    assert p.on_perf == []


def test_the_program_with_raw_handlers_generates():
    p = plan(kvm_btf())
    text = generate(ProgramConfig((42,)), p.tracepoints, [])
    assert "kt_raw__kvm__kvm_exit" in text and "kt_tp__kvm__kvm_entry" in text
    assert "static __always_inline u64 kt_select" in text      # kvmtrace.c helpers


def test_every_table_entry_names_format_fields_and_cites_its_source():
    facts = gather(HOSTS / "pvm_6_18")
    checked = 0
    for spec in rawtp.SPECS.values():
        assert spec.cite.endswith(".h")
        system = "kvmmmu" if spec.event.startswith("kvm_mmu") else "kvm"
        fmt = facts.tracefs.format(system, spec.event)
        if fmt is None:
            continue                   # the sample holds the formats of that host's events
        checked += 1
        assert set(spec.fields) <= set(fmt.fields), (spec.event, set(spec.fields) - set(fmt.fields))
        for src in spec.fields.values():
            assert all(0 <= i < len(spec.proto) for i in src[1:] if isinstance(i, int))
    assert checked >= 8


def test_a_recorder_on_a_host_without_usable_btf_says_so_in_one_line():
    """The recorder's own planning (as record and check run it) on the sample sysroot,
    whose sys/kernel/btf/vmlinux is not BTF: every tracepoint a perf event, one line why."""
    from kvmtrace.sources.live.recorder import Recorder
    rec = Recorder(None, tgids=(42,), probes="tracepoints", root=HOSTS / "pvm_6_18")
    plan = rec.plan()
    assert plan.tracepoints and not any(t.raw for t in plan.tracepoints)
    line = plan.transport_line()
    assert line.startswith(f"tracepoints: {len(plan.tracepoints)} as perf events (raw tracepoints off: no BTF (")
    assert "int kt_tp__kvm__kvm_exit(struct kt_args__kvm__kvm_exit *args)" in rec.program_text()
