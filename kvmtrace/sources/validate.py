"""One validation layer for decoded events, applied to every chunk any source produces.

A decoder can hand over values no KVM can produce: a level-9 shadow page, a uint64 gfn
that wrapped into a negative int64, a timestamp of 0 or years away from its neighbours.
Such an event is never believed: ``Validator.check`` replaces it by an ``INVALID`` row
(schema kind 50) at the same place in the stream, which the model treats like a loss of
one event of that VM (its windows become inconclusive until the vCPUs re-establish their
state), and counts it with its reason for the notes.

Ranges (kernel facts, x86):
- level 1-5: PT64_ROOT_MAX_LEVEL is 5 (arch/x86/include/asm/kvm_host.h); the role's level
  bits (``union kvm_mmu_page_role.level``) the same for shadow pages and roots;
- role: a 32-bit union (``u32 word``);
- gfn: MAXPHYADDR is at most 52 bits, so a gfn is below 2**40;
- vCPU id: below KVM_MAX_VCPU_IDS = KVM_MAX_VCPUS (4096 with MAXSMP) * KVM_VCPU_ID_RATIO (4);
- tid/tgid: at most PID_MAX_LIMIT (4 * 1024 * 1024, include/linux/threads.h);
- host CPU: below NR_CPUS (at most 8192 on x86, CONFIG_MAXSMP);
- booleans (created, unsync, need_flush_tlb): 0 or 1;
- ts: positive (no trace clock reads 0 at an event) and within MAX_SPAN_NS of the first
  chunk's median time.

May import: the contract (schema), numpy, pandas (check_frame only: the recorder checks
column arrays and never imports it).
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from kvmtrace.schema import COLUMN_BY_NAME, COLUMN_NAMES, Kind, SP_KINDS, TraceMeta

MAX_LEVEL = 5
MAX_GFN = 1 << 40
MAX_ROLE = 1 << 32
MAX_VCPU_ID = 4096 * 4
MAX_PID = 4 * 1024 * 1024
MAX_CPU = 8192
MAX_SPAN_NS = 30 * 86400 * 10**9      # 30 days: no recording of KVM flushes spans more
NOTE_PREFIX = "invalid events skipped"

_ROLE_KINDS = np.zeros(256, dtype=bool)
for _k in (*SP_KINDS, Kind.SP_LINK):
    _ROLE_KINDS[int(_k)] = True


def _outside(arr: np.ndarray, low: int, high: int) -> Optional[np.ndarray]:
    """Rows whose value is neither the column's missing value -1 nor in [low, high)
    (low is 0 or 1); None when there are none.  Two reductions decide the common case."""
    a = np.asarray(arr)
    if not len(a):
        return None
    lo, hi = a.min(), a.max()
    if lo >= -1 and hi < high and (low == 0 or not (a == 0).any()):
        return None
    bad = (a < -1) | (a >= high)
    if low > 0:
        bad |= a == 0
    return bad


class Validator:
    """Stateful over one stream (its time anchor); ``counts`` says what was refused, why."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.counts: Counter[str] = Counter()
        self.anchor: Optional[int] = None
        self.last_ts = 0

    @property
    def invalid(self) -> int:
        return sum(self.counts.values())

    def refuse(self, reason: str) -> None:
        """Count an event a decoder refused before it became a row (its marker is made
        there, e.g. a JSON value too large for its column)."""
        self.counts[reason] += 1

    # ------------------------------------------------------------------ checks
    def _span(self) -> tuple[int, int]:
        if self.anchor is None:
            return 1, 2**63 - 1
        return max(1, self.anchor - MAX_SPAN_NS), self.anchor + MAX_SPAN_NS

    def _reasons(self, cols: dict) -> list[tuple[str, np.ndarray]]:
        """(reason, rows) for every check some row of this chunk fails."""
        kind = np.asarray(cols["kind"])
        n = len(kind)
        out: list[tuple[str, Optional[np.ndarray]]] = []
        ts = np.asarray(cols["ts"]).astype(np.int64, copy=False)
        if self.anchor is None and n:
            good = ts[ts > 0]
            if len(good):
                self.anchor = int(np.median(good))
        lo, hi = self._span()
        if n and (ts.min() < lo or ts.max() > hi):
            out.append(("timestamp outside the trace span", (ts < lo) | (ts > hi)))
        if "level" in cols:
            out.append((f"level outside 1-{MAX_LEVEL}", _outside(np.asarray(cols["level"]), 1, MAX_LEVEL + 1)))
        if "role" in cols:
            role = np.asarray(cols["role"]).astype(np.int64, copy=False)
            bad = _outside(role, 0, MAX_ROLE)
            # The model reads an SP's level from the role only where the level column is
            # missing (replay.on_sp_get): check the role's level bits on those rows.
            cand = _ROLE_KINDS[kind]
            if "level" in cols:
                cand &= np.asarray(cols["level"]) < 1
            sp = np.flatnonzero(cand) if cand.any() else cand[:0]
            if len(sp):
                r = role[sp]
                lvl = r & 0xF
                wrong = (r != -1) & ((lvl < 1) | (lvl > MAX_LEVEL))
                if wrong.any():
                    bad = np.zeros(n, dtype=bool) if bad is None else bad
                    bad[sp[wrong]] = True
            out.append(("role word not a kvm_mmu_page_role (level bits or width)", bad))
        for name in ("gfn", "parent_gfn"):
            if name in cols:
                out.append((f"{name} beyond a 52-bit physical address (or a wrapped uint64)",
                            _outside(np.asarray(cols[name]), 0, MAX_GFN)))
        if "parent_role" in cols:
            out.append(("parent_role not a 32-bit role", _outside(np.asarray(cols["parent_role"]), 0, MAX_ROLE)))
        if "vcpu" in cols:
            out.append((f"vCPU id outside 0-{MAX_VCPU_ID - 1}", _outside(np.asarray(cols["vcpu"]), 0, MAX_VCPU_ID)))
        for name in ("tid", "tgid"):
            if name in cols:
                out.append((f"{name} beyond PID_MAX_LIMIT", _outside(np.asarray(cols[name]), 0, MAX_PID + 1)))
        if "cpu" in cols:
            out.append(("host CPU beyond NR_CPUS", _outside(np.asarray(cols["cpu"]), 0, MAX_CPU)))
        for name in ("created", "unsync", "need_flush"):
            if name in cols:
                out.append((f"{name} not 0 or 1", _outside(np.asarray(cols[name]), 0, 2)))
        for name in ("root_count", "unsync_children"):
            if name in cols:
                out.append((f"{name} negative", _outside(np.asarray(cols[name]), 0, 1 << 31)))
        return [(why, rows) for why, rows in out if rows is not None]

    def check_cols(self, cols: dict) -> dict:
        """Column arrays with each invalid row replaced by an INVALID marker (a new dict
        when anything was refused; the same arrays otherwise)."""
        kind = np.asarray(cols["kind"])
        if not len(kind):
            return cols
        reasons = self._reasons(cols)
        ts = np.asarray(cols["ts"]).astype(np.int64, copy=False)
        if not reasons:                   # the common case: reductions only, nothing copied
            if len(ts):
                self.last_ts = max(self.last_ts, int(ts.max()))
            return cols
        passthrough = (kind == Kind.LOST) | (kind == Kind.INVALID)
        bad = np.zeros(len(kind), dtype=bool)
        # A marker made by a decoder may carry the time of what it replaced: fix it too.
        ts_bad = dict(reasons).get("timestamp outside the trace span")
        misplaced = (kind == Kind.INVALID) & ts_bad if ts_bad is not None else np.zeros(len(kind), dtype=bool)
        for reason, mask in reasons:
            mask = mask & ~bad & ~passthrough
            k = int(np.count_nonzero(mask))
            if k:
                self.counts[reason] += k
                bad |= mask
        if misplaced.any():
            cols = self._mark(cols, misplaced, ts)
            ts = np.asarray(cols["ts"])
        if not bad.any():
            if len(ts):
                self.last_ts = max(self.last_ts, int(ts.max()))
            return cols
        return self._mark(cols, bad, ts)

    def _mark(self, cols: dict, bad: np.ndarray, ts: np.ndarray) -> dict:
        out = {name: np.array(arr, copy=True) for name, arr in cols.items()}
        # The marker sits where the event was: at its own time when that is believable,
        # else at the time of the last good event before it.
        lo, hi = self._span()
        ts_ok = (ts >= lo) & (ts <= hi)
        good_ts = np.where(ts_ok & ~bad, ts, 0)
        carried = np.maximum(np.maximum.accumulate(good_ts), self.last_ts)
        out["ts"][bad] = np.where(ts_ok[bad], ts[bad], carried[bad])
        for name, arr in out.items():
            if name in ("ts", "kind"):
                continue
            col = COLUMN_BY_NAME.get(name)
            if col is None or col.dtype == "str":
                continue
            if name in ("tgid",):
                a = arr.astype(np.int64, copy=False)
                keep = (a >= 0) & (a <= MAX_PID)
                arr[bad & ~keep] = -1
            elif name == "value":
                arr[bad] = 1
            else:
                arr[bad] = col.missing
        out["kind"][bad] = int(Kind.INVALID)
        if len(ts):
            self.last_ts = max(self.last_ts, int(out["ts"].max()))
        return out

    def check_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = {name: df[name].to_numpy() for name in df.columns}
        checked = self.check_cols(cols)
        if checked is cols:
            return df
        import pandas as pd
        return pd.DataFrame(checked, columns=list(df.columns))

    # ------------------------------------------------------------------ reporting
    def note(self) -> str:
        """One line for the trace's notes (empty when nothing was refused)."""
        if not self.counts:
            return ""
        parts = ", ".join(f"{n} {why}" for why, n in self.counts.most_common())
        return (f"{NOTE_PREFIX}: {self.invalid} ({parts}); each is treated as a lost event "
                "of its VM")

    def annotate(self, meta: TraceMeta) -> None:
        line = self.note()
        if line and line not in meta.notes:
            meta.notes.append(line)
