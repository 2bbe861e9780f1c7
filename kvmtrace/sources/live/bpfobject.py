"""A compiled probe program kvmtrace loads itself: map definitions plus instructions.

BCC compiles the program's C at run time (clang, about a second here) and creates the
maps while compiling, so the bytecode it emits names each map by the fd it got: a
``BPF_LD_IMM64`` with ``src_reg = BPF_PSEUDO_MAP_FD`` (1) and ``imm = fd``
(include/uapi/linux/bpf.h).  ``extract()`` turns that into a relocatable object: the maps'
definitions as the kernel reports them (BPF_OBJ_GET_INFO_BY_FD) and, per program, the
instructions with those immediates cleared plus the list of (instruction, map) to patch.
``load()`` creates the maps again, patches the fds in, and loads the programs with
bpf(2); nothing of BCC is needed then, so a cached object (progcache.py) skips the compile.

Only what BCC emits for kvmtrace's tracepoint and raw-tracepoint programs is accepted:
map references, helper calls, plain instructions.  A BPF-to-BPF call, a kfunc call or any
other pseudo source register makes extract() refuse, and the caller keeps BCC's own load.

May import: kvmtrace.sources.live.bpfsys (and the standard library).
"""
from __future__ import annotations

import base64
import errno
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from kvmtrace.sources.live import bpfsys

FORMAT = 1
INSN = 8                    # sizeof(struct bpf_insn)
LD_IMM64 = 0x18             # BPF_LD | BPF_DW | BPF_IMM: two instruction slots
CALL = 0x85                 # BPF_JMP | BPF_CALL
PSEUDO_MAP_FD = 1
PSEUDO_MAP_VALUE = 2


class ObjectError(ValueError):
    """The compiled program cannot be made a loadable object (or a cached one is damaged)."""


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


@dataclass(frozen=True)
class ProgSpec:
    name: str
    prog_type: int
    insns: bytes                           # map immediates zeroed
    relocs: tuple[tuple[int, int], ...]    # (instruction index, index into maps)


@dataclass(frozen=True)
class ProgramObject:
    maps: tuple[MapSpec, ...]
    progs: tuple[ProgSpec, ...]
    license: str = "GPL"
    kern_version: int = 0

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "license": self.license, "kern_version": self.kern_version,
               "maps": [asdict(m) for m in self.maps],
               "progs": [{"name": p.name, "prog_type": p.prog_type,
                          "insns": base64.b64encode(p.insns).decode(),
                          "relocs": [list(r) for r in p.relocs]} for p in self.progs]}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ProgramObject":
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ObjectError(f"object format {doc.get('format')!r}, not {FORMAT}")
            maps = tuple(MapSpec(**{k: (str(v) if k == "name" else int(v)) for k, v in m.items()})
                         for m in doc["maps"])
            progs = tuple(ProgSpec(str(p["name"]), int(p["prog_type"]),
                                   base64.b64decode(p["insns"], validate=True),
                                   tuple((int(i), int(m)) for i, m in p["relocs"]))
                          for p in doc["progs"])
            obj = cls(maps, progs, str(doc["license"]), int(doc["kern_version"]))
        except ObjectError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectError(f"damaged object: {type(exc).__name__}: {exc}") from None
        obj.validate()
        return obj

    def validate(self) -> None:
        """Names unique, sizes in range, every relocation at a map-load instruction and an
        existing map: a damaged object is refused here, never half loaded."""
        for what, names in (("map", [m.name for m in self.maps]), ("program", [p.name for p in self.progs])):
            if len(set(names)) != len(names):
                raise ObjectError(f"a {what} name appears twice")
        for m in self.maps:
            if not all(0 <= v < 1 << 32 for v in (m.type, m.key_size, m.value_size, m.max_entries, m.flags)):
                raise ObjectError(f"map {m.name}: a size or type out of range")
        if not (0 <= self.kern_version < 1 << 32 and all(0 <= p.prog_type < 1 << 32 for p in self.progs)):
            raise ObjectError("a program type or kernel version out of range")
        for p in self.progs:
            if len(p.insns) % INSN or not p.insns:
                raise ObjectError(f"{p.name}: {len(p.insns)} bytes is not whole instructions")
            for i, m in p.relocs:
                if not (0 <= i < len(p.insns) // INSN - 1 and 0 <= m < len(self.maps)):
                    raise ObjectError(f"{p.name}: relocation ({i}, {m}) out of range")
                if p.insns[i * INSN] != LD_IMM64:
                    raise ObjectError(f"{p.name}: relocation {i} is not a 64-bit load")

    def prog(self, name: str) -> ProgSpec:
        for p in self.progs:
            if p.name == name:
                return p
        raise KeyError(name)


def relocatable(name: str, insns: bytes, fd_to_map: dict[int, int]) -> tuple[bytes, tuple]:
    """``insns`` with each map fd immediate zeroed, and the (index, map) list to patch."""
    if len(insns) % INSN:
        raise ObjectError(f"{name}: {len(insns)} bytes is not whole instructions")
    code = bytearray(insns)
    relocs = []
    n = len(code) // INSN
    i = 0
    while i < n:
        op, regs = code[i * INSN], code[i * INSN + 1]
        src = regs >> 4
        if op == LD_IMM64:
            if src in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                fd = struct.unpack_from("<i", code, i * INSN + 4)[0]
                if fd not in fd_to_map:
                    raise ObjectError(f"{name}: instruction {i} names fd {fd}, not a map of the program")
                relocs.append((i, fd_to_map[fd]))
                struct.pack_into("<i", code, i * INSN + 4, 0)
            elif src:
                raise ObjectError(f"{name}: instruction {i}: 64-bit load of kind {src}")
            i += 2
            continue
        if op == CALL and src:
            raise ObjectError(f"{name}: instruction {i}: a BPF-to-BPF or kernel-function call")
        i += 1
    return bytes(code), tuple(relocs)


def bcc_tables(bpf, lib) -> list[tuple[str, int]]:
    """(name, fd) of every map BCC created for the module of ``bpf`` (libbcc's table API;
    the Python wrapper of Debian's BCC 0.26 does not declare these three functions)."""
    import ctypes
    lib.bpf_num_tables.restype = ctypes.c_ulonglong
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    return [(lib.bpf_table_name(bpf.module, t).decode(), int(lib.bpf_table_fd_id(bpf.module, t)))
            for t in range(int(lib.bpf_num_tables(bpf.module)))]


def extract(bpf, lib, prog_types: dict[str, int]) -> ProgramObject:
    """The object of BCC's compiled module ``bpf`` (a bcc.BPF, not yet loaded), for the
    functions in ``prog_types`` (name -> BPF_PROG_TYPE_*).  ``lib`` is bcc's libbcc."""
    module = bpf.module
    maps: list[MapSpec] = []
    fd_to_map: dict[int, int] = {}
    for name, fd in bcc_tables(bpf, lib):
        info = bpfsys.map_info(fd)
        fd_to_map[fd] = len(maps)
        maps.append(MapSpec(name, int(info["type"]), int(info["key_size"]),
                            int(info["value_size"]), int(info["max_entries"]), int(info["flags"])))
    progs = []
    for name, prog_type in prog_types.items():
        insns = bpf.dump_func(name.encode())
        code, relocs = relocatable(name, insns, fd_to_map)
        progs.append(ProgSpec(name, prog_type, code, relocs))
    license = (lib.bpf_module_license(module) or b"GPL").decode()
    obj = ProgramObject(tuple(maps), tuple(progs), license, int(lib.bpf_module_kern_version(module)))
    obj.validate()
    return obj


@dataclass
class LoadedProgram:
    """The object's maps created and its programs loaded; attach, read maps, close."""
    obj: ProgramObject
    map_fds: dict[str, int] = field(default_factory=dict)
    prog_fds: dict[str, int] = field(default_factory=dict)
    links: list[int] = field(default_factory=list)          # raw tracepoints: close = detach
    perf_fds: list[int] = field(default_factory=list)       # perf events: close = detach

    def load_prog(self, name: str) -> int:
        """Load program ``name`` (once) with the map fds patched in; its fd.  Raises
        bpfsys.BpfError with the verifier log when the kernel refuses it."""
        if name not in self.prog_fds:
            p = self.obj.prog(name)
            code = bytearray(p.insns)
            for i, m in p.relocs:            # src_reg still says BPF_PSEUDO_MAP_FD/VALUE
                struct.pack_into("<i", code, i * INSN + 4, self.map_fds[self.obj.maps[m].name])
            self.prog_fds[name] = _memlock_retry(lambda: bpfsys.prog_load(
                p.prog_type, bytes(code), self.obj.license, p.name, self.obj.kern_version))
        return self.prog_fds[name]

    def load_progs(self, names: list[str]) -> dict[str, bpfsys.BpfError]:
        """load_prog() of every name, a few at a time: the verifier's work (most of a load,
        about 5 ms per exact-mode program here) runs on every CPU at once, since the
        syscall releases the GIL.  The programs the kernel refused, with why."""
        def one(name: str) -> tuple[str, bpfsys.BpfError | None]:
            try:
                self.load_prog(name)
                return name, None
            except bpfsys.BpfError as exc:
                return name, exc
        with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1, 8))) as pool:
            refused = {n: e for n, e in pool.map(one, names) if e is not None}
        # ENOMEM may be the parallel verifiers' memory at once: those get one more try alone.
        for name in [n for n, e in refused.items() if e.errno == errno.ENOMEM]:
            if one(name)[1] is None:
                del refused[name]
        return refused

    def attach_raw(self, event: str, fn: str) -> None:
        self.links.append(bpfsys.raw_tracepoint_open(event, self.prog_fds[fn]))

    def attach_perf(self, tracepoint_id: int, fn: str, label: str) -> None:
        self.perf_fds.append(bpfsys.tracepoint_attach(tracepoint_id, self.prog_fds[fn], label))

    def close(self) -> None:
        """Detach and free everything.  Closing a tracepoint's perf event waits for an RCU
        grace period in the kernel (perf_event_release_kernel: 72-88 ms each here); os.close
        releases the GIL, so a thread each lets those waits overlap."""
        for fd in self.links:
            _close(fd)
        perf, self.perf_fds, self.links = self.perf_fds, [], []
        if len(perf) > 1:
            with ThreadPoolExecutor(max_workers=min(32, len(perf))) as pool:
                list(pool.map(_close, perf))
        elif perf:
            _close(perf[0])
        for fd in list(self.prog_fds.values()) + list(self.map_fds.values()):
            _close(fd)
        # Cleared in place: a MapView holding this dict must not keep closed fd numbers,
        # which the next map created in the process would reuse.
        self.prog_fds.clear()
        self.map_fds.clear()


def _memlock_retry(call):
    """call(); on EPERM once more with RLIMIT_MEMLOCK lifted (maps and programs were charged
    to it before Linux 5.11; BCC does the same, so only the cached path needed this)."""
    try:
        return call()
    except bpfsys.BpfError as exc:
        if exc.errno != errno.EPERM or not bpfsys.raise_memlock():
            raise
    return call()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def load(obj: ProgramObject) -> LoadedProgram:
    """Create the object's maps; its programs load as they are attached (load_prog), so a
    program the verifier refuses costs only that probe.  Raises bpfsys.BpfError; nothing
    stays open then."""
    loaded = LoadedProgram(obj)
    try:
        for m in obj.maps:
            loaded.map_fds[m.name] = _memlock_retry(lambda: bpfsys.map_create(
                m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.name))
    except BaseException:
        loaded.close()
        raise
    return loaded
