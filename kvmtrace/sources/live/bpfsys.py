"""The bpf(2) and perf_event_open(2) calls kvmtrace's own loader makes, through ctypes.

Only what loading a compiled program needs: create a map, load a program, open a raw
tracepoint, attach a program to a tracepoint's perf event, read and write map elements,
and ask the kernel what a map fd is.  ``union bpf_attr`` and ``struct perf_event_attr``
are built as zeroed byte buffers with the fields set at their UAPI offsets
(include/uapi/linux/bpf.h, include/uapi/linux/perf_event.h); both are extensible: a
kernel accepts a shorter attr and treats the rest as zero.  x86-64 system call numbers
(arch/x86/entry/syscalls/syscall_64.tbl): kvmtrace traces x86 KVM hosts only.

Imports nothing from kvmtrace.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from functools import lru_cache

SYS_BPF = 321
SYS_PERF_EVENT_OPEN = 298

# enum bpf_cmd
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM = 0, 1, 2
PROG_LOAD = 5
OBJ_GET_INFO_BY_FD = 15
RAW_TRACEPOINT_OPEN = 17

# enum bpf_prog_type
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_RAW_TRACEPOINT = 17

# enum bpf_map_type: those whose values are per CPU (lookups return one value per CPU).
PERCPU_MAP_TYPES = {5, 6, 10}     # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH

OBJ_NAME_LEN = 16                 # BPF_OBJ_NAME_LEN
ATTR_SIZE = 128                   # bytes of union bpf_attr we pass (the fields below fit)
LOG_SIZE = 1 << 20                # verifier log on a failed load

PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_ATTR_SIZE = 112              # PERF_ATTR_SIZE_VER5
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400    # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408   # _IOW('$', 8, __u32)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


class BpfError(OSError):
    """A bpf(2) or perf_event_open(2) call failed; ``log`` holds the verifier's words."""

    def __init__(self, what: str, err: int, log: str = ""):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what
        self.log = log

    def __str__(self) -> str:
        return self.strerror or ""


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    ret = _syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), attr, ctypes.c_long(len(attr)))
    if ret < 0:
        raise BpfError(what, ctypes.get_errno())
    return int(ret)


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array:
    """A zeroed bpf_attr with (offset, struct format, value) fields set."""
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    for off, fmt, value in fields:
        struct.pack_into("<" + fmt, buf, off, value)
    return buf


def _addr(obj) -> int:
    return ctypes.addressof(obj) if obj is not None else 0


def _name(name: str) -> bytes:
    return name.encode()[: OBJ_NAME_LEN - 1]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, name: str = "") -> int:
    """BPF_MAP_CREATE; the new map's fd."""
    buf = _attr((0, "I", map_type), (4, "I", key_size), (8, "I", value_size),
                (12, "I", max_entries), (16, "I", flags))
    buf[28:28 + len(_name(name))] = _name(name)          # map_name
    return _bpf(MAP_CREATE, buf, f"creating map {name}")


def prog_load(prog_type: int, insns: bytes, license: str, name: str = "",
              kern_version: int = 0) -> int:
    """BPF_PROG_LOAD; the program's fd.  On failure the verifier log is in the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def attempt(log: ctypes.Array | None) -> int:
        buf = _attr((0, "I", prog_type), (4, "I", len(insns) // 8), (8, "Q", _addr(code)),
                    (16, "Q", _addr(lic)), (24, "I", 1 if log is not None else 0),
                    (28, "I", len(log) if log is not None else 0), (32, "Q", _addr(log)),
                    (40, "I", kern_version))
        buf[48:48 + len(_name(name))] = _name(name)      # prog_name
        return _bpf(PROG_LOAD, buf, f"loading program {name}")
    try:
        return attempt(None)
    except BpfError as first:
        if first.errno in (errno.EPERM, errno.ENOMEM):
            raise
        log = ctypes.create_string_buffer(LOG_SIZE)
        try:
            return attempt(log)                 # a transient failure: loaded after all
        except BpfError as exc:
            # The first errno is the kernel's verdict: before Linux 6.4 a full log turns
            # the retry's refusal into ENOSPC, keeping the log's beginning, not its end.
            text = log.value.decode(errors="replace")
            if exc.errno == errno.ENOSPC and first.errno != errno.ENOSPC:
                text += "\n(verifier log truncated)"
            raise BpfError(first.what, first.errno, text) from None


def raw_tracepoint_open(event: str, prog_fd: int) -> int:
    """BPF_RAW_TRACEPOINT_OPEN: attach a raw-tracepoint program; closing the fd detaches."""
    tp = ctypes.create_string_buffer(event.encode())
    buf = _attr((0, "Q", _addr(tp)), (8, "I", prog_fd))
    return _bpf(RAW_TRACEPOINT_OPEN, buf, f"opening raw tracepoint {event}")


def tracepoint_attach(tracepoint_id: int, prog_fd: int, name: str) -> int:
    """A perf event on tracepoint ``tracepoint_id`` (tracefs events/<sys>/<event>/id) running
    ``prog_fd``.  One event (cpu 0, every task) is enough: the tracepoint's perf handler
    runs the attached programs on whichever CPU fires it (perf_trace_run_bpf_submit ->
    trace_call_bpf, kernel/trace/bpf_trace.c).  Closing the fd detaches."""
    attr = ctypes.create_string_buffer(PERF_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE, tracepoint_id,
                     1, PERF_SAMPLE_RAW)                  # type, size, config, period, sample_type
    struct.pack_into("<I", attr, 48, 1)                   # wakeup_events
    fd = _syscall(ctypes.c_long(SYS_PERF_EVENT_OPEN), attr, ctypes.c_long(-1), ctypes.c_long(0),
                  ctypes.c_long(-1), ctypes.c_long(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        raise BpfError(f"perf_event_open for tracepoint {name}", ctypes.get_errno())
    for req, arg, what in ((PERF_EVENT_IOC_SET_BPF, prog_fd, "attaching the program to"),
                           (PERF_EVENT_IOC_ENABLE, 0, "enabling")):
        if _ioctl(int(fd), req, arg) < 0:
            err = ctypes.get_errno()
            os.close(int(fd))
            raise BpfError(f"{what} tracepoint {name}", err)
    return int(fd)


def map_info(fd: int) -> dict[str, int | str]:
    """BPF_OBJ_GET_INFO_BY_FD of a map: type, key/value size, max entries, flags, name."""
    info = ctypes.create_string_buffer(80)               # struct bpf_map_info, its first fields
    buf = _attr((0, "I", fd), (4, "I", len(info)), (8, "Q", _addr(info)))
    _bpf(OBJ_GET_INFO_BY_FD, buf, "reading map info")
    map_type, _id, key_size, value_size, max_entries, flags = struct.unpack_from("<6I", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return {"type": map_type, "key_size": key_size, "value_size": value_size,
            "max_entries": max_entries, "flags": flags, "name": name}


@lru_cache(maxsize=1)
def raise_memlock() -> bool:
    """Lift RLIMIT_MEMLOCK (True if it was lifted).  Before Linux 5.11 maps and programs
    are charged to it (bpf_map_charge_memlock), and a distribution's 64 KiB default refuses
    the 32 MiB ring buffer with EPERM; libbcc does the same on its EPERM."""
    import resource
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        return False
    return True


def possible_cpus() -> int:
    """How many values a per-CPU map holds: one per possible CPU (kernel/bpf/arraymap.c
    copies num_possible_cpus() values; /sys/devices/system/cpu/possible lists them)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM: the value bytes, or None when the key is absent."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    buf = _attr((0, "I", fd), (8, "Q", _addr(k)), (16, "Q", _addr(v)))
    try:
        _bpf(MAP_LOOKUP_ELEM, buf, "map lookup")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def update(fd: int, key: bytes, value: bytes) -> None:
    """BPF_MAP_UPDATE_ELEM with BPF_ANY."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    buf = _attr((0, "I", fd), (8, "Q", _addr(k)), (16, "Q", _addr(v)))
    _bpf(MAP_UPDATE_ELEM, buf, "map update")
