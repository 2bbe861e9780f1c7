"""The bulk ring-buffer consumer and the record -> schema conversion, on a simulated ring.

The simulated ring has the kernel's layout (kernel/bpf/ringbuf.c): consumer and producer
positions, a data area visible twice back to back, 8-byte headers with BUSY/DISCARD bits.
"""
from __future__ import annotations

import numpy as np
import pytest

from kvmtrace.sources.live import records
from kvmtrace.sources.live.records import SLOT_DTYPE, lost_frame, to_frame
from kvmtrace.sources.live.ringbuf import BUSY_BIT, DISCARD_BIT, RingbufError, RingbufReader
from kvmtrace.sources.frame import conform
from kvmtrace.schema import Kind

SIZE = 2048        # a power of 2, as the kernel's; 25.6 slots of 80 bytes
SLOT = SLOT_DTYPE.itemsize


class FakeRing:
    """A producer writing slots the way bpf_ringbuf_reserve/commit do."""

    def __init__(self, size: int = SIZE):
        self.size = size
        self.cons = np.zeros(1, dtype=np.uint64)
        self.prod = np.zeros(1, dtype=np.uint64)
        self.mem = np.zeros(size, dtype=np.uint8)
        self.view = np.zeros(2 * size, dtype=np.uint8)   # what the reader sees (double map)
        self.reader = RingbufReader(self.cons, self.prod, self.view, size, SLOT_DTYPE)

    def _sync(self) -> None:
        self.view[: self.size] = self.mem
        self.view[self.size:] = self.mem

    def reserve(self, ts: int, flags: int = BUSY_BIT, length: int = SLOT_DTYPE.itemsize - 8) -> int:
        pos = int(self.prod[0])
        slot = np.zeros(1, dtype=SLOT_DTYPE)
        slot["hdr_len"] = length | flags
        slot["ts"] = ts
        slot["tid"] = 100 + ts % 3
        slot["kind"] = int(Kind.SP_SYNC)
        slot["flags"] = 1
        slot["role"] = 0x3701
        raw = slot.view(np.uint8)
        for i, b in enumerate(raw):
            self.mem[(pos + i) % self.size] = b
        self.prod[0] = pos + SLOT_DTYPE.itemsize
        self._sync()
        return pos

    def commit(self, pos: int, discard: bool = False) -> None:
        hdr = np.frombuffer(bytes(self.mem[(pos + i) % self.size] for i in range(4)), dtype="<u4")[0]
        hdr = (int(hdr) & ~BUSY_BIT) | (DISCARD_BIT if discard else 0)
        for i, b in enumerate(int(hdr).to_bytes(4, "little")):
            self.mem[(pos + i) % self.size] = b
        self._sync()

    def push(self, ts: int) -> None:
        self.commit(self.reserve(ts))


def test_drains_committed_records_and_advances_consumer():
    ring = FakeRing()
    for ts in (10, 11, 12):
        ring.push(ts)
    out = ring.reader.drain()
    assert list(out["ts"]) == [10, 11, 12]
    assert int(ring.cons[0]) == 3 * SLOT
    assert len(ring.reader.drain()) == 0


def test_stops_at_busy_record_and_resumes_after_commit():
    ring = FakeRing()
    ring.push(1)
    busy = ring.reserve(2)
    ring.push(3)                       # committed, but after a busy one
    assert list(ring.reader.drain()["ts"]) == [1]
    assert int(ring.cons[0]) == SLOT
    ring.commit(busy)
    assert list(ring.reader.drain()["ts"]) == [2, 3]


def test_skips_discarded_records():
    ring = FakeRing()
    ring.push(1)
    ring.commit(ring.reserve(2), discard=True)
    ring.push(3)
    assert list(ring.reader.drain()["ts"]) == [1, 3]
    assert ring.reader.discarded == 1
    assert int(ring.cons[0]) == 3 * SLOT


def test_wraps_around_the_end_of_the_data_area():
    ring = FakeRing()
    for ts in range(20):
        ring.push(ts)
    assert len(ring.reader.drain()) == 20
    for ts in range(100, 110):       # bytes 1600..2400: a slot straddles the end
        ring.push(ts)
    assert list(ring.reader.drain()["ts"]) == list(range(100, 110))
    assert int(ring.cons[0]) == 30 * SLOT


def test_max_records_limits_one_drain():
    ring = FakeRing()
    for ts in range(5):
        ring.push(ts)
    assert list(ring.reader.drain(max_records=2)["ts"]) == [0, 1]
    assert list(ring.reader.drain()["ts"]) == [2, 3, 4]


def test_foreign_record_length_is_an_error():
    ring = FakeRing()
    ring.commit(ring.reserve(1, length=24))
    with pytest.raises(RingbufError):
        ring.reader.drain()


def test_bad_geometry_rejected():
    with pytest.raises(RingbufError):
        RingbufReader(np.zeros(1, np.uint64), np.zeros(1, np.uint64), np.zeros(200, np.uint8), 100, SLOT_DTYPE)


def test_slots_become_schema_rows():
    slots = np.zeros(3, dtype=SLOT_DTYPE)
    slots["ts"] = [5, 6, 7]
    slots["tid"] = [7, 8, 7]
    slots["tgid"] = 3
    slots["kind"] = [int(Kind.SP_UNSYNC), int(Kind.FLUSH_REQUEST_PV), int(Kind.SPTE_INSTALL)]
    slots["flags"] = [1, 0, 0]
    slots["role"] = [0x3701, 0, 0]
    slots["vcpu"] = [-1, 1, -1]
    slots["need_flush"] = [-1, 1, -1]
    slots["gfn"] = [4, -1, 0x51]
    slots["value"] = [0, 0, -2]         # an spte with bit 63 set reads back as negative
    df = to_frame(slots, {7: "CPU 1/KVM", 8: "CPU 0/KVM"})
    conform(df)                         # exact schema dtypes
    assert list(df["role"]) == [0x3701, -1, -1]     # role only where the record carries it
    assert list(df["comm"]) == ["CPU 1/KVM", "CPU 0/KVM", "CPU 1/KVM"]
    assert list(df["vcpu"]) == [-1, 1, -1] and list(df["need_flush"]) == [-1, 1, -1]
    assert df["value"].iloc[2] == -2 and df["gfn"].iloc[2] == 0x51


def test_lost_rows_per_cpu():
    df = lost_frame(99, {0: 0, 3: 12, 1: 5})
    conform(df)
    assert list(df["cpu"]) == [1, 3] and list(df["value"]) == [5, 12]
    assert set(df["kind"]) == {int(Kind.LOST)} and set(df["ts"]) == {99}


def _slots(ts, tids, start_gfn=0):
    slots = np.zeros(len(ts), dtype=SLOT_DTYPE)
    slots["ts"] = ts
    slots["tid"] = tids
    slots["tgid"] = 3
    slots["kind"] = int(Kind.SPTE_INSTALL)
    slots["gfn"] = np.arange(start_gfn, start_gfn + len(ts))
    slots["flags"] = 1
    slots["role"] = 0x3701
    return slots


def test_pieces_read_in_turn_and_cross_block_boundaries(monkeypatch):
    # The recorder hands over the ring's pieces without joining them; an extraction block
    # smaller than a piece makes every piece cross block boundaries.
    monkeypatch.setattr(records, "BLOCK_SLOTS", 3)
    a = _slots([1, 2, 3, 4, 5], [7, 7, 8, 7, 8])
    b = _slots([6, 7], [9, 7], start_gfn=100)
    names = {7: "CPU 0/KVM", 8: "CPU 1/KVM", 9: "worker"}
    df = records.to_columns([a, b], names).frame()
    assert list(df["ts"]) == [1, 2, 3, 4, 5, 6, 7]
    assert list(df["gfn"]) == [0, 1, 2, 3, 4, 100, 101]
    assert list(df["comm"]) == ["CPU 0/KVM", "CPU 0/KVM", "CPU 1/KVM", "CPU 0/KVM",
                                "CPU 1/KVM", "worker", "CPU 0/KVM"]


def test_an_order_indexes_the_joined_pieces():
    a = _slots([5, 1], [7, 7])
    b = _slots([3], [8], start_gfn=50)
    df = records.to_columns([a, b], {7: "x", 8: "y"}, np.array([1, 2, 0])).frame()
    assert list(df["ts"]) == [1, 3, 5] and list(df["gfn"]) == [1, 50, 0]
    assert list(df["comm"]) == ["x", "y", "x"]


def test_joined_chunks_keep_each_rows_thread_name():
    one = records.to_columns(_slots([1, 2], [7, 8]), {7: "a", 8: "b"})
    two = records.to_columns(_slots([3, 4, 5], [9, 8, 10]), {9: "c", 8: "b"})   # 10: unnamed
    joined = records.Columns.concat([one, two])
    assert list(joined.frame()["comm"]) == ["a", "b", "c", "b", ""]
    assert list(joined.arrays["ts"]) == [1, 2, 3, 4, 5]


def test_the_arrow_batch_is_the_frame_the_schema_describes():
    from kvmtrace.sources.native import ARROW_SCHEMA
    chunk = records.Columns.concat([records.to_columns(_slots([1, 2], [7, 8]), {7: "a"}),
                                    records.Columns.of_frame(lost_frame(3, {1: 4}))])
    batch = chunk.batch(ARROW_SCHEMA)
    assert batch.schema.equals(ARROW_SCHEMA)
    got = batch.to_pandas()
    want = conform(chunk.frame())
    assert got.equals(want)
    assert list(got["comm"]) == ["a", "", ""] and list(got["kind"])[-1] == int(Kind.LOST)


def _pending_recorder(*pieces):
    from kvmtrace.sources.live.recorder import Recorder
    rec = Recorder.__new__(Recorder)           # only the pending-slot logic is exercised
    rec._pending = [p.view(np.uint8) for p in pieces]
    return rec


def test_ready_pieces_are_cut_at_the_watermark_without_joining():
    rec = _pending_recorder(_slots([1, 2, 3], [7] * 3), _slots([4, 5, 6], [7] * 3, 10))
    ready, order = rec._take_ready(watermark=4)
    assert order is None and [list(p["ts"]) for p in ready] == [[1, 2, 3], [4]]
    assert [list(p.view(SLOT_DTYPE)["ts"]) for p in rec._pending] == [[5, 6]]
    ready, order = rec._take_ready(watermark=None)
    assert [list(p["ts"]) for p in ready] == [[5, 6]] and rec._pending == []


def test_out_of_order_pieces_come_back_with_the_order_that_sorts_them():
    rec = _pending_recorder(_slots([1, 5], [7, 7]), _slots([3, 6], [7, 7], 10))
    ready, order = rec._take_ready(watermark=5)
    assert len(ready) == 1 and list(ready[0]["ts"][order]) == [1, 3, 5]
    assert [list(p.view(SLOT_DTYPE)["ts"]) for p in rec._pending] == [[6]]


def test_nothing_ready_when_every_pending_slot_is_inside_the_hold_back():
    # Two CPUs committed out of ts order, both newer than the watermark: nothing is ready
    # and both stay pending (this crashed _flush with an IndexError on an empty order).
    rec = _pending_recorder(_slots([50, 40], [7, 8]))
    ready, order = rec._take_ready(watermark=10)
    assert ready == [] and order is None
    assert sorted(p.view(SLOT_DTYPE)["ts"].tolist() for p in rec._pending) == [[50, 40]]
    ready, order = rec._take_ready(watermark=None)
    assert list(ready[0]["ts"][order]) == [40, 50]


def test_wake_ends_a_wait_at_once_and_rearms():
    """Session.close sets stop, then wake(): the drain loop must not sit out its epoll
    timeout (no record comes once the guest is done)."""
    import os
    import threading
    import time
    size = 4096
    quiet_r, quiet_w = os.pipe()                      # a map fd that never becomes readable
    reader = RingbufReader(np.zeros(1, np.uint64), np.zeros(1, np.uint64),
                           np.zeros(2 * size, np.uint8), size, SLOT_DTYPE, fd=quiet_r)
    try:
        assert reader.wait(0.01) is False             # nothing: the timeout passes
        woke: list[float] = []
        t = threading.Thread(target=lambda: woke.append((reader.wait(30.0), time.monotonic())[1]))
        start = time.monotonic()
        t.start()
        time.sleep(0.05)
        reader.wake()
        t.join(10)
        assert woke and woke[0] - start < 5.0         # not the 30 s timeout
        assert reader.wait(0.01) is False             # re-armed: the next wait waits again
    finally:
        reader.close()
        os.close(quiet_r)
        os.close(quiet_w)
