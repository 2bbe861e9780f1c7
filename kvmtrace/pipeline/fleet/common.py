"""One (host, VM) partition -> one fleet row, the same for every engine.

Each part's events are validated as every reader validates (``sources.validate``: an
impossible event becomes an INVALID marker) and conformed to the schema's dtypes (Spark
and DuckDB hand back wider integer types), then replayed by ``analysis.fleet``.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
from typing import Iterable

import pandas as pd

from kvmtrace.analysis.fleet import analyze_vm_parts
from kvmtrace.schema import SchemaError, TraceMeta
from kvmtrace.sources.frame import conform
from kvmtrace.sources.native import TraceFileError
from kvmtrace.sources.validate import Validator


def partition_row(host: str, vm: int, parts: Iterable[tuple[str, pd.DataFrame, TraceMeta]]) -> dict:
    """The row of partition (host, vm) from its parts ``(path, events, meta)``."""
    checked = []
    for path, events, meta in parts:
        name = os.path.basename(str(path))
        try:
            events = conform(events, fill_missing=True)
        except SchemaError as exc:
            raise TraceFileError(path, str(exc)) from None
        validator = Validator(name)
        events = validator.check_frame(events)
        validator.annotate(meta)
        checked.append((name, events, meta))
    return analyze_vm_parts(checked, host=host, vm=int(vm))[0]
