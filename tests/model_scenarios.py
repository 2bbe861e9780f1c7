"""Small hand-written event streams for the replay model tests.

The standard story (as in the lab capture): vCPU1 (tid 11) loads root gfn 1 and builds the
path 1 -> 2 -> 3 -> 4; vCPU0 (tid 10) shares the root and makes the L1 SP (gfn 4) unsync;
then vCPU1 services a PV flush and runs again.
"""
from __future__ import annotations

from kvmtrace.sources.frame import from_rows
from kvmtrace.schema import Kind

TGID = 1
V0, V1, HELPER = 10, 11, 12
ROLE = 0x3700


def role(level: int) -> int:
    return ROLE | level


class Stream:
    def __init__(self, tgid: int = TGID) -> None:
        self.rows: list[dict] = []
        self.ts = 1000
        self.tgid = tgid

    def add(self, kind: Kind, tid: int, **kw) -> "Stream":
        self.ts += 10
        row = {"ts": self.ts, "kind": int(kind), "tgid": self.tgid, "tid": tid}
        row.update(kw)
        self.rows.append(row)
        return self

    # tracepoints
    def pv(self, tid: int, vcpu: int, need_flush: int = 0) -> "Stream":
        return self.add(Kind.FLUSH_REQUEST_PV, tid, vcpu=vcpu, need_flush=need_flush)

    def get(self, tid: int, gfn: int, level: int, created: int = 1, r: int | None = None) -> "Stream":
        return self.add(Kind.SP_GET, tid, gfn=gfn, role=role(level) if r is None else r,
                        level=level, created=created)

    def unsync(self, tid: int, gfn: int, level: int = 1) -> "Stream":
        return self.add(Kind.SP_UNSYNC, tid, gfn=gfn, role=role(level), level=level)

    def sync(self, tid: int, gfn: int, level: int = 1) -> "Stream":
        return self.add(Kind.SP_SYNC, tid, gfn=gfn, role=role(level), level=level, unsync=1)

    def zap(self, tid: int, gfn: int, level: int = 1) -> "Stream":
        return self.add(Kind.SP_ZAP, tid, gfn=gfn, role=role(level), level=level)

    def run(self, tid: int, kind: Kind = Kind.SPTE_INSTALL, **kw) -> "Stream":
        return self.add(kind, tid, **kw)

    def walk(self, tid: int, tables: list[int], leaf: int) -> "Stream":
        """A guest walk: the L4 entry points at tables[0], ..., the L1 entry at leaf."""
        self.add(Kind.WALK_START, tid, value=0x1000)
        for level, nxt in zip((4, 3, 2, 1), list(tables) + [leaf]):
            self.add(Kind.WALK_ELEMENT, tid, level=level, value=(nxt << 12) | 0x27)
        return self

    def lost(self, n: int = 5) -> "Stream":
        self.ts += 10
        self.rows.append({"ts": self.ts, "kind": int(Kind.LOST), "value": n})
        return self

    def fn(self, kind: Kind, tid: int, **kw) -> "Stream":
        return self.add(kind, tid, **kw)

    def frame(self):
        return from_rows(self.rows)


def built(s: Stream | None = None) -> Stream:
    """vCPU1 builds root 1 -> 2 -> 3 -> 4; vCPU0 joins the root."""
    s = s or Stream()
    s.pv(V1, 1).get(V1, 1, 4).run(V1)
    s.get(V1, 2, 3).get(V1, 3, 2).get(V1, 4, 1).run(V1)
    s.pv(V0, 0).get(V0, 1, 4, created=0).run(V0)
    return s


def unsynced(s: Stream | None = None) -> Stream:
    s = built(s)
    s.unsync(V0, 4).run(V0)
    return s


def flush_with_sync() -> Stream:
    s = unsynced()
    s.pv(V1, 1, need_flush=1).sync(V1, 4).run(V1)
    return s


def flush_without_sync() -> Stream:
    s = unsynced()
    s.pv(V1, 1, need_flush=1).run(V1)
    return s


def run(stream: Stream, meta=None, **kw):
    """Replay a stream: (the windows closed while feeding it, the final result)."""
    from kvmtrace.analysis import Replayer
    r = Replayer(meta, **kw)
    closed = r.feed(stream.frame())
    return closed, r.finish()


def one(stream: Stream, meta=None, **kw):
    """The one window a stream closes, and the result."""
    closed, res = run(stream, meta, **kw)
    assert len(closed) == 1, [(w.opener, w.verdict) for w in closed]
    return closed[0], res
