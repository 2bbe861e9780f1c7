"""The normalised kvmtrace event: one row per host-side KVM event, from any source.

Every source (the BCC recorder, tracefs text, trace-cmd, perf) is turned into these
columns.  A row models one firing of a KVM tracepoint or of a kprobe/kretprobe on a KVM
function; ``kind`` says which, the payload columns say what it carried.  Columns that a
kind does not use hold their ``MISSING`` value.

Kind codes are part of the file format: append new kinds, never renumber.  Columns are
appended too, each with the schema version that added it; a reader fills the columns a
file's older version lacks with their missing value.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, asdict
from typing import Any, Callable, Optional

import numpy as np

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


class Kind(enum.IntEnum):
    """What happened.  Comments name the kernel event each kind stands for."""

    LOST = 0                  # records dropped by the collector; value = how many

    # A guest asked for a TLB flush.
    FLUSH_REQUEST_PV = 1      # kvm:kvm_pv_tlb_flush (record_steal_time); need_flush
    FLUSH_REQUEST_GUEST = 2   # KVM_REQ_TLB_FLUSH_GUEST seen pending (kvm_exit.requests, 6.14+)
    FLUSH_REQUEST_HYPERV = 3  # kvm:kvm_hv_flush_tlb / kvm_hv_flush_tlb_ex

    # Function probes on the flush and MMU-root paths (arch/x86/kvm/x86.c, mmu/mmu.c).
    FLUSH_GUEST_ENTRY = 4     # kvm_vcpu_flush_tlb_guest()
    FLUSH_GUEST_RETURN = 5
    FLUSH_SERVICE = 6         # kvm_service_local_tlb_flush_requests() (5.15.y, 5.16+)
    HW_FLUSH = 7              # vendor flush: vmx_flush_tlb_guest, svm_flush_tlb*, pvm_flush_tlb_guest
    MMU_UNLOAD = 8            # kvm_mmu_unload()
    MMU_LOAD_ENTRY = 9        # kvm_mmu_load()
    MMU_LOAD_RETURN = 10      # kvm_mmu_load() returned; value = return code
    SYNC_ROOTS = 11           # kvm_mmu_sync_roots()
    SYNC_PREV_ROOTS = 12      # kvm_mmu_sync_prev_roots() (5.16+)

    # kvmmmu shadow-page events (VM-wide; attributed to a vCPU only through the thread).
    SP_GET = 20               # kvmmmu:kvm_mmu_get_page; created
    SP_UNSYNC = 21            # kvmmmu:kvm_mmu_unsync_page
    SP_SYNC = 22              # kvmmmu:kvm_mmu_sync_page (also fires when an unsync SP is zapped)
    SP_ZAP = 23               # kvmmmu:kvm_mmu_prepare_zap_page
    WALK_ELEMENT = 24         # kvmmmu:kvm_mmu_paging_element; value = guest PTE, level

    # Exact shadow-MMU state, read from KVM's own structures by raw-tracepoint probes
    # (BTF offsets).  Kinds 25-29 are reserved for exact evidence.
    SP_LINK = 25              # a parent_ptes link: child (gfn, role) under (parent_gfn,
                              # parent_role); value 1 = present, 0 = dropped.  Recorded right
                              # after the child's SP_GET (existing SP), SP_UNSYNC, SP_SYNC
                              # (present) and SP_ZAP (dropped), same (tid, ts).  parent_gfn
                              # and parent_role -1: a parent SPTE whose SP was never seen.
    ROOT_STATE = 26           # one root slot of a vCPU (vcpu->arch.mmu): gfn/role of the
                              # root SP, unsync, unsync_children; value = slot (0 = root.hpa,
                              # 1..N = prev_roots[N-1]); gfn -1 with unsync 0 = no valid root
                              # in that slot; gfn -1 with unsync -1 = a valid root whose SP
                              # is not identified (unknown, never "clean").  The rows of one
                              # snapshot share (tid, ts) and precede the guest-run evidence
                              # event that triggered them.  A snapshot decides a
                              # flush window when it follows every flush-path and
                              # shadow-page event of that thread in the window
                              # (analysis/exact.py).

    # Guest-run evidence: the vCPU executed guest code at or just before this event.
    GUEST_ENTRY = 30          # kvm:kvm_entry; value = rip
    GUEST_EXIT = 31           # kvm:kvm_exit; value = requests (6.14+) or -1
    SPTE_INSTALL = 32         # kvmmmu:kvm_mmu_set_spte (from a guest fault); gfn, level, value = spte
    EMULATE = 33              # kvm:kvm_emulate_insn; value = rip
    PIO = 34                  # kvm:kvm_pio; value = port
    MMIO = 35                 # kvm:kvm_mmio; value = gpa
    HYPERCALL = 36            # kvm:kvm_hypercall; value = nr
    USERSPACE_EXIT = 37       # kvm:kvm_userspace_exit; value = exit reason, or errno (< 0)
    PAGE_FAULT = 38           # kvm:kvm_page_fault; value = fault address
    WALK_START = 39           # kvmmmu:kvm_mmu_pagetable_walk (a guest fault); value = address

    # Guest flush paths beyond steal time and Hyper-V (kinds 40-49; the table of paths,
    # their host functions and sync obligations is kvmtrace/analysis/flushpaths.py).
    # ``need_flush``: 1 the write asked for a flush, 0 it did not, -1 unknown.
    FLUSH_PVM_HYPERCALL = 40  # a PVM TLB-flush hypercall; value = hypercall number
    FLUSH_CR3 = 41            # a guest MOV to CR3 (exit, kvm_cr, or emulated); value = new CR3 or -1
    FLUSH_CR4 = 42            # a guest MOV to CR4 (PGE/PCIDE toggles flush); value = new CR4 or -1
    FLUSH_INVLPG = 43         # a guest INVLPG (exit or emulated, PVM invlpg hypercall); value = address or -1
    FLUSH_INVPCID = 44        # a guest INVPCID exit; value = INVPCID type (0-3) or -1
    FLUSH_PVM_LOAD_PGTBL = 45  # PVM_HC_LOAD_PGTBL; value = flags (bit 0: flush the new CR3's PCID)

    # Integrity (codes 50-54 reserved).
    INVALID = 50              # an event a source decoded with impossible fields (level 9, a
                              # wrapped uint64 gfn, a time outside the trace): refused by
                              # sources/validate.py, kept as a marker at its place; value = 1.
                              # The model treats it as a lost event of its VM (tgid, or -1).
    # Events after which the vCPU's shadow root (vcpu->arch.mmu->root) may have changed
    # without any kvmmmu event: the model forgets the root it inferred.  Kinds 55-59.
    # (FLUSH_CR3, FLUSH_CR4 and FLUSH_PVM_LOAD_PGTBL above switch roots too.)
    CR_WRITE = 55             # a CR0 write: kvm:kvm_cr cr_write 0, or an emulated mov to CR0 /
                              # lmsw decoded from kvm_emulate_insn (CR3/CR4 writes are
                              # FLUSH_CR3/FLUSH_CR4); level = CR number, value = value (-1 unknown)
    NESTED_ENTER = 56         # kvm:kvm_nested_vmenter (VMLAUNCH/VMRESUME/VMRUN emulated: L2 runs)
    NESTED_EXIT = 57          # kvm:kvm_nested_vmexit_inject (an L2 exit reflected to L1)
    SMM_TRANSITION = 58       # kvm:kvm_smm_transition; value = 1 entering, 0 leaving SMM
    EFER_WRITE = 59           # kvm:kvm_msr write of MSR_EFER (0xc0000080); value = data


KIND_NAMES: dict[int, str] = {k.value: k.name.lower() for k in Kind}
KIND_BY_NAME: dict[str, Kind] = {k.name.lower(): k for k in Kind}

FLUSH_REQUEST_KINDS = frozenset({Kind.FLUSH_REQUEST_PV, Kind.FLUSH_REQUEST_GUEST,
                                 Kind.FLUSH_REQUEST_HYPERV})
# Guest flush actions that are also guest-run evidence: the guest executed the
# instruction (or hypercall) that KVM now services.
FLUSH_PATH_KINDS = frozenset({Kind.FLUSH_PVM_HYPERCALL, Kind.FLUSH_CR3, Kind.FLUSH_CR4,
                              Kind.FLUSH_INVLPG, Kind.FLUSH_INVPCID, Kind.FLUSH_PVM_LOAD_PGTBL})
FUNCTION_KINDS = frozenset({Kind.FLUSH_GUEST_ENTRY, Kind.FLUSH_GUEST_RETURN, Kind.FLUSH_SERVICE,
                            Kind.HW_FLUSH, Kind.MMU_UNLOAD, Kind.MMU_LOAD_ENTRY,
                            Kind.MMU_LOAD_RETURN, Kind.SYNC_ROOTS, Kind.SYNC_PREV_ROOTS})
SP_KINDS = frozenset({Kind.SP_GET, Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP})
# Events that can switch a vCPU's root without a kvmmmu event (see Kind.CR_WRITE); the
# CR3/CR4/PVM load-page-table flush openers do as well.
ROOT_SWITCH_KINDS = frozenset({Kind.CR_WRITE, Kind.NESTED_ENTER, Kind.NESTED_EXIT,
                               Kind.SMM_TRANSITION, Kind.EFER_WRITE})
EVIDENCE_KINDS = frozenset({Kind.GUEST_ENTRY, Kind.GUEST_EXIT, Kind.SPTE_INSTALL, Kind.EMULATE,
                            Kind.PIO, Kind.MMIO, Kind.HYPERCALL, Kind.USERSPACE_EXIT,
                            Kind.PAGE_FAULT, Kind.WALK_START})

# include/uapi/linux/kvm.h: KVM_EXIT_INTR is a KVM_RUN that returned for a signal
# before (or without) entering the guest, so it proves nothing about guest execution.
KVM_EXIT_INTR = 10


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str       # numpy dtype name, or "str"
    missing: Any     # value when the kind does not carry it
    doc: str
    since: int = 1   # the schema version that appended this column


COLUMNS: tuple[Column, ...] = (
    Column("ts", "int64", 0, "event time, ns, on the trace's clock"),
    Column("cpu", "int16", -1, "host CPU the event fired on"),
    Column("tgid", "int32", -1, "process of the VM (the VMM); -1 when the source lacks it"),
    Column("tid", "int32", -1, "host thread (a vCPU thread, or a helper such as kvm-nx-lpage-recovery)"),
    Column("vcpu", "int32", -1, "vCPU id when the event carries it, else -1"),
    Column("kind", "uint8", 0, "a Kind code"),
    Column("gfn", "int64", -1, "guest frame number of the shadow page / mapping"),
    Column("role", "int64", -1, "union kvm_mmu_page_role word (level = bits 0-3)"),
    Column("level", "int8", -1, "page-table level (SP events: from role; walker / spte: as printed)"),
    Column("root_count", "int32", -1, "kvm_mmu_page.root_count"),
    Column("unsync", "int8", -1, "kvm_mmu_page.unsync as the tracepoint saw it"),
    Column("created", "int8", -1, "kvm_mmu_get_page: 1 new, 0 existing"),
    Column("need_flush", "int8", -1, "kvm_pv_tlb_flush.need_flush_tlb"),
    Column("value", "int64", 0, "kind-specific scalar (see Kind)"),
    Column("comm", "str", "", "task name of tid"),
    # Version 2: exact shadow-MMU state (SP_LINK, ROOT_STATE).
    Column("parent_gfn", "int64", -1, "SP_LINK: gfn of the parent shadow page", since=2),
    Column("parent_role", "int64", -1, "SP_LINK: full role word of the parent", since=2),
    Column("unsync_children", "int32", -1, "kvm_mmu_page.unsync_children (exact probes)",
           since=2),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
NUMERIC_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.dtype != "str")


# union kvm_mmu_page_role bits (arch/x86/include/asm/kvm_host.h, 5.x-6.x layout).
ROLE_LEVEL_MASK = 0xF
ROLE_HAS_4_BYTE_GPTE = 1 << 4
ROLE_QUADRANT_SHIFT = 5
ROLE_QUADRANT_MASK = 0x3 << ROLE_QUADRANT_SHIFT
ROLE_DIRECT = 1 << 7
ROLE_ACCESS_SHIFT = 8
ROLE_ACCESS_MASK = 0x7 << ROLE_ACCESS_SHIFT
ROLE_INVALID = 1 << 11
ROLE_EFER_NX = 1 << 12
ROLE_CR0_WP = 1 << 13
ROLE_SMEP_ANDNOT_WP = 1 << 14
ROLE_SMAP_ANDNOT_WP = 1 << 15
ROLE_AD_DISABLED = 1 << 16
ROLE_GUEST_MODE = 1 << 17


def role_level(role: int) -> int:
    return role & ROLE_LEVEL_MASK


@dataclass
class TraceMeta:
    """What a trace file says about itself, beside its events."""

    schema_version: int = SCHEMA_VERSION
    source: str = "unknown"            # "recorded" | "imported" | "generated"
    source_format: str = ""            # "bcc", "ftrace", "trace-cmd", "perf", "kvmtrace-generator"
    source_path: str = ""
    kernel_release: str = ""
    kvm_backend: str = ""              # "kvm_intel" | "kvm_amd" | "kvm_pvm" | ""
    tdp: bool | None = None            # EPT/NPT in effect; None when unknown
    clock: str = ""                    # e.g. "boot" (bpf_ktime_get_boot_ns), "ftrace:local"
    start_time_ns: int = 0             # first event's ts
    start_wall: str = ""               # ISO-8601 wall time at start, when known
    lost_events: int = 0               # total records the collector dropped
    lost_per_cpu: dict[str, int] = field(default_factory=dict)
    tool_version: str = ""
    vm_assignment: str = "tgid"        # "tgid" | "single-vm-assumed" | "tgid-map"
    probes: list[str] = field(default_factory=list)   # what the recorder attached
    notes: list[str] = field(default_factory=list)    # warnings worth carrying along
    host: str = ""                     # host name of a dataset part (sources/dataset.py)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["host"]:
            del out["host"]         # files without a host stay byte-identical to before
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TraceMeta":
        if not isinstance(data, dict):
            raise SchemaError(f"metadata is a JSON {type(data).__name__}, not an object")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise SchemaError(f"unknown schema version {version!r} (this kvmtrace reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SchemaError(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        for name, value in data.items():
            problem = _meta_type_problem(name, value)
            if problem:
                raise SchemaError(f"metadata field {name!r} {problem}")
        return cls(**data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _meta_type_problem(name: str, value: Any) -> str:
    """Why ``value`` cannot be TraceMeta.``name`` (empty when it can)."""
    if name == "tdp":
        return "" if value is None or isinstance(value, bool) else "must be true, false or null"
    if name == "lost_per_cpu":
        ok = isinstance(value, dict) and all(isinstance(k, str) and _is_int(v) and v >= 0
                                             for k, v in value.items())
        return "" if ok else "must map CPU numbers to event counts"
    if name in ("probes", "notes"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return "" if ok else "must be a list of strings"
    if name in ("schema_version", "start_time_ns", "lost_events"):
        return "" if _is_int(value) and value >= 0 else "must be a non-negative integer"
    return "" if isinstance(value, str) else "must be a string"


# A note that marks a trace read past corruption with --salvage: what follows the damage is
# missing, so no verdict from it is better than inconclusive (analysis/report.py).
SALVAGED_NOTE = "salvaged past corruption"


class SchemaError(ValueError):
    """A trace does not match the schema (bad version, missing column, bad value)."""


def columns_added_after(version: int) -> frozenset[str]:
    """Columns a file of schema ``version`` may lack (appended by later versions)."""
    return frozenset(c.name for c in COLUMNS if c.since > version)


def empty_columns(n: int = 0) -> dict[str, np.ndarray]:
    """Column arrays of length n, each filled with its missing value."""
    out: dict[str, np.ndarray] = {}
    for col in COLUMNS:
        if col.dtype == "str":
            out[col.name] = np.full(n, col.missing, dtype=object)
        else:
            out[col.name] = np.full(n, col.missing, dtype=col.dtype)
    return out


# ----------------------------------------------------------------------------- chunks
class CommColumn:
    """The ``comm`` strings of a chunk, decoded only where a reader of them asks.

    With a ``loader`` the column is not even read until first asked: after the first
    chunk every thread's name is usually known, and the strings are the costliest column
    of a Parquet trace to decode.
    """

    def __init__(self, words=None, indices: Optional[np.ndarray] = None,
                 loader: Optional[Callable[[], tuple]] = None) -> None:
        self._words = words            # object array of names, or the dictionary (list)
        self._indices = indices        # dictionary indices per row, or None
        self._loader = loader          # () -> (words, indices), called once when needed

    def _ready(self) -> None:
        if self._loader is not None:
            self._words, self._indices = self._loader()
            self._loader = None

    def take(self, order: np.ndarray) -> "CommColumn":
        """The rows ``order`` (an index array or a slice) of this column."""
        self._ready()
        if self._indices is not None:
            return CommColumn(self._words, self._indices[order])
        return CommColumn(np.asarray(self._words, dtype=object)[order])

    def __getitem__(self, i: int) -> str:
        self._ready()
        if self._indices is not None:
            j = int(self._indices[i])
            return self._words[j] if 0 <= j < len(self._words) else ""
        value = self._words[i]
        return value if isinstance(value, str) else ""

    def to_array(self) -> np.ndarray:
        """Every row's name (empty where unknown), as an object array."""
        self._ready()
        if self._indices is not None:
            words = np.asarray(list(self._words) + [""], dtype=object)
            idx = np.asarray(self._indices)
            return words[np.where((idx >= 0) & (idx < len(self._words)), idx, len(self._words))]
        return np.array([v if isinstance(v, str) else "" for v in self._words], dtype=object)


@dataclass
class Chunk:
    """A slice of an event stream, as every source delivers it and the model takes it.

    ``cols`` maps numeric column names to numpy arrays of one length (only the columns the
    consumer asked for, and only those the source had: a reader of an older file leaves
    out what that version lacks); ``comm`` holds the task names, decoded lazily.
    """

    cols: dict[str, np.ndarray]
    comm: Optional[CommColumn] = None

    def __len__(self) -> int:
        if "ts" in self.cols:
            return len(self.cols["ts"])
        return len(next(iter(self.cols.values()))) if self.cols else 0

    @classmethod
    def from_frame(cls, frame: Any, columns: Optional[tuple[str, ...]] = None) -> "Chunk":
        """A chunk of an event table (a pandas DataFrame): ``columns`` (default: every
        numeric column) where the table has them, plus its ``comm``."""
        names = NUMERIC_COLUMNS if columns is None else columns
        have = set(frame.columns)
        cols = {c: frame[c].to_numpy() for c in names if c in have}
        comm = CommColumn(frame["comm"].to_numpy(dtype=object)) if "comm" in have else None
        return cls(cols, comm)


def as_chunk(chunk: Any, columns: Optional[tuple[str, ...]] = None) -> Chunk:
    """``chunk`` itself, or the Chunk of an event table (tests and small callers)."""
    return chunk if isinstance(chunk, Chunk) else Chunk.from_frame(chunk, columns)
