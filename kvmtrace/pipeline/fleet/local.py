"""The local engine: a process pool over (host, VM) partitions.

Each worker reads a partition's parts with pyarrow (``sources.dataset.read_part``) and
returns its row.  ``jobs`` processes (default: the CPU count); with one job everything
runs in this process.  Largest partitions are submitted first, so one big VM does not
finish alone at the end.

May import: the contract, the model and the sources.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Optional

from kvmtrace.pipeline.fleet import FleetRun, Progress
from kvmtrace.pipeline.fleet.common import partition_row
from kvmtrace.sources.dataset import Partition, list_partitions, read_part


def analyze_partition(p: Partition) -> dict:
    parts = []
    for path in p.parts:
        events, meta = read_part(path)
        parts.append((str(path), events, meta))
    return partition_row(p.host, p.vm, parts)


def _size(p: Partition) -> int:
    return sum(os.path.getsize(f) for f in p.parts)


def run_pool(partitions: list[Partition], work, jobs: Optional[int],
             progress: Optional[Progress]) -> tuple[list[dict], int]:
    """``work(partition) -> row`` over a pool of ``jobs`` processes; (rows, workers)."""
    jobs = max(1, jobs or os.cpu_count() or 1)
    rows: list[dict] = []
    events = 0
    order = sorted(partitions, key=_size, reverse=True)
    if jobs == 1 or len(order) <= 1:
        for p in order:
            rows.append(work(p))
            events += rows[-1]["events"]
            if progress:
                progress(len(rows), len(order), events)
        return rows, 1
    with ProcessPoolExecutor(max_workers=min(jobs, len(order))) as pool:
        futures = [pool.submit(work, p) for p in order]
        try:
            for fut in as_completed(futures):
                rows.append(fut.result())
                events += rows[-1]["events"]
                if progress:
                    progress(len(rows), len(order), events)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return rows, min(jobs, len(order))


def run(root: str, *, hosts: Optional[str] = None, jobs: Optional[int] = None,
        progress: Optional[Progress] = None) -> FleetRun:
    partitions = list_partitions(root, hosts)
    rows, workers = run_pool(partitions, analyze_partition, jobs, progress)
    return FleetRun("local", rows, len(partitions), sum(len(p.parts) for p in partitions),
                    0.0, workers)
