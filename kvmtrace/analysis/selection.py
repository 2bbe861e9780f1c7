"""Pick, per chunk and with numpy, the few events the shadow-MMU model must see one by one.

Most events of a real trace are guest-run evidence (``kvm_entry``/``kvm_exit``,
``kvm_mmu_set_spte``, ``kvm_pio`` ...), guest walker events (``kvm_mmu_paging_element``,
four or five per shadow page fault) and ``kvm_pv_tlb_flush`` with ``need_flush_tlb`` 0,
which PVM hosts emit on every ``KVM_RUN`` (record_steal_time runs on each vCPU load).
The model changes state only at:

- shadow-page events and lost markers: all kept;
- "gate" events, which can open a flush window or mark a flush path (flush requests with
  need_flush set, flush-path function probes): all kept;
- evidence: only the first evidence on a thread after a gate (where a window closes),
  and each thread's first evidence in the chunk (a window carried over from the previous
  chunk closes there);
- rows naming a vCPU id other than the previous one on their thread (and each thread's
  first row naming one): a thread that runs another vCPU has another root;
- walker events: each is turned into a guest page-table edge "table P at level L points
  at table C" (P = the previous element's table in the same walk, or the thread's root
  for the top level); only the first occurrence of each distinct edge in the chunk is kept.

Threads are grouped with a factorisation (kvmtrace.factorize: pandas' hash table for big
chunks, numpy for small ones, so a short live check never imports pandas) and a stable
radix sort of 16-bit thread codes.  Everything else is replay.py's job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from kvmtrace.factorize import factorize, factorize_rows
from kvmtrace.kinds import EVIDENCE, GATE, STATE, WALK, kinds_with
from kvmtrace.schema import (COLUMN_BY_NAME, KIND_NAMES, KVM_EXIT_INTR, SP_KINDS, Chunk,
                             CommColumn, Kind, SchemaError, columns_added_after)

# The columns the model reads (cpu and root_count are not needed to decide; unsync is
# read for ROOT_STATE).
NEEDED = ("ts", "tgid", "tid", "vcpu", "kind", "gfn", "role", "level", "created",
          "need_flush", "value", "parent_gfn", "parent_role", "unsync_children", "unsync")
# Columns appended by later schema versions: a chunk from an older file may lack them.
OPTIONAL = columns_added_after(1)



def _mask(kinds) -> np.ndarray:
    """A lookup table over kind codes: True for ``kinds``."""
    out = np.zeros(256, dtype=bool)
    out[[int(k) for k in kinds]] = True
    return out


# The model's role of each kind, from the per-kind table (kvmtrace/kinds.py).
_STATE = _mask(kinds_with(STATE))
_GATE = _mask(kinds_with(GATE))
_EVIDENCE = _mask(kinds_with(EVIDENCE))
_WALK = _mask(kinds_with(WALK))
_VALID = _mask(KIND_NAMES)
_SP = _mask(SP_KINDS)

# Guest PTE bits (arch/x86/include/asm/pgtable_types.h): present, page size (a leaf at
# levels 2 and 3), and the physical-address field of a 64-bit entry.
PTE_PRESENT = 1
PTE_PSE = 1 << 7
PTE_ADDR = 0x000FFFFFFFFFF000
WALK_FROM_ROOT = -1          # walk edge whose parent table is the thread's root


def require_columns(cols: dict) -> None:
    """Raise SchemaError naming the first column the model needs that ``cols`` lacks."""
    missing = [c for c in NEEDED if c not in cols and c not in OPTIONAL]
    if missing:
        raise SchemaError(f"missing column {missing[0]!r}")


def thread_keys(tid: np.ndarray, vcpu: np.ndarray) -> np.ndarray:
    """Per-row thread key: the host tid, or (sources without tids) -2 - vcpu id."""
    tid = tid.astype(np.int64, copy=False)
    if len(tid) and tid.min() < 0:
        return np.where(tid >= 0, tid, -2 - vcpu.astype(np.int64))
    return tid


def evidence_mask(kind: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Rows that prove the vCPU ran guest code (role EVIDENCE in kvmtrace/kinds.py).

    ``kvm_userspace_exit`` counts only for a real exit reason: an errno (< 0) or
    KVM_EXIT_INTR means KVM_RUN returned without (necessarily) entering the guest.
    """
    ev = _EVIDENCE[kind]
    ue = kind == Kind.USERSPACE_EXIT
    if ue.any():
        ev &= ~(ue & ((value < 0) | (value == KVM_EXIT_INTR)))
    return ev


def gate_mask(kind: np.ndarray, need_flush: np.ndarray) -> np.ndarray:
    gate = _GATE[kind]
    pv = kind == Kind.FLUSH_REQUEST_PV
    if pv.any():
        gate &= ~(pv & (need_flush <= 0))
    return gate


@dataclass
class Selection:
    """One chunk, time-ordered, and the row indices the replay must handle in order."""

    cols: dict
    rows: np.ndarray
    # Threads of this chunk whose vCPU id the replay may not know yet:
    # (tgid, thread key, vcpu or -1, comm or "").
    threads: list = field(default_factory=list)
    reordered: int = 0
    late: int = 0
    # Rows re-sorted in a chunk that also has rows sharing a timestamp: the file order of
    # simultaneous events was the only order they had, and that file was out of order.
    ambiguous: int = 0
    # Rows whose kind needs a field they lack: a shadow-page event without its gfn or role
    # (libtraceevent's kvm plugin prints none), a kvm_pv_tlb_flush without need_flush_tlb.
    incomplete: int = 0


class ChunkSelector:
    """Carries what chunk selection needs across chunks (the last timestamp, known threads).

    ``select_all`` hands every row to the replay (the plain per-event reference the
    vectorised selection is tested and benchmarked against).
    """

    def __init__(self, select_all: bool = False) -> None:
        self.select_all = select_all
        self.last_ts: Optional[int] = None
        self.known: dict[int, tuple[int, str]] = {}     # combined key -> (vcpu, comm)
        self.edges: set = set()                         # walker edges already handed on
        self.walk_tails: dict = {}                      # thread -> (level, table) of its last walker row

    def select(self, chunk: Chunk) -> Selection:
        cols, comm = chunk.cols, chunk.comm
        require_columns(cols)
        n = len(cols["kind"])
        cols = {k: np.asarray(cols[k]) if k in cols else
                np.full(n, COLUMN_BY_NAME[k].missing, dtype=COLUMN_BY_NAME[k].dtype)
                for k in NEEDED}
        kind = cols["kind"]
        if kind.dtype != np.uint8:
            if len(kind) and (kind.min() < 0 or kind.max() > 255):
                raise SchemaError(f"unknown event kind code {int(kind[(kind < 0) | (kind > 255)][0])}")
            cols["kind"] = kind = kind.astype(np.uint8)
        bad = ~_VALID[kind]
        if bad.any():
            raise SchemaError(f"unknown event kind code {int(kind[bad][0])}")
        ts = cols["ts"]
        reordered = late = ambiguous = 0
        if len(ts) > 1:
            down = ts[1:] < ts[:-1]
            if down.any():
                reordered = int(down.sum())
                order = np.argsort(ts, kind="stable")
                cols = {k: v[order] for k, v in cols.items()}
                comm = comm.take(order) if comm is not None else None
                ts = cols["ts"]
                ambiguous = int(np.count_nonzero(ts[1:] == ts[:-1]))
        if len(ts):
            if self.last_ts is not None and ts[0] < self.last_ts:
                late = int(np.count_nonzero(ts < self.last_ts))
            self.last_ts = int(ts[-1]) if self.last_ts is None else max(self.last_ts, int(ts[-1]))
        rows, threads = self._rows(cols, comm)
        return Selection(cols, rows, threads, reordered, late, ambiguous,
                         _incomplete(cols, rows))

    def _rows(self, cols: dict, comm: Optional[CommColumn]) -> tuple[np.ndarray, list]:
        kind = cols["kind"]
        if len(kind) == 0:
            cols["aux"] = np.empty(0, dtype=np.int64)
            return np.empty(0, dtype=np.int64), []
        vcpu = cols["vcpu"]
        tkey = thread_keys(cols["tid"], vcpu)
        combined = (cols["tgid"].astype(np.int64) << 32) | (tkey & 0xFFFFFFFF)
        codes, uniques = factorize(combined)
        # Stable argsort of 16-bit keys is a radix sort: linear in the chunk.
        tcodes = codes.astype(np.uint16) if len(uniques) < 65536 else codes
        state = _STATE[kind]
        gate = gate_mask(kind, cols["need_flush"])
        ev = evidence_mask(kind, cols["value"])
        walk = _WALK[kind]
        aux = np.full(len(kind), -1, dtype=np.int64)
        if self.select_all:
            if walk.any():
                _walk_edges(tcodes, combined, walk, cols["level"], cols["value"], cols["tgid"],
                            aux, None, self.walk_tails)
            cols["aux"] = aux
            return np.arange(len(kind)), self._new_threads(codes, uniques, vcpu, comm)
        keep = [np.flatnonzero(state | gate), *_thread_scan(tcodes, gate, ev, vcpu)]
        if walk.any():
            keep.append(_walk_edges(tcodes, combined, walk, cols["level"], cols["value"],
                                    cols["tgid"], aux, self.edges, self.walk_tails))
        cols["aux"] = aux
        rows = np.unique(np.concatenate(keep))     # sorted; a row may be kept twice
        return rows, self._new_threads(codes, uniques, vcpu, comm)

    def _new_threads(self, codes, uniques, vcpu, comm) -> list:
        """Threads whose vCPU id this chunk may teach (few after the first chunk)."""
        unknown = np.fromiter((self.known.get(int(u), (-1, ""))[0] < 0 for u in uniques),
                              dtype=bool, count=len(uniques))
        if not unknown.any():
            return []
        rows_of_unknown = unknown[codes]
        first_vcpu = _first_per_code(codes, rows_of_unknown & (vcpu >= 0))
        first_row = _first_per_code(codes, rows_of_unknown)
        out = []
        for code in np.flatnonzero(unknown).tolist():
            u = int(uniques[code])
            i = first_vcpu.get(code)
            v = int(vcpu[i]) if i is not None else -1
            old_v, old_c = self.known.get(u, (-1, ""))
            c = old_c or (comm[first_row[code]] if comm is not None and code in first_row else "")
            self.known[u] = (v if v >= 0 else old_v, old_c or c)
            tkey = u & 0xFFFFFFFF
            if tkey >= 1 << 31:
                tkey -= 1 << 32
            out.append((u >> 32, tkey, v, c))
        return out


def _incomplete(cols: dict, rows: np.ndarray) -> int:
    """Rows the model would misread for a missing field (see Selection.incomplete).

    Every shadow-page row is among ``rows``; flush requests without need_flush_tlb are not
    (they are no gate), so those are counted over the whole chunk."""
    kind = cols["kind"]
    sp = rows[_SP[kind[rows]]]
    n = int(np.count_nonzero((cols["gfn"][sp] < 0) | (cols["role"][sp] < 0)))
    pv = kind == Kind.FLUSH_REQUEST_PV
    return n + int(np.count_nonzero(pv & (cols["need_flush"] < 0)))


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Indices of the first row of each distinct key, in row order."""
    sub = factorize(keys)[0]                        # codes follow first appearance
    return np.flatnonzero(np.r_[True, sub[1:] > np.maximum.accumulate(sub)[:-1]])


def _first_per_code(codes: np.ndarray, mask: np.ndarray) -> dict[int, int]:
    """code -> index of its first row among the masked rows."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return {}
    sub, ucodes = factorize(codes[idx])              # sub codes follow first appearance
    first = np.flatnonzero(np.r_[True, sub[1:] > np.maximum.accumulate(sub)[:-1]])
    return dict(zip(ucodes[sub[first]].tolist(), idx[first].tolist()))


def _thread_scan(codes, gate, ev, vcpu) -> tuple[np.ndarray, np.ndarray]:
    """One stable sort by thread, two answers:

    - evidence rows that follow a gate on their thread, or open their thread's chunk;
    - rows whose vCPU id differs from the previous row of their thread that named one, and
      each thread's first row naming one (the replay compares it with what it knows).
    """
    named = vcpu >= 0
    sel = np.flatnonzero(gate | ev | named)
    if not len(sel):
        return sel, sel
    order = np.argsort(codes[sel], kind="stable")
    rows = sel[order]
    ks = codes[rows]
    return _first_evidence(rows, ks, gate[rows], ev[rows]), _vcpu_changes(rows, ks, vcpu[rows])


def _first_evidence(rows, ks, gs, es) -> np.ndarray:
    """Among thread-sorted rows: evidence that follows a gate or opens its thread."""
    m = gs | es
    rows, ks, gs = rows[m], ks[m], gs[m]
    if not len(rows):
        return rows
    keep = np.empty(len(rows), dtype=bool)
    keep[0] = True
    keep[1:] = (ks[1:] != ks[:-1]) | gs[:-1]
    keep &= ~gs
    return rows[keep]


def _vcpu_changes(rows, ks, vs) -> np.ndarray:
    """Among thread-sorted rows: those naming a vCPU other than the thread's previous one."""
    m = vs >= 0
    rows, ks, vs = rows[m], ks[m], vs[m]
    if not len(rows):
        return rows
    keep = np.empty(len(rows), dtype=bool)
    keep[0] = True
    keep[1:] = (ks[1:] != ks[:-1]) | (vs[1:] != vs[:-1])
    return rows[keep]


def _walk_edges(codes, thread, walk, level, value, tgid, aux, seen: Optional[set],
                tails: dict) -> np.ndarray:
    """Walker rows giving a guest page-table edge never handed on before.

    The replay records each edge once (replay.py keeps them per VM, and get_page uses them
    for SPs created later), so repeats carry nothing new.  Sets aux[row] to the parent
    table's gfn (WALK_FROM_ROOT for the top level).  ``tails``: per thread, the (level,
    table) of its last walker row of the previous chunks, so a walk cut by a chunk boundary
    chains on (chunk boundaries must not change the result)."""
    w = np.flatnonzero(walk)
    order = np.argsort(codes[w], kind="stable")
    rows = w[order]
    lv = level[rows].astype(np.int64)
    pte = value[rows]
    child = (pte & PTE_ADDR) >> 12
    leaf = (lv < 2) | ((pte & PTE_PRESENT) == 0) | (((lv == 2) | (lv == 3)) & ((pte & PTE_PSE) != 0))
    same = np.r_[False, codes[rows][1:] == codes[rows][:-1]]
    chained = same & np.r_[False, lv[:-1] == lv[1:] + 1]
    parent = np.where(chained, np.r_[-1, child[:-1]], WALK_FROM_ROOT)
    owners = thread[rows]
    for i in np.flatnonzero(~same).tolist():          # each thread's first row here
        tail = tails.get(int(owners[i]))
        if tail is not None and tail[0] == lv[i] + 1:
            parent[i] = tail[1]
    last = np.r_[~same[1:], True]
    for i in np.flatnonzero(last).tolist():
        tails[int(owners[i])] = (int(lv[i]), int(child[i]))
    ok = ~leaf
    rows, lv, child, parent = rows[ok], lv[ok], child[ok], parent[ok]
    if seen is None:                         # every row (the per-event reference)
        aux[rows] = parent
        return rows
    if not len(rows):
        return rows
    # An edge below the top is a fact about the VM's guest page tables; a top edge depends
    # on the thread's root, so it is distinct per thread.
    top = parent == WALK_FROM_ROOT
    owner = np.where(top, thread[rows], -1)
    vm_codes = factorize(tgid[rows])[0].astype(np.int64)
    thread_codes = codes[rows].astype(np.int64)
    offset = int(thread_codes.max()) + 1
    if offset + len(vm_codes) < 1 << 19:     # (unit, child, level) packs into 63 bits
        unit = np.where(top, thread_codes, offset + vm_codes)
        packed = (unit << 44) | (child << 4) | lv
        k1 = factorize(packed)[0].astype(np.int64)
    else:
        k1 = factorize_rows(tgid[rows], owner, lv, child).astype(np.int64)
    k2 = factorize(parent)[0].astype(np.int64)
    first = _first_occurrences(k1 * (int(k2.max()) + 1) + k2)
    new = []
    for i, k in zip(first.tolist(), zip(tgid[rows[first]].tolist(), owner[first].tolist(),
                                        lv[first].tolist(), parent[first].tolist(),
                                        child[first].tolist())):
        if k not in seen:
            seen.add(k)
            new.append(i)
    first = np.asarray(new, dtype=np.int64)
    rows = rows[first]
    aux[rows] = parent[first]
    return rows
