"""Partitioned datasets: traces of many hosts, one Parquet part per (host, VM, recording).

Layout (Hive-style, which DuckDB's ``read_parquet(..., hive_partitioning=true)`` and Spark's
``spark.read.parquet`` read as columns ``host`` and ``vm``)::

    DIR/host=<host name>/vm=<tgid>/part-<time>-<pid>-<random>.parquet

Each part is a kvmtrace Parquet file with the same columns and metadata as ``record -o``
writes, plus ``host`` (and ``kernel_release``, as recorded) in the metadata.  Replay state
is per VM (shadow pages are VM-wide, flush windows per vCPU), so a VM's part holds exactly
the rows ``analyze --vm TGID`` replays of the source: the VM's events and every LOST and
INVALID marker (a loss of another VM, or of an unknown one, is counted as it would be
there).  One source trace gives one part per VM; several recordings of a VM are several
parts, analysed separately and reported together, as ``analyze`` does with several files.

Appending is safe with concurrent writers and readers: a part is written under a hidden
temporary name in its partition (``.part-*.tmp``, which no reader's glob matches), fsynced,
and renamed into place; names are unique (time, PID, random), so nothing is overwritten and
no partial file is ever visible.  Host names become directory names, so only host-name
characters are accepted (letters, digits, ``.``, ``-``, ``_``; no ``/``, ``=``, ``..``).

May import: the contract and the other source modules.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kvmtrace.schema import Kind, TraceMeta
from kvmtrace.sources.frame import conform
from kvmtrace.sources.native import (ARROW_SCHEMA, ROW_GROUP_ROWS, TraceFileError, _with_meta,
                                     check_columns, meta_from_schema, reading)

HOST_KEY = "host"
VM_KEY = "vm"
PART_GLOB = "part-*.parquet"
# RFC 1123 host names (letters, digits, hyphens, dots) plus '_', which real fleets use;
# at most 253 characters; the first is a letter or digit, so '.', '..' and '-x' are refused.
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
MARKER_KINDS = (int(Kind.LOST), int(Kind.INVALID))


class DatasetError(TraceFileError):
    """A dataset cannot be written or read; the message names the directory or file."""


def check_host_name(name: str) -> str:
    """``name`` if it is safe as a partition directory name, else DatasetError."""
    if not HOST_RE.fullmatch(name) or ".." in name:
        raise DatasetError(name or "''", "not usable as a host name in a dataset: use letters, "
                                         "digits, '.', '-', '_' (no '/', '=', '..'), at most 253, "
                                         "starting with a letter or digit")
    return name


def this_host() -> str:
    """This machine's host name (short, as ``hostname`` prints it)."""
    return socket.gethostname().split(".")[0] or "localhost"


# ----------------------------------------------------------------------------- writing

def vm_partitions(events: pd.DataFrame) -> dict[int, np.ndarray]:
    """Row masks per VM: the VM's events plus every LOST and INVALID marker (the rows
    ``analysis.replay.Replayer(vm=tgid)`` keeps).  VMs are the TGIDs of non-marker rows
    and of markers naming a VM; rows of no VM (TGID -1) form partition -1."""
    kind = events["kind"].to_numpy()
    tgid = events["tgid"].to_numpy()
    marker = np.isin(kind, MARKER_KINDS)
    vms = set(np.unique(tgid[~marker]).tolist()) | set(np.unique(tgid[marker & (tgid >= 0)]).tolist())
    return {int(vm): (tgid == vm) | marker for vm in sorted(vms)}


@dataclass
class WrittenPart:
    host: str
    vm: int
    path: Path
    events: int


def write_dataset(root: str | os.PathLike, events: pd.DataFrame, meta: TraceMeta,
                  host: Optional[str] = None) -> list[WrittenPart]:
    """Write one trace into dataset ``root``: one new part per VM.  ``host`` (default: the
    metadata's host, else this machine's name) names the host partition."""
    host = check_host_name(host if host is not None else (meta.host or this_host()))
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(root, "exists and is not a directory")
    events = conform(events, fill_missing=True)
    parts = vm_partitions(events)
    if not parts:
        raise DatasetError(root, "the trace holds no event: nothing to write")
    part_meta = replace(meta, host=host, notes=list(meta.notes), probes=list(meta.probes),
                        lost_per_cpu=dict(meta.lost_per_cpu))
    written = []
    for vm, mask in parts.items():
        rows = events[mask].reset_index(drop=True)
        path = _write_part(root / f"{HOST_KEY}={host}" / f"{VM_KEY}={vm}", rows, part_meta)
        written.append(WrittenPart(host, vm, path, len(rows)))
    return written


def _write_part(directory: Path, events: pd.DataFrame, meta: TraceMeta) -> Path:
    """One part, atomically: a hidden temporary file, fsync, rename to a unique name."""
    try:
        _make_dirs(directory)
    except OSError as exc:
        raise DatasetError(directory, f"cannot create: {exc.strerror or exc}") from None
    name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{secrets.token_hex(6)}.parquet"
    final = directory / name
    tmp = directory / f".{name}.tmp"
    try:
        table = pa.Table.from_pandas(events, schema=ARROW_SCHEMA, preserve_index=False)
        table = table.replace_schema_metadata(_with_meta(ARROW_SCHEMA, meta).metadata)
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, final)
        _fsync_dir(directory)
    except BaseException as exc:
        for p in (tmp,):
            try:
                p.unlink()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise DatasetError(final, f"cannot write: {exc.strerror or exc}") from None
        raise
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Give the written part its final name.  link() fails if the name exists, so it never
    replaces another writer's part; a filesystem without hard links (vfat, some FUSE and
    network filesystems: EPERM, EOPNOTSUPP, ENOSYS) gets rename(), safe because the name is
    unique (time, pid and 48 random bits)."""
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS) or final.exists():
            raise
        os.rename(tmp, final)
        return
    os.unlink(tmp)


def _make_dirs(directory: Path) -> None:
    """Create the partition's missing directories, each made durable in its parent: after a
    crash, an fsynced part is no use if the new ``host=``/``vm=`` entry leading to it was
    never written (fsync of a file does not sync its directory's entry, fsync(2))."""
    missing: list[Path] = []
    d = directory
    while not d.is_dir() and d != d.parent:      # bounded by the path's depth
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass                                  # a concurrent writer made it
        _fsync_dir(d.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading

@dataclass
class Partition:
    """One (host, VM) partition and its parts, in name order."""

    host: str
    vm: int
    parts: list[Path] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.vm)


def _value(name: str, key: str) -> Optional[str]:
    prefix = key + "="
    return name[len(prefix):] if name.startswith(prefix) else None


def list_partitions(root: str | os.PathLike, hosts: Optional[str] = None) -> list[Partition]:
    """Every (host, VM) partition of dataset ``root`` whose host matches the glob
    ``hosts``, sorted by host and VM.  Directories that are not ``host=``/``vm=`` are
    ignored; a VM directory name that is not an integer is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "no such dataset directory" if not root.exists()
                           else "is not a directory")
    out = []
    for hdir in sorted(root.iterdir()):
        host = _value(hdir.name, HOST_KEY)
        if host is None or not hdir.is_dir():
            continue
        if hosts is not None and not fnmatch.fnmatchcase(host, hosts):
            continue
        for vdir in sorted(hdir.iterdir()):
            vm = _value(vdir.name, VM_KEY)
            if vm is None or not vdir.is_dir():
                continue
            try:
                tgid = int(vm)
            except ValueError:
                raise DatasetError(vdir, "the VM partition is not a TGID") from None
            parts = sorted(vdir.glob(PART_GLOB))
            if parts:
                out.append(Partition(host, tgid, parts))
    out.sort(key=lambda p: p.key)
    return out


def part_meta(path: str | os.PathLike) -> TraceMeta:
    """The metadata of one part (its Parquet footer only)."""
    with reading(path, "not a readable Parquet file"):
        schema = pq.read_schema(path)
    return meta_from_schema(path, schema)


def read_part(path: str | os.PathLike) -> tuple[pd.DataFrame, TraceMeta]:
    """One part's events and metadata, the values as stored: the fleet engines conform
    (fill what older versions lack) and validate, as every reader does."""
    with reading(path, "not a readable Parquet file"):
        table = pq.read_table(path, use_threads=False)
    meta = meta_from_schema(path, table.schema)
    check_columns(path, table.schema, meta)
    with reading(path):
        events = table.to_pandas()
    return events, meta
