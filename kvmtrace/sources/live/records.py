"""The ring buffer slot layout (struct kt_record in kvmtrace/probes/kvmtrace.c) and its conversion
to schema rows, vectorised."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd

from kvmtrace.schema import COLUMNS, COLUMN_NAMES, Kind

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


def to_frame(slots: np.ndarray, comm_of: Callable[[int], str] | Mapping[int, str],
             order: np.ndarray | slice | None = None) -> pd.DataFrame:
    """Schema rows for slots[order] (order: ts order, or None when already in order);
    comm_of names a tid.  Column by column, so a reorder never copies whole slots."""
    sel = slice(None) if order is None else order

    def col(name: str, dtype) -> np.ndarray:
        return slots[name][sel].astype(dtype, copy=False)

    role = col("role", np.int64)
    flags = col("flags", np.uint8)
    role[(flags & F_ROLE) == 0] = -1    # role only where the record has it
    parent_role = col("parent_role", np.int64)
    parent_role[(flags & F_PARENT_ROLE) == 0] = -1
    tids = col("tid", np.int32)
    codes, uniq = pd.factorize(tids)
    lookup = comm_of.get if isinstance(comm_of, Mapping) else comm_of
    # Name each thread once, then expand by index (pandas stores the column as strings).
    names = pd.Series([lookup(int(t)) or "" for t in uniq] + [""]).array
    cols = {
        "ts": col("ts", np.int64),
        "cpu": col("cpu", np.int16),
        "tgid": col("tgid", np.int32),
        "tid": tids,
        "vcpu": col("vcpu", np.int32),
        "kind": col("kind", np.uint8),
        "gfn": col("gfn", np.int64),
        "role": role,
        "level": col("level", np.int8),
        "root_count": col("root_count", np.int32),
        "unsync": col("unsync", np.int8),
        "created": col("created", np.int8),
        "need_flush": col("need_flush", np.int8),
        "value": col("value", np.int64),
        "comm": names.take(codes),
        "parent_gfn": col("parent_gfn", np.int64),
        "parent_role": parent_role,
        "unsync_children": col("unsync_children", np.int32),
    }
    n = len(tids)
    for c in COLUMNS:                      # columns the slot does not carry
        if c.name not in cols:
            cols[c.name] = np.full(n, c.missing, dtype=c.dtype)
    return pd.DataFrame(cols, columns=list(COLUMN_NAMES), copy=False)


def lost_frame(ts: int, lost_by_cpu: Mapping[int, int]) -> pd.DataFrame:
    """LOST marker rows: one per CPU that dropped records, value = how many."""
    cpus = sorted(c for c, v in lost_by_cpu.items() if v > 0)
    n = len(cpus)
    from kvmtrace.schema import empty_columns
    cols = empty_columns(n)
    cols["ts"][:] = ts
    cols["cpu"][:] = cpus
    cols["kind"][:] = int(Kind.LOST)
    cols["value"][:] = [lost_by_cpu[c] for c in cpus]
    return pd.DataFrame(cols, columns=list(COLUMN_NAMES))
