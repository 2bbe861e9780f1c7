"""Where KVM keeps the shadow-MMU state the exact probes read, from the running kernel's BTF.

The exact probe mode reads, with ``bpf_probe_read_kernel``:
- ``struct kvm_mmu_page`` (arch/x86/include/asm/kvm_host.h): ``gfn``, ``role.word`` (the full
  ``union kvm_mmu_page_role``), ``unsync``, ``unsync_children``, ``parent_ptes.val`` (a
  ``struct kvm_rmap_head``) and ``spt`` (the SP's page of SPTEs);
- ``struct pte_list_desc`` (arch/x86/kvm/mmu/mmu.c): ``more``, ``spte_count`` (6.4+; older
  kernels end the list at a NULL entry) and ``sptes[]``;
- ``task_struct.preempt_notifiers.first``: while a vCPU is loaded on its thread this is
  ``&vcpu->preempt_notifier.link`` (virt/kvm/kvm_main.c ``vcpu_load()`` registers it), so
  ``container_of`` gives the ``struct kvm_vcpu``;
- ``kvm_vcpu.vcpu_id`` and ``kvm_vcpu.arch.mmu`` (a ``struct kvm_mmu *``);
- ``kvm_mmu.root`` and ``kvm_mmu.prev_roots[]`` (``struct kvm_mmu_root_info {pgd, hpa}``);
- optional, the PVM flush-hypercall revealer (kvmtrace/probes/exact.c ``write_msr``): the
  ``struct vcpu_pvm`` of this host's kvm_pvm (no published source; its layout is known from
  BTF only) embeds the ``struct kvm_vcpu`` as ``vcpu``, and its switcher's save area ``n``
  holds the last guest exit: ``n.exit.vector`` (0x1b for ``int 0x1b``, the hypercall gate)
  and ``n.regs[]`` (the guest GPRs at the exit, RAX first, as ``kvm_vcpu_arch.regs[]``'s
  ``VCPU_REGS_RAX`` = 0); ``kvm_vcpu.stat.exits`` (``++vcpu->stat.exits`` once per exit in
  arch/x86/kvm/x86.c ``vcpu_enter_guest()``) tells one exit from the next; and the
  ``msr:write_msr`` tracepoint must exist (BTF ``btf_trace_write_msr``).  Absent (VMX, SVM,
  another PVM): that revealer is off with the reason (``pvm_hypercall_problem``);
- optional, the address of an emulated INVLPG: ``kvm_vcpu.arch.emulate_ctxt`` (a ``struct
  x86_emulate_ctxt *``), whose ``src.addr.mem`` {ea, seg} is INVLPG's memory operand once
  decoded, and ``mode`` (``enum x86emul_mode``; only 64-bit mode, where ES/CS/SS/DS have
  base 0, gives the linear address).  ``kvm:kvm_emulate_insn`` fires after the decode
  (arch/x86/kvm/x86.c ``x86_decode_emulated_instruction()`` -> ``trace_kvm_emulate_insn_start``,
  6.x); ``em_invlpg()`` (arch/x86/kvm/emulate.c) linearizes that operand.

Every offset comes from BTF; a field that is absent (another kernel, another config) is
named, and the exact mode is off with that reason.  Nothing here branches on a version.

Imports: kvmtrace.host.btf (layer 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import struct

from kvmtrace.host.btf import ENUM, TYPEDEF, Btf, Member, load_kernel

# (key, struct, member path, required).  The key names the offset in the generated C.
FIELDS: tuple[tuple[str, str, str, bool], ...] = (
    ("sp_gfn", "kvm_mmu_page", "gfn", True),
    ("sp_role", "kvm_mmu_page", "role.word", True),
    ("sp_unsync", "kvm_mmu_page", "unsync", True),
    ("sp_unsync_children", "kvm_mmu_page", "unsync_children", True),
    ("sp_parent_ptes", "kvm_mmu_page", "parent_ptes.val", True),
    ("sp_spt", "kvm_mmu_page", "spt", True),
    ("sp_root_count", "kvm_mmu_page", "root_count", False),
    ("desc_more", "pte_list_desc", "more", True),
    ("desc_spte_count", "pte_list_desc", "spte_count", False),
    ("desc_sptes", "pte_list_desc", "sptes", True),
    ("task_notifiers", "task_struct", "preempt_notifiers.first", True),
    ("vcpu_notifier", "kvm_vcpu", "preempt_notifier.link", True),
    ("vcpu_id", "kvm_vcpu", "vcpu_id", True),
    ("vcpu_mmu", "kvm_vcpu", "arch.mmu", True),
    ("mmu_root_pgd", "kvm_mmu", "root.pgd", True),
    ("mmu_root_hpa", "kvm_mmu", "root.hpa", True),
    ("mmu_prev_roots", "kvm_mmu", "prev_roots", True),
    ("root_info_pgd", "kvm_mmu_root_info", "pgd", True),
    ("root_info_hpa", "kvm_mmu_root_info", "hpa", True),
    # PVM flush hypercalls (optional: the kvm_pvm backend of this project's host).
    ("pvm_vcpu", "vcpu_pvm", "vcpu", False),
    ("pvm_exit_vector", "vcpu_pvm", "n.exit.vector", False),
    ("pvm_regs", "vcpu_pvm", "n.regs", False),
    ("vcpu_exits", "kvm_vcpu", "stat.exits", False),
    # The address of an emulated INVLPG (optional): KVM's emulator context after decode.
    ("vcpu_emulate_ctxt", "kvm_vcpu", "arch.emulate_ctxt", False),
    ("emul_mode", "x86_emulate_ctxt", "mode", False),
    ("emul_src_ea", "x86_emulate_ctxt", "src.addr.mem.ea", False),
    ("emul_src_seg", "x86_emulate_ctxt", "src.addr.mem.seg", False),
)
INVLPG_KEYS = ("vcpu_emulate_ctxt", "emul_mode", "emul_src_ea", "emul_src_seg")
PVM_HC_KEYS = ("pvm_vcpu", "pvm_exit_vector", "pvm_regs", "vcpu_exits")
# The tracepoint that fires on the vCPU thread right after every guest exit on kvm_pvm.
PVM_HC_TRACEPOINT = "write_msr"
# Sizes the C reads with a fixed width (u64 / u32 / u8 loads).
_SIZES = {"sp_gfn": 8, "sp_role": 4, "sp_unsync": 1, "sp_unsync_children": 4,
          "sp_parent_ptes": 8, "sp_spt": 8, "sp_root_count": 4, "desc_more": 8,
          "desc_spte_count": 4, "task_notifiers": 8, "vcpu_id": 4, "vcpu_mmu": 8,
          "mmu_root_pgd": 8, "mmu_root_hpa": 8, "root_info_pgd": 8, "root_info_hpa": 8,
          "pvm_exit_vector": 8, "vcpu_exits": 8, "vcpu_emulate_ctxt": 8, "emul_mode": 4,
          "emul_src_ea": 8, "emul_src_seg": 4}


@dataclass
class ExactLayout:
    """The offsets the exact probes use, or why there are none."""

    source: str
    members: dict[str, Member | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    write_msr_tracepoint: bool = False    # BTF has btf_trace_write_msr
    mode_prot64: int | None = None        # enum x86emul_mode X86EMUL_MODE_PROT64, from BTF

    @property
    def usable(self) -> bool:
        return not self.problems

    def offset(self, key: str) -> int:
        m = self.members.get(key)
        if m is None:
            raise KeyError(key)
        return m.offset

    def has(self, key: str) -> bool:
        return self.members.get(key) is not None

    @property
    def prev_roots(self) -> int:
        m = self.members["mmu_prev_roots"]
        return m.nelems if m else 0

    @property
    def prev_root_stride(self) -> int:
        m = self.members["mmu_prev_roots"]
        return m.elem_size if m else 0

    @property
    def desc_slots(self) -> int:
        m = self.members["desc_sptes"]
        return m.nelems if m else 0

    def pvm_hypercall_problem(self) -> str:
        """Why the PVM flush-hypercall revealer cannot run ("" = it can)."""
        missing = [f"{s}.{p}" for k, s, p, _ in FIELDS if k in PVM_HC_KEYS and self.members.get(k) is None]
        if missing:
            return ("BTF lacks " + ", ".join(missing)
                    + " (not the kvm_pvm whose switcher save area it reads)")
        if not self.write_msr_tracepoint:
            return f"no {PVM_HC_TRACEPOINT} tracepoint in BTF (msr tracepoints not built)"
        return ""

    def invlpg_address_problem(self) -> str:
        """Why an emulated INVLPG's address cannot be read ("" = it can)."""
        missing = [f"{s}.{p}" for k, s, p, _ in FIELDS if k in INVLPG_KEYS and self.members.get(k) is None]
        if missing:
            return "BTF lacks " + ", ".join(missing)
        if self.mode_prot64 is None:
            return "BTF lacks enum x86emul_mode's X86EMUL_MODE_PROT64"
        return ""

    def lines(self) -> list[str]:
        """One line per field, for doctor and --ebpf."""
        out = []
        for key, struct_name, path, required in FIELDS:
            m = self.members.get(key)
            where = f"{struct_name}.{path}"
            if m is None:
                out.append(f"{where}: absent{'' if required else ' (optional)'}")
            else:
                arr = f" [{m.nelems} x {m.elem_size}]" if m.nelems else ""
                out.append(f"{where}: offset {m.offset}, {m.size} bytes{arr} ({m.type_name})")
        return out


def from_btf(btf: Btf, source: str) -> ExactLayout:
    layout = ExactLayout(source)
    for key, struct_name, path, required in FIELDS:
        m = btf.member(struct_name, path)
        layout.members[key] = m
        if m is None:
            if required:
                what = (f"struct {struct_name}" if btf.find(struct_name) is None
                        else f"{struct_name}.{path}")
                layout.problems.append(f"{what} not in BTF")
            continue
        problem = _shape_problem(key, m)
        if problem:
            layout.members[key] = None
            if required:
                layout.problems.append(f"{struct_name}.{path}: {problem}")
    layout.write_msr_tracepoint = btf.find("btf_trace_" + PVM_HC_TRACEPOINT, TYPEDEF) is not None
    layout.mode_prot64 = _enum_value(btf, "x86emul_mode", "X86EMUL_MODE_PROT64")
    return layout


def _enum_value(btf: Btf, enum: str, name: str) -> int | None:
    """The value of enumerator ``name`` of ``enum`` (BTF_KIND_ENUM: vlen x {name_off, val})."""
    t = btf.find(enum, ENUM)
    if t is None:
        return None
    for i in range(t.vlen):
        name_off, val = struct.unpack_from("<Ii", t.extra, 8 * i)
        if btf._str(name_off) == name:
            return val
    return None


def _shape_problem(key: str, m: Member) -> str:
    if m.bit_size:
        return f"is a {m.bit_size}-bit bitfield"
    want = _SIZES.get(key)
    if want is not None and m.size != want:
        return f"is {m.size} bytes, the probe reads {want}"
    if key in ("mmu_prev_roots", "desc_sptes") and (not m.nelems or m.elem_size not in (8, 16)):
        return f"is not an array of the expected elements ({m.type_name})"
    if key == "pvm_regs" and (not m.nelems or m.elem_size != 8):
        return f"is not an array of 8-byte registers ({m.type_name})"
    if key == "pvm_vcpu" and m.type_name != "struct kvm_vcpu":
        return f"is {m.type_name}, not the embedded struct kvm_vcpu"
    return ""


def discover(root: Path | str = Path("/")) -> ExactLayout:
    """The layout of the running kernel (vmlinux BTF, plus kvm's split BTF if a module)."""
    btf, detail = load_kernel(root)
    if btf is None:
        return ExactLayout("kernel BTF", problems=[detail])
    return add_pvm_module(from_btf(btf, detail), root)


def add_pvm_module(layout: ExactLayout, root: Path | str = Path("/")) -> ExactLayout:
    """kvm_pvm built as a module keeps ``struct vcpu_pvm`` in its own split BTF
    (``/sys/kernel/btf/kvm_pvm``, based on vmlinux, not on kvm's): the PVM fields come from
    there when vmlinux and kvm lack them.  Offsets inside ``struct vcpu_pvm`` need nothing
    else.  Returns ``layout``."""
    keys = [(k, s, p) for k, s, p, _ in FIELDS
            if k in PVM_HC_KEYS and s == "vcpu_pvm" and layout.members.get(k) is None]
    split = Path(root) / "sys/kernel/btf/kvm_pvm"
    if not keys or not split.exists():
        return layout
    btf, detail = load_kernel(root, module="kvm_pvm")
    if btf is None:
        return layout
    for key, struct_name, path in keys:
        m = btf.member(struct_name, path)
        if m is not None and not _shape_problem(key, m):
            layout.members[key] = m
    layout.source += f" + {split} (vcpu_pvm)"
    return layout
