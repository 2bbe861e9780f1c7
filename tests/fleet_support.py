"""A small partitioned dataset built from the shipped real fixtures, and what single-file
``analyze --json --vm TGID`` says of each (host, VM) in it (the fleet tests compare)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd

from cli_support import FIXTURES

from kvmtrace.analysis.fleet import sort_rows, vm_row
from kvmtrace.cli import main
from kvmtrace.schema import Kind
from kvmtrace.sources.native import write_trace
from kvmtrace.sources.stream import load

REAL = FIXTURES / "real"
VIOLATION = REAL / "exercise_3space_nosync.parquet"
# host -> the traces recorded on it (each fixture is one VM; "multi" is two VMs in one file
# with a loss of unknown VM between them, so partitioning must copy that marker to both).
HOSTS = {
    "web-1": [REAL / "exercise_2vcpu.parquet", REAL / "flushvia_cr3.parquet"],
    "web-2": [REAL / "exercise_3space.parquet", REAL / "exercise_2vcpu_noflush.parquet"],
    "db-1": [VIOLATION],
    "db-2": ["multi"],
    "123": [REAL / "flushvia_invlpg.parquet"],       # a host name Spark would take for a number
}


def cli(*args) -> tuple[int, str, str]:
    """`kvmtrace ARGS` in this process (the real entry point): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue(), err.getvalue()


def multi_vm_trace(tmp: Path) -> Path:
    """Two real recordings of two VMs as one trace, with a LOST marker of no VM inside."""
    a = load(REAL / "exercise_2vcpu.parquet")
    b = load(REAL / "flushvia_cr4-pge.parquet")
    ev_b = b.events.copy()
    ev_b["ts"] = ev_b["ts"] - int(ev_b["ts"].min()) + int(a.events["ts"].min()) + 7
    events = pd.concat([a.events, ev_b], ignore_index=True)
    lost = events.iloc[[0]].copy()
    lost["kind"] = int(Kind.LOST)
    lost["tgid"] = -1
    lost["value"] = 3
    lost["ts"] = int(a.events["ts"].quantile(0.5))
    events = pd.concat([events, lost], ignore_index=True).sort_values("ts", kind="stable")
    meta = a.meta
    meta.lost_events = 3
    out = tmp / "multi.parquet"
    write_trace(out, events.reset_index(drop=True), meta)
    return out


def sources(tmp: Path) -> dict[str, list[Path]]:
    multi = multi_vm_trace(tmp)
    return {h: [multi if p == "multi" else Path(p) for p in paths] for h, paths in HOSTS.items()}


def build_dataset(tmp: Path) -> tuple[Path, dict[str, list[Path]]]:
    """The dataset, written by `kvmtrace convert --dataset --host` (the real command)."""
    root = tmp / "fleet"
    srcs = sources(tmp)
    for host, paths in srcs.items():
        for p in paths:
            code, _, err = cli("convert", p, "--dataset", root, "--host", host)
            assert code == 0, err
    return root, srcs


def expected_rows(srcs: dict[str, list[Path]]) -> list[dict]:
    """Per (host, VM): `kvmtrace analyze --json --vm TGID` of the source file, as a row."""
    rows = []
    for host, paths in srcs.items():
        for p in paths:
            trace = load(p)
            for tgid in sorted(set(trace.events["tgid"].tolist()) - {-1}):
                code, out, err = cli("analyze", "--json", "--vm", tgid, p)
                assert code in (0, 1, 3), err
                rows.append(vm_row(json.loads(out), host=host, vm=tgid,
                                   kernel=trace.meta.kernel_release))
    return sort_rows(rows)
