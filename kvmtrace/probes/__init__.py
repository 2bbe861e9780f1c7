"""The BPF C kvmtrace compiles with BCC (imported as ``kvmtrace.probes``).

``kvmtrace.c`` is the prelude: record layout, maps, filter and emit helpers.  The per-probe
handlers are generated at run time from tracefs formats and kallsyms by
``kvmtrace.sources.live.program`` (the benchmarks' syscall probe too: ``kvmtrace.sources.live.selftest``).
"""
from __future__ import annotations

from importlib import resources


def source(name: str = "kvmtrace.c") -> str:
    """The text of one C file in this package."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
