"""Event tables: pandas DataFrames with exactly the schema's columns and dtypes."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kvmtrace.schema import COLUMNS, COLUMN_NAMES, KIND_NAMES, Kind, SchemaError, empty_columns


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame(empty_columns(0))


def conform(df: pd.DataFrame, *, fill_missing: bool = False) -> pd.DataFrame:
    """Return df with the schema's columns, in order, cast to their dtypes.

    Raises SchemaError naming the first missing column (unless fill_missing) or the
    first value that does not fit its column.
    """
    out = {}
    n = len(df)
    for col in COLUMNS:
        if col.name not in df.columns:
            if not fill_missing:
                raise SchemaError(f"missing column {col.name!r}")
            out[col.name] = np.full(n, col.missing, dtype=object if col.dtype == "str" else col.dtype)
            continue
        values = df[col.name]
        if col.dtype == "str":
            out[col.name] = values.fillna("").astype(str).to_numpy(dtype=object)
            continue
        if values.isna().any():
            raise SchemaError(f"column {col.name!r} has empty values")
        try:
            arr = values.to_numpy()
            cast = arr.astype(col.dtype)
            if not np.array_equal(cast.astype(np.int64, copy=False), arr.astype(np.int64, copy=False)):
                raise SchemaError(f"column {col.name!r} has values out of range for {col.dtype}")
        except (TypeError, ValueError, OverflowError) as exc:
            raise SchemaError(f"column {col.name!r} is not {col.dtype}: {exc}") from None
        out[col.name] = cast
    frame = pd.DataFrame(out, columns=list(COLUMN_NAMES))
    bad = ~frame["kind"].isin(list(KIND_NAMES))
    if bad.any():
        raise SchemaError(f"unknown event kind code {int(frame['kind'][bad].iloc[0])}")
    return frame


def from_rows(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Build a conforming frame from dict rows; absent payload fields get their missing value."""
    cols = empty_columns(len(rows))
    for i, row in enumerate(rows):
        for key, value in row.items():
            cols[key][i] = value
    return pd.DataFrame(cols, columns=list(COLUMN_NAMES))


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    return pd.concat(frames, ignore_index=True)


class SelectionError(ValueError):
    """A VM or vCPU filter that selects nothing in a trace (exit 2, naming what exists)."""


def select_events(df: pd.DataFrame, *, vm: int | None = None, vcpu: int | None = None,
                  source: str = "the trace") -> pd.DataFrame:
    """The rows of VM ``vm`` and of the threads that ran vCPU ``vcpu``, and every LOST
    marker (a loss may have held the selected events).  A filter that matches no event is
    an error naming what the trace holds, never an empty (and so "nothing found") trace."""
    kind = df["kind"].to_numpy()
    lost = kind == int(Kind.LOST)
    keep = ~lost
    if vm is not None:
        tgid = df["tgid"].to_numpy()
        if not (keep & (tgid == vm)).any():
            vms = ", ".join(map(str, sorted(set(tgid[keep].tolist())))) or "none"
            raise SelectionError(f"no VM {vm} in {source}; VMs: {vms}")
        keep &= tgid == vm
    if vcpu is not None:
        vcpus, tids = df["vcpu"].to_numpy(), df["tid"].to_numpy()
        named = keep & (vcpus == vcpu)
        if not named.any():
            seen = ", ".join(map(str, sorted(set(vcpus[keep & (vcpus >= 0)].tolist())))) or "none"
            raise SelectionError(f"no vCPU {vcpu} in {source}"
                                 + (f" VM {vm}" if vm is not None else "") + f"; vCPUs: {seen}")
        # The vCPU's host threads: its shadow-page events carry no vCPU id (see schema).
        keep &= np.isin(tids, np.unique(tids[named])) | (vcpus == vcpu)
    return df[keep | lost].reset_index(drop=True)
