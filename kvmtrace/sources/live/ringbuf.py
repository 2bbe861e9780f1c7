"""Bulk consumer of a BPF ring buffer map (BPF_MAP_TYPE_RINGBUF) holding fixed-size records.

Memory layout (kernel/bpf/ringbuf.c, ``ringbuf_map_mmap_kern``; the same as libbpf's
src/ringbuf.c maps it):
- page 0, mapped read-write: ``consumer_pos`` (u64 at offset 0), advanced by user space;
- from offset ``page_size``, mapped read-only: one page holding ``producer_pos`` (u64 at
  offset 0), then the data area of ``size`` bytes, mapped twice back to back so that a
  record wrapping the end reads contiguously.
Positions grow without wrapping; a record sits at ``pos & (size - 1)``.  Every record
starts with an 8-byte header ``{u32 len; u32 pg_off}``: ``len`` carries
``BPF_RINGBUF_BUSY_BIT`` (31) while the producer still writes it and
``BPF_RINGBUF_DISCARD_BIT`` (30) when it was discarded; the record takes
``round_up(len + 8, 8)`` bytes.  Records are committed out of order across CPUs, so the
consumer stops at the first busy one.

Here every record has the same length, so the bytes between consumer and producer are a
numpy array of fixed-stride slots: one header scan and one copy per drain, no per-record
Python.  The kernel wakes an epoll waiter on the map fd when it commits a record the
consumer has caught up with (``bpf_ringbuf_commit``, adaptive notification).
"""
from __future__ import annotations

import mmap
import os
import select

import numpy as np

_EMPTY = np.empty(0, dtype=np.uint8)
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8


class RingbufError(RuntimeError):
    pass


class RingbufReader:
    """Drain fixed-size records from a ring buffer into numpy arrays.

    ``open()`` maps a real map fd; the constructor takes the three views directly (the
    consumer and producer positions as 1-element uint64 arrays, the doubly mapped data
    area as bytes), which is how tests drive it without a kernel.
    """

    def __init__(self, cons: np.ndarray, prod: np.ndarray, data: np.ndarray, size: int,
                 slot_dtype: np.dtype, fd: int | None = None, maps: tuple = ()):
        if size & (size - 1) or size <= 0:
            raise RingbufError(f"ring buffer size {size} is not a power of 2")
        self.size = size
        self.mask = size - 1
        self.dtype = np.dtype(slot_dtype)
        self.stride = self.dtype.itemsize
        if self.stride % 8 or self.stride <= HEADER_SIZE:
            raise RingbufError(f"slot size {self.stride} is not a multiple of 8")
        if len(data) < 2 * size:
            raise RingbufError("the data area must be mapped twice")
        self.record_len = self.stride - HEADER_SIZE
        self._cons, self._prod, self._data = cons, prod, data
        self._maps = maps
        self._epoll: select.epoll | None = None
        self._wake_fd: int | None = None       # an eventfd: wake() ends a wait() at once
        if fd is not None:
            self._epoll = select.epoll()
            self._epoll.register(fd, select.EPOLLIN)
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll.register(self._wake_fd, select.EPOLLIN)
        self.discarded = 0

    @classmethod
    def open(cls, map_fd: int, size: int, slot_dtype: np.dtype) -> "RingbufReader":
        page = mmap.PAGESIZE
        cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        data_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        # Aligned 8-byte views: a numpy element store/load is a single mov on x86-64.
        cons = np.frombuffer(cons_map, dtype=np.uint64, count=1)
        prod = np.frombuffer(data_map, dtype=np.uint64, count=1)
        data = np.frombuffer(data_map, dtype=np.uint8, offset=page)
        return cls(cons, prod, data, size, slot_dtype, fd=map_fd, maps=(cons_map, data_map))

    def pending_bytes(self) -> int:
        return int(self._prod[0]) - int(self._cons[0])

    def wait(self, timeout: float) -> bool:
        """Block until the kernel signals new data, wake() is called or timeout seconds
        pass; True unless the timeout passed."""
        if self.pending_bytes() > 0:
            return True
        if self._epoll is None:
            return False
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            return False
        if any(fd == self._wake_fd for fd, _ in events):
            try:
                os.eventfd_read(self._wake_fd)            # re-arm
            except BlockingIOError:
                pass
        return bool(events)

    def wake(self) -> None:
        """End a wait() in another thread now (a stop was asked for).  Once the guest is
        done no record arrives to wake the epoll, and the drain loop waited out its
        timeout (50 ms) before it saw the stop."""
        if self._wake_fd is not None:
            os.eventfd_write(self._wake_fd, 1)

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Copy out every committed record from the consumer position on; advance it."""
        return self.drain_raw(max_records).view(self.dtype)

    def drain_raw(self, max_records: int | None = None) -> np.ndarray:
        """drain() as raw bytes (a multiple of the slot size): no per-call dtype work."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        avail = (prod - cons) // self.stride
        if avail <= 0:
            return _EMPTY
        if (prod - cons) % self.stride:
            # Only whole fixed-size slots are ever reserved by our program.
            raise RingbufError(f"ring buffer holds {prod - cons} bytes, not whole {self.stride}-byte slots")
        if max_records is not None:
            avail = min(avail, max_records)
        start = cons & self.mask
        raw = self._data[start:start + avail * self.stride]
        # Read the headers first: x86 keeps loads in order (TSO), so data copied after a
        # header was seen committed is at least as new as that commit.
        lens = raw.view(np.uint32)[:: self.stride // 4].copy()
        busy = np.flatnonzero(lens & BUSY_BIT)
        n = int(busy[0]) if len(busy) else avail
        if n == 0:
            return _EMPTY
        lens = lens[:n]
        flags = np.uint32(BUSY_BIT | DISCARD_BIT)
        if np.any((lens & ~flags) != self.record_len):
            bad = lens[(lens & ~flags) != self.record_len][0]
            raise RingbufError(f"record of length {int(bad & ~flags)} in a ring buffer of "
                               f"{self.record_len}-byte records")
        out = raw[: n * self.stride].copy()
        self._cons[0] = cons + n * self.stride
        discard = (lens & DISCARD_BIT) != 0
        if discard.any():
            self.discarded += int(discard.sum())
            out = out.reshape(n, self.stride)[~discard].reshape(-1)
        return out

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._wake_fd is not None:
            fd, self._wake_fd = self._wake_fd, None
            os.close(fd)
        del self._cons, self._prod, self._data
        for m in self._maps:
            m.close()
        self._maps = ()


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")
