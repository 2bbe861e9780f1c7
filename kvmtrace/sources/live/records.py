"""The ring buffer slot layout (struct kt_record in kvmtrace/probes/kvmtrace.c) and its conversion
to schema rows, vectorised."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from kvmtrace.factorize import factorize
from kvmtrace.schema import COLUMN_BY_NAME, COLUMNS, COLUMN_NAMES, Chunk, CommColumn, Kind, empty_columns

if TYPE_CHECKING:        # pandas and pyarrow are imported by the methods that return their types
    import pandas as pd
    import pyarrow as pa

# One ring buffer slot: the kernel's 8-byte record header, then struct kt_record.
SLOT_DTYPE = np.dtype([
    ("hdr_len", "<u4"), ("hdr_pg_off", "<u4"),
    ("ts", "<u8"), ("gfn", "<i8"), ("value", "<i8"),
    ("role", "<u4"), ("root_count", "<i4"), ("tgid", "<u4"), ("tid", "<u4"),
    ("vcpu", "<i4"), ("cpu", "<u2"), ("kind", "u1"), ("level", "i1"),
    ("unsync", "i1"), ("created", "i1"), ("need_flush", "i1"), ("flags", "u1"),
    ("unsync_children", "<i4"), ("parent_gfn", "<i8"), ("parent_role", "<u4"), ("pad", "V4"),
])
assert SLOT_DTYPE.itemsize == 80
F_ROLE = 1
F_PARENT_ROLE = 2      # KT_F_PROLE in kvmtrace/probes/exact.c


# Slot field -> schema column it fills (the schema's dtype is the target).
SLOT_COLUMNS = ("ts", "cpu", "tgid", "tid", "vcpu", "kind", "gfn", "role", "level",
                "root_count", "unsync", "created", "need_flush", "value", "parent_gfn",
                "parent_role", "unsync_children")
# Slots per extraction pass: a block of 80-byte slots stays in the CPU cache while each
# field is read out of it.  Reading one field of a whole multi-MB chunk at a time streams
# the chunk from memory once per field (about 5x slower here).
BLOCK_SLOTS = 16384


@dataclass
class Columns:
    """One chunk of schema rows as contiguous column arrays; ``comm`` as per-row codes
    into ``names``, so a thread's name is decoded once, never once per row."""
    arrays: dict                 # column name -> np.ndarray (every column but comm)
    comm_codes: np.ndarray       # int32, an index into names (an unnamed thread has "")
    names: list

    def __len__(self) -> int:
        return len(self.comm_codes)

    def chunk(self, columns: Sequence[str]) -> Chunk:
        """The model's view of these rows: ``columns`` (those present) and the names."""
        return Chunk({c: self.arrays[c] for c in columns if c in self.arrays},
                     CommColumn(self.names, self.comm_codes))

    def frame(self) -> pd.DataFrame:
        import pandas as pd
        cols = dict(self.arrays)
        cols["comm"] = pd.Series(self.names, dtype=object).array.take(self.comm_codes)
        return pd.DataFrame(cols, columns=list(COLUMN_NAMES), copy=False)

    def batch(self, schema: pa.Schema) -> pa.RecordBatch:
        """The chunk as a record batch of ``schema`` (the native ARROW_SCHEMA)."""
        import pyarrow as pa
        arrays = []
        for field in schema:
            if field.name == "comm":
                words = pa.array(self.names, type=pa.string())
                arrays.append(pa.DictionaryArray.from_arrays(pa.array(self.comm_codes), words)
                              .cast(field.type))
            else:
                arrays.append(pa.array(self.arrays[field.name], type=field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    @staticmethod
    def of_frame(frame: pd.DataFrame) -> "Columns":
        """The rows of a schema frame (small ones: tests)."""
        import pandas as pd
        codes, names = pd.factorize(frame["comm"].astype(str))
        arrays = {c.name: frame[c.name].to_numpy(dtype=c.dtype) for c in COLUMNS if c.dtype != "str"}
        return Columns(arrays, codes.astype(np.int32, copy=False), list(names))

    @staticmethod
    def concat(parts: Sequence["Columns"]) -> "Columns":
        """One chunk of the parts' rows in order (thread names merged)."""
        if len(parts) == 1:
            return parts[0]
        index: dict = {}                         # name -> its code in the joined chunk
        codes = []
        for part in parts:
            remap = np.array([index.setdefault(w, len(index)) for w in part.names], dtype=np.int32)
            codes.append(remap[part.comm_codes])
        arrays = {k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].arrays}
        return Columns(arrays, np.concatenate(codes), list(index))


def to_columns(slots: np.ndarray | Sequence[np.ndarray],
               comm_of: Callable[[int], str] | Mapping[int, str],
               order: np.ndarray | slice | None = None) -> Columns:
    """Schema rows for slots[order] (order: ts order, or None when already in order);
    slots may be a list of pieces, read in turn (order then indexes their concatenation);
    comm_of names a tid."""
    pieces = [slots] if isinstance(slots, np.ndarray) else list(slots)
    if order is not None:
        joined = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        pieces = [joined[order]]                 # one gather of whole slots
    n = sum(len(p) for p in pieces)
    arrays = {name: np.empty(n, dtype=COLUMN_BY_NAME[name].dtype) for name in SLOT_COLUMNS}
    flags = np.empty(n, dtype=np.uint8)
    at = 0
    for piece in pieces:
        for start in range(0, len(piece), BLOCK_SLOTS):
            block = piece[start:start + BLOCK_SLOTS]
            end = at + len(block)
            for name in SLOT_COLUMNS:
                arrays[name][at:end] = block[name]
            flags[at:end] = block["flags"]
            at = end
    arrays["role"][(flags & F_ROLE) == 0] = -1            # role only where the record has it
    arrays["parent_role"][(flags & F_PARENT_ROLE) == 0] = -1
    for col in COLUMNS:                          # columns the slot does not carry
        if col.name not in arrays and col.dtype != "str":
            arrays[col.name] = np.full(n, col.missing, dtype=col.dtype)
    # Never imports pandas: a 0.4 s import in the drain would lose events.
    codes, uniq = factorize(arrays["tid"], allow_import=False)
    lookup = comm_of.get if isinstance(comm_of, Mapping) else comm_of
    names = [lookup(int(t)) or "" for t in uniq]
    return Columns(arrays, codes.astype(np.int32, copy=False), names)


def to_frame(slots: np.ndarray, comm_of: Callable[[int], str] | Mapping[int, str],
             order: np.ndarray | slice | None = None) -> pd.DataFrame:
    """Schema rows for slots[order] as a DataFrame (see to_columns)."""
    return to_columns(slots, comm_of, order).frame()


def lost_columns(ts: int, lost_by_cpu: Mapping[int, int]) -> Columns:
    """LOST marker rows: one per CPU that dropped records, value = how many."""
    cpus = sorted(c for c, v in lost_by_cpu.items() if v > 0)
    n = len(cpus)
    cols = empty_columns(n)
    cols["ts"][:] = ts
    cols["cpu"][:] = cpus
    cols["kind"][:] = int(Kind.LOST)
    cols["value"][:] = [lost_by_cpu[c] for c in cpus]
    comm = cols.pop("comm")
    names = [comm[0]] if n else []               # every marker has the missing (empty) name
    return Columns(cols, np.zeros(n, dtype=np.int32), names)


def lost_frame(ts: int, lost_by_cpu: Mapping[int, int]) -> pd.DataFrame:
    """lost_columns as a DataFrame (tests)."""
    return lost_columns(ts, lost_by_cpu).frame()
