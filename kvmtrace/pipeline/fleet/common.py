"""One (host, VM) partition -> one fleet row, the same for every engine.

Each part's events are validated as every reader validates (``sources.validate``: an
impossible event becomes an INVALID marker) and conformed to the schema's dtypes (Spark
and DuckDB hand back wider integer types), then replayed by ``analysis.fleet``.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from kvmtrace.analysis.fleet import analyze_vm_parts
from kvmtrace.schema import COLUMN_NAMES, COLUMNS, KIND_NAMES, SchemaError, TraceMeta
from kvmtrace.sources.frame import conform
from kvmtrace.sources.native import TraceFileError
from kvmtrace.sources.validate import Validator


_KIND_CODES = np.array(sorted(KIND_NAMES))
_DTYPES = [np.dtype(object if c.dtype == "str" else c.dtype) for c in COLUMNS]


def _fast_conform(events: pd.DataFrame) -> Optional[pd.DataFrame]:
    """``events`` with the schema's columns in order and dtypes when it has every column as
    an integer column of some width (a kvmtrace part read by pyarrow: unchanged; Spark's
    signed types: cast after a range check), else None (conform() decides).  conform()
    costs ~10 ms a part in pandas' per-column checks, more than replaying a small VM."""
    if set(events.columns) != set(COLUMN_NAMES):
        return None
    cols = {}
    same = list(events.columns) == list(COLUMN_NAMES)
    for col, want in zip(COLUMNS, _DTYPES):
        a = events[col.name].to_numpy()
        if col.dtype == "str":
            if a.dtype != object and not pd.api.types.is_string_dtype(events[col.name].dtype):
                return None
        elif a.dtype != want:
            if a.dtype.kind not in "iu":
                return None
            info = np.iinfo(want)
            if len(a) and (a.min() < info.min or a.max() > info.max):
                return None
            a = a.astype(want)
            same = False
        cols[col.name] = a
    if not np.isin(np.unique(cols["kind"]), _KIND_CODES).all():
        return None
    return events if same else pd.DataFrame(cols, columns=list(COLUMN_NAMES))


def partition_row(host: str, vm: int, parts: Iterable[tuple[str, pd.DataFrame, TraceMeta]]) -> dict:
    """The row of partition (host, vm) from its parts ``(path, events, meta)``."""
    checked = []
    for path, events, meta in parts:
        name = os.path.basename(str(path))
        try:
            fast = _fast_conform(events)
            events = fast if fast is not None else conform(events, fill_missing=True)
        except SchemaError as exc:
            raise TraceFileError(path, str(exc)) from None
        validator = Validator(name)
        events = validator.check_frame(events)
        validator.annotate(meta)
        checked.append((name, events, meta))
    return analyze_vm_parts(checked, host=host, vm=int(vm))[0]
