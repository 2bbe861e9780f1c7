"""Read a kvmtrace Parquet trace in chunks: only the columns asked for, task names lazily.

This is what makes replay run at tens of millions of events per second.  kvmtrace writes
row groups of at most 2**20 rows: each is read whole (the fastest way through pyarrow)
and decoded straight to numpy, then cut into chunks of ``chunk_rows``.  The ``comm``
strings are the costliest column to decode and the model needs them only for threads it
has not named yet, so each chunk gets a ``CommColumn`` that reads them on first use
(dictionary-encoded).  A foreign file's huge row groups are streamed in slices instead.

May import: the contract and ``kvmtrace.sources.native`` (metadata and column checks).
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kvmtrace.schema import Chunk, CommColumn, TraceMeta
from kvmtrace.sources.native import (ARROW_SCHEMA, TraceFileError, check_columns, meta_from_schema,
                                     note_salvaged, reading)

# A row group up to this many chunks long is read whole and sliced; longer ones stream.
WHOLE_GROUP_CHUNKS = 4
_TYPES = {f.name: f.type for f in ARROW_SCHEMA}


def read_parquet(path: str | os.PathLike, columns: Sequence[str],
                 chunk_rows: int, salvage: bool = False) -> tuple[TraceMeta, Iterator[Chunk]]:
    """(metadata, chunks) of a kvmtrace Parquet file; ``columns`` are numeric column names.

    The metadata and the presence of every column the file's schema version must hold are
    checked here; values as the chunks are read.  Columns a file's older version lacks are
    left out of the chunks (the model fills them).  A row group that fails to decode
    (ZSTD, a page header) is an error naming it; with ``salvage`` the row groups before it
    are kept and the metadata says so."""
    with reading(path, "not a readable Parquet file"):
        pf = pq.ParquetFile(path, read_dictionary=["comm"])
    meta = meta_from_schema(path, pf.schema_arrow)
    present = check_columns(path, pf.schema_arrow, meta)
    names = [c for c in columns if c in present and c != "comm"]
    return meta, _chunks(str(path), pf, names, max(1, int(chunk_rows)), meta, salvage)


def _chunks(path: str, pf: pq.ParquetFile, names: list[str], chunk_rows: int,
            meta: TraceMeta, salvage: bool) -> Iterator[Chunk]:
    for i in range(pf.num_row_groups):
        try:
            with reading(path, f"row group {i} of {pf.num_row_groups}"):
                if pf.metadata.row_group(i).num_rows <= WHOLE_GROUP_CHUNKS * chunk_rows:
                    chunks = list(_whole_group(path, pf, i, names, chunk_rows))
                else:
                    chunks = list(_streamed_group(path, pf, i, names, chunk_rows))
        except TraceFileError as exc:
            if not salvage:
                raise
            note_salvaged(meta, exc.problem)
            return
        yield from chunks


def _whole_group(path: str, pf: pq.ParquetFile, i: int, names: list[str],
                 chunk_rows: int) -> Iterator[Chunk]:
    """Row group ``i`` read whole, in chunks of chunk_rows; comm read on first use."""
    table = pf.read_row_group(i, columns=names, use_threads=False)
    cols = _numpy_columns(path, table, names)
    comm = _GroupComm(path, pf, i)
    n = table.num_rows
    if n <= chunk_rows:
        yield Chunk(cols, CommColumn(loader=comm.whole))
        return
    for start in range(0, n, chunk_rows):
        part = slice(start, start + chunk_rows)
        yield Chunk({k: v[part] for k, v in cols.items()},
                    CommColumn(loader=lambda part=part: comm.rows(part)))


def _streamed_group(path: str, pf: pq.ParquetFile, i: int, names: list[str],
                    chunk_rows: int) -> Iterator[Chunk]:
    for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[i],
                                 columns=names + ["comm"], use_threads=False):
        yield Chunk(_numpy_columns(path, batch, names), CommColumn(*_comm_arrays(batch)))


def _numpy_columns(path: str, table, names: list[str]) -> dict[str, np.ndarray]:
    """The named columns as numpy arrays of the schema's types (a value that does not fit
    its column is an error, as is an empty one)."""
    cols = {}
    for name in names:
        arr = table.column(name)
        if arr.null_count:
            raise TraceFileError(path, f"column {name!r} has empty values")
        if arr.type != _TYPES[name]:
            try:
                arr = arr.cast(_TYPES[name], safe=True)
            except pa.ArrowException:
                raise TraceFileError(path, f"column {name!r} is {arr.type}, with values that "
                                           f"do not fit {_TYPES[name]}") from None
        cols[name] = arr.to_numpy()
    return cols


def _comm_arrays(table) -> tuple:
    """(words, indices) of a table's comm column: the dictionary and its indices, or the
    strings themselves and None."""
    comm = table.column("comm")
    if isinstance(comm, pa.ChunkedArray):
        comm = comm.combine_chunks() if comm.num_chunks != 1 else comm.chunk(0)
    if isinstance(comm, pa.DictionaryArray):
        return comm.dictionary.to_pylist(), comm.indices.fill_null(-1).to_numpy()
    return comm.to_numpy(zero_copy_only=False), None


class _GroupComm:
    """The comm column of one row group, read once, the first time a chunk asks."""

    def __init__(self, path: str, pf: pq.ParquetFile, group: int) -> None:
        self.path, self.pf, self.group = path, pf, group
        self._arrays: tuple | None = None

    def whole(self) -> tuple:
        if self._arrays is None:
            with reading(self.path, f"row group {self.group} (task names)"):
                table = self.pf.read_row_group(self.group, columns=["comm"], use_threads=False)
                self._arrays = _comm_arrays(table)
        return self._arrays

    def rows(self, part: slice) -> tuple:
        words, indices = self.whole()
        if indices is not None:
            return words, indices[part]
        return words[part], None
