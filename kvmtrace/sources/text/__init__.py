"""Open any trace kvmtrace understands, choosing the reader by content, not by name.

Native files (Parquet, an unfinished recording's Arrow stream, JSON Lines, gzipped or
not) are read by ``kvmtrace.sources.native``; text from ftrace, trace-cmd and perf by
``kvmtrace.sources.text.text``.
"""
from __future__ import annotations

import zlib
import os
from pathlib import Path

from kvmtrace.sources.native import (GZIP_MAGIC, PART_SUFFIX, Trace, TraceFileError, read_native,
                         sniff_native)

SNIFF_BYTES = 4096


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(GZIP_MAGIC):
        # A decompressor object, unlike gzip.open, tolerates a stream cut off by a crash.
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
        except zlib.error:
            return b""
    return head


def load(path: str | os.PathLike, tgid_map: dict[int, int] | None = None) -> Trace:
    """Read a trace file of any supported kind into a Trace.

    A recording whose writer was killed leaves ``NAME.part`` instead of ``NAME``; asking
    for ``NAME`` then recovers what ``NAME.part`` holds.
    """
    p = Path(path)
    if not p.exists() and Path(str(p) + PART_SUFFIX).exists():
        p = Path(str(p) + PART_SUFFIX)
    try:
        if p.is_dir():
            raise TraceFileError(path, "is a directory, not a trace file")
        if p.stat().st_size == 0:
            raise TraceFileError(path, "empty file")
        head = _head(p)
    except FileNotFoundError:
        raise TraceFileError(path, "no such file") from None
    except PermissionError:
        raise TraceFileError(path, "permission denied") from None
    native = sniff_native(head)
    if native is not None:
        return read_native(p, native)
    from kvmtrace.sources.text.text import import_text
    return import_text(p, tgid_map=tgid_map)
