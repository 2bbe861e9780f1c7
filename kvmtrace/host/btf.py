"""The kernel's BPF Type Format (BTF): struct member offsets and sizes of the running kernel.

Reads ``/sys/kernel/btf/vmlinux`` and, where KVM is a module, the split BTF
``/sys/kernel/btf/kvm`` (its type ids continue after vmlinux's, its string offsets after
vmlinux's string section).  The encoding is the kernel's (include/uapi/linux/btf.h,
Documentation/bpf/btf.rst): a ``struct btf_header`` (magic 0xeB9F), then ``struct btf_type``
records ``{u32 name_off; u32 info; u32 size_or_type}`` each followed by kind-specific data,
then a NUL-separated string section.  Only what offsets need is decoded (structs, unions,
arrays, typedefs and qualifiers, ints, pointers); every other kind is skipped by its size.

Pure Python, reads files only; no kernel version is ever consulted: a field that is not in
the BTF is reported as absent, and whoever needs it says why it cannot work.

Imports: the standard library and numpy (layer 2, host facts).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

BTF_MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")     # magic, version, flags, hdr_len, type_off/len, str_off/len
TYPE = struct.Struct("<III")            # name_off, info, size | type

# include/uapi/linux/btf.h BTF_KIND_*
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
# Kinds whose third word is a type id that only qualifies or renames another type.
_ALIASES = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
_MAX_DEPTH = 32                          # bound on alias chains and member nesting


class BtfError(ValueError):
    """A BTF blob that cannot be parsed (named by its source)."""


def _extra_size(kind: int, vlen: int) -> int:
    """Bytes of kind-specific data after a struct btf_type (Documentation/bpf/btf.rst §2.2)."""
    if kind in (INT, VAR, DECL_TAG):
        return 4
    if kind == ARRAY:
        return 12                        # struct btf_array {type, index_type, nelems}
    if kind in (STRUCT, UNION, DATASEC, ENUM64):
        return 12 * vlen                 # btf_member / btf_var_secinfo / btf_enum64
    if kind in (ENUM, FUNC_PROTO):
        return 8 * vlen                  # btf_enum / btf_param
    if kind in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
        return 0
    raise BtfError(f"unknown BTF kind {kind}")


@dataclass(frozen=True)
class BtfType:
    id: int
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kflag: bool
    extra: bytes                          # the kind-specific data


@dataclass(frozen=True)
class Member:
    """One resolved member: where it is in the outermost struct and what it holds."""

    path: str
    offset: int           # bytes from the start of the outermost struct
    size: int             # bytes (of the whole storage unit for a bitfield)
    bit_offset: int = 0   # bit offset inside the byte at ``offset`` (bitfields)
    bit_size: int = 0     # 0 unless a bitfield
    type_name: str = ""   # resolved type, e.g. "u64", "struct kvm_mmu *", "[4] struct ..."
    nelems: int = 0       # arrays: element count (size is then the whole array)
    elem_size: int = 0    # arrays: one element's size
    signed: bool = False  # a signed integer (or enum) type


@dataclass(frozen=True)
class Param:
    """One parameter of a function prototype, resolved through typedefs."""

    type_name: str        # as written, e.g. "struct kvm_vcpu *", "u32", "bool"
    size: int             # bytes
    kind: int             # the resolved BTF kind (INT, PTR, ENUM ...)
    signed: bool          # a signed integer
    target: str = ""      # pointers: the pointed-to type's name ("struct kvm_vcpu", "u64")
    target_size: int = 0  # pointers: the pointed-to type's size


# Kinds find() can look up by name.
_NAMED = frozenset({STRUCT, UNION, TYPEDEF, INT, ENUM, ENUM64, FWD})


class Btf:
    """The types of one BTF blob (plus its base, for split BTF).

    Parsing is lazy: one vectorized walk over the type section finds where each type starts
    (_walk; vmlinux has ~130 000 types, decoding them all took 0.5 s per command); a type
    is decoded when asked for, and names are indexed on the first find() (_NameIndex)."""

    def __init__(self, data: bytes, source: str = "<btf>", base: "Btf | None" = None):
        self.source = source
        self.base = base
        self._data = data
        self._offsets: Sequence[int] = ()      # where type id first_id + i starts (bytes)
        self._first_id = 1 if base is None else base._next_id
        self._strings = b""
        self._index: _NameIndex | None = None   # built on the first find()
        self._decoded: dict[int, BtfType] = {}
        self._members: dict[int, list[tuple[str, int, int, int]]] = {}
        self._found: dict[tuple[int, str], int | None] = {}
        self._parse(data)

    @classmethod
    def load(cls, path: str | Path, base: "Btf | None" = None) -> "Btf":
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise BtfError(f"{p}: cannot read: {exc.strerror or exc}") from None
        return cls(data, str(p), base)

    @property
    def _next_id(self) -> int:
        return self._first_id + len(self._offsets)

    # ------------------------------------------------------------------ parsing

    def _parse(self, data: bytes) -> None:
        if len(data) < HEADER.size:
            raise BtfError(f"{self.source}: {len(data)} bytes is too short for a BTF header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise BtfError(f"{self.source}: bad magic {magic:#x} (not little-endian BTF)")
        if version != 1:
            raise BtfError(f"{self.source}: BTF version {version} (this reader knows 1)")
        if hdr_len < HEADER.size or hdr_len > len(data):
            raise BtfError(f"{self.source}: header length {hdr_len} out of range")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data):
            raise BtfError(f"{self.source}: type or string section runs past the end of the data")
        self._strings = data[s0:s0 + str_len]
        self._type_end = t0 + type_len
        self._words, starts = _walk(self.source, data, t0, type_len, self._first_id)
        self._starts = starts                                 # word index of each type
        self._offsets = memoryview(starts * 4 + t0)           # byte offset of each type
    def _decode(self, tid: int) -> BtfType:
        t = self._decoded.get(tid)
        if t is None:
            pos = self._offsets[tid - self._first_id]
            name_off, info, st = TYPE.unpack_from(self._data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
            n = _extra_size(kind, vlen)
            t = BtfType(tid, kind, self._str(name_off), st, vlen, kflag,
                        self._data[pos + TYPE.size:pos + TYPE.size + n])
            self._decoded[tid] = t
        return t

    def _str(self, off: int) -> str:
        if self.base is not None:
            base_len = len(self.base._strings)
            if off < base_len:
                return self.base._str(off)
            off -= base_len
        if off >= len(self._strings):
            raise BtfError(f"{self.source}: string offset {off} out of range")
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else len(self._strings)].decode(errors="replace")

    # ------------------------------------------------------------------ lookups

    def type(self, tid: int) -> BtfType | None:
        """The type with that id (0 = void gives None)."""
        if tid < self._first_id:
            return self.base.type(tid) if self.base is not None else None
        i = tid - self._first_id
        return self._decode(tid) if i < len(self._offsets) else None

    def find(self, name: str, kind: int = STRUCT) -> BtfType | None:
        """The first type of that kind and name, in this blob or its base; of structs and
        unions, the first definition with members wins over an empty one of that name."""
        key = (kind, name)
        if key not in self._found:
            if self._index is None:
                self._index = _NameIndex(self)
            chosen = None
            for tid in self._index.ids(name):
                t = self._decode(tid)
                if t.kind != kind or t.name != name:
                    continue
                if chosen is None:
                    chosen = t
                if kind not in (STRUCT, UNION) or t.vlen:
                    chosen = t
                    break
            self._found[key] = chosen.id if chosen is not None else None
        tid = self._found[key]
        if tid is not None:
            return self.type(tid)
        return self.base.find(name, kind) if self.base is not None else None

    def _all_strings(self) -> bytes:
        """The string sections as one buffer, base first: name offsets index into it."""
        return self._strings if self.base is None else self.base._all_strings() + self._strings

    def resolve(self, tid: int) -> BtfType | None:
        """Follow typedefs and qualifiers to the underlying type."""
        t = self.type(tid)
        for _ in range(_MAX_DEPTH):
            if t is None or t.kind not in _ALIASES:
                return t
            t = self.type(t.size_or_type)
        raise BtfError(f"{self.source}: alias chain longer than {_MAX_DEPTH} at type {tid}")

    def size_of(self, tid: int) -> int:
        t = self.resolve(tid)
        if t is None:
            return 0
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return t.size_or_type
        if t.kind == PTR:
            return 8                      # x86-64
        if t.kind == ARRAY:
            elem, _idx, nelems = struct.unpack("<III", t.extra)
            return nelems * self.size_of(elem)
        return 0

    def type_name(self, tid: int) -> str:
        t = self.type(tid)
        for _ in range(_MAX_DEPTH):
            if t is None:
                return "void"
            if t.kind in (STRUCT, UNION):
                return f"{'struct' if t.kind == STRUCT else 'union'} {t.name or '(anon)'}"
            if t.kind == PTR:
                return self.type_name(t.size_or_type) + " *"
            if t.kind == ARRAY:
                elem, _idx, nelems = struct.unpack("<III", t.extra)
                return f"[{nelems}] {self.type_name(elem)}"
            if t.kind in _ALIASES and not t.name:
                t = self.type(t.size_or_type)
                continue
            return t.name or f"kind{t.kind}"
        return "?"

    def members(self, t: BtfType) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct or union's members."""
        if t.kind not in (STRUCT, UNION):
            return []
        out = self._members.get(t.id)
        if out is None:                     # kvm_vcpu_arch has ~200: decode them once
            out = self._members[t.id] = []
            for name_off, mtype, off in struct.iter_unpack("<III", t.extra):
                # kind_flag: offset = bitfield_size << 24 | bit_offset (btf.rst, STRUCT)
                bits, bitsize = (off & 0xFFFFFF, off >> 24) if t.kflag else (off, 0)
                out.append((self._str(name_off), mtype, bits, bitsize))
        return list(out)

    def member(self, struct_name: str, path: str, kind: int = STRUCT) -> Member | None:
        """Member ``path`` ("arch.mmu", "root.hpa") of ``struct struct_name``; None when
        the struct or any step is absent.  Anonymous struct/union members are searched
        through, as C does; a step through a pointer is not followed (that is a load)."""
        top = self.find(struct_name, kind)
        if top is None:
            return None
        t, bits, tid = top, 0, top.id
        for step in path.split("."):
            found = self._find_member(t, step, 0)
            if found is None:
                return None
            tid, off, bitsize = found
            bits += off
            t = self.resolve(tid)
            if t is None:
                return None
        size = self.size_of(tid)
        nelems = elem_size = 0
        if t.kind == ARRAY:
            elem, _idx, nelems = struct.unpack("<III", t.extra)
            elem_size = self.size_of(elem)
        return Member(path, bits // 8, size, bits % 8, bitsize, self.type_name(tid), nelems, elem_size,
                      self.is_signed(tid))

    def is_signed(self, tid: int) -> bool:
        """A signed integer: BTF_INT_SIGNED in an INT's encoding (btf.rst §2.2.1)."""
        t = self.resolve(tid)
        if t is None or t.kind != INT or len(t.extra) < 4:
            return False
        encoding = (struct.unpack("<I", t.extra)[0] >> 24) & 0xF
        return bool(encoding & 1)

    def trace_params(self, event: str) -> list[Param] | None:
        """The arguments a raw tracepoint program sees for tracepoint ``event``, from the
        ``btf_trace_<event>`` typedef the kernel declares for every tracepoint
        (include/trace/bpf_probe.h): a pointer to ``void (*)(void *__data, TP_PROTO...)``;
        the leading ``__data`` is dropped.  None when BTF has no such typedef."""
        td = self.find(f"btf_trace_{event}", TYPEDEF)
        ptr = self.resolve(td.size_or_type) if td is not None else None
        proto = self.type(ptr.size_or_type) if ptr is not None and ptr.kind == PTR else None
        if proto is None or proto.kind != FUNC_PROTO or proto.vlen < 1:
            return None
        out = []
        for i in range(1, proto.vlen):
            _name_off, ptype = struct.unpack_from("<II", proto.extra, 8 * i)
            t = self.resolve(ptype)
            if t is None:
                return None                      # a variadic "..." or void: not a tracepoint
            target, target_size = "", 0
            if t.kind == PTR:
                target, target_size = self.type_name(t.size_or_type), self.size_of(t.size_or_type)
            out.append(Param(self.type_name(ptype), self.size_of(ptype), t.kind,
                             self.is_signed(ptype), target, target_size))
        return out

    def _find_member(self, t: BtfType, name: str, depth: int) -> tuple[int, int, int] | None:
        if depth > _MAX_DEPTH:
            return None
        for mname, mtype, bits, bitsize in self.members(t):
            if mname == name:
                return mtype, bits, bitsize
            if not mname:
                inner = self.resolve(mtype)
                if inner is not None and inner.kind in (STRUCT, UNION):
                    found = self._find_member(inner, name, depth + 1)
                    if found is not None:
                        return found[0], bits + found[1], found[2]
        return None

    def struct_size(self, name: str) -> int | None:
        t = self.find(name)
        return t.size_or_type if t is not None else None


# --------------------------------------------------------------------------- the type walk
#
# vmlinux has ~130 000 types of variable length (12 bytes plus kind-specific data): finding
# where each starts is a walk, and a Python loop decoding every record took 0.18 s per
# command.  Instead numpy computes, for every 4-byte word of the type section, where the
# next record would start if a record started there (all records are multiples of 4
# bytes), and that map squared three times (8 records ahead); Python walks 8 records per
# step (16 000 steps), numpy fills in the 7 between, and every record on the walk is
# checked afterwards, vectorized: a known kind, inside the section.  ~25 ms in all.

def _kind_tables():
    """Extra words after a record header, fixed and per vlen entry, indexed by the header's
    top byte (kind in bits 0-4, kflag in bit 7); fixed -1: an unknown kind."""
    import numpy as np
    fixed = np.full(256, -1, dtype=np.int32)
    per_vlen = np.zeros(256, dtype=np.int32)
    for top in range(256):
        try:
            n0, n1 = _extra_size(top & 0x1F, 0), _extra_size(top & 0x1F, 1)
        except BtfError:
            continue
        fixed[top], per_vlen[top] = n0 // 4, (n1 - n0) // 4
    return fixed, per_vlen


_JUMP = 8          # records per step of the Python walk (3 squarings of the successor map)


def _walk(source: str, data: bytes, t0: int, type_len: int, first_id: int):
    """(the type section as little-endian u32 words, the word index where each type
    starts); raises BtfError naming the first bad record."""
    import numpy as np
    n = type_len // 4
    words = np.zeros(n + 3, dtype="<u4")      # 3 spare words: a record header read past the end
    words[:n] = np.frombuffer(data, dtype="<u4", count=n, offset=t0) if t0 % 4 == 0 and n else \
        np.frombuffer(data[t0:t0 + 4 * n], dtype="<u4")
    top = words.view(np.uint8)[7::4][:n]      # byte 3 of the info word (kind, kflag)
    vlen = words.view("<u2")[2::2][:n]        # bits 0-15 of the info word
    fixed, per_vlen = _kind_tables()
    # nxt[p]: where the next record starts if one starts at word p; n: the section's end;
    # n + 1: past it, or an unknown kind (both absorbing, reported below).
    nxt = np.empty(n + 2, dtype=np.int32)
    body, extra = nxt[:n], fixed[top]
    np.multiply(per_vlen[top], vlen, out=body)
    body += extra
    body += np.arange(3, n + 3, dtype=np.int32)
    np.minimum(body, n + 1, out=body)
    body[extra < 0] = n + 1
    nxt[n], nxt[n + 1] = n, n + 1
    jump = nxt
    for _ in range(_JUMP.bit_length() - 1):
        jump = jump[jump]                     # _JUMP records at a time
    step = memoryview(jump)
    anchors: list[int] = []
    add, pos = anchors.append, 0
    while pos < n:
        add(pos)
        pos = step[pos]
    rows = [np.asarray(anchors, dtype=np.int32)]
    for _ in range(_JUMP - 1):
        rows.append(nxt[rows[-1]])
    chain = np.stack(rows, axis=1).ravel()
    ends = np.flatnonzero(chain >= n)
    at = chain[:ends[0]] if len(ends) else chain
    end = int(chain[ends[0]]) if len(ends) else pos
    if type_len % 4 or (len(at) and int(at[-1]) + 3 > n):
        raise BtfError(f"{source}: truncated type record at byte {4 * (int(at[-1]) if len(at) else n)}")
    bad = np.flatnonzero(extra[at] < 0)
    if len(bad):
        i = int(bad[0])
        raise BtfError(f"{source}: type {first_id + i}: unknown BTF kind {int(top[at[i]]) & 0x1F}")
    if end != n:
        raise BtfError(f"{source}: type {first_id + len(at) - 1} runs past the type section")
    return words, at.astype(np.int64)


class _NameIndex:
    """The types of the kinds find() looks up (_NAMED), by the first 16 bytes of their name
    (NUL included, zero after it): a lookup compares two u64 per type instead of searching
    the 2-3 MB string section for every name.  (8 bytes were too few: "btf_trac" starts
    the ~2 000 btf_trace_* typedefs.)"""

    WIDTH = 16

    def __init__(self, btf: Btf):
        import numpy as np
        words, starts = btf._words, btf._starts
        kinds = (words[starts + 1] >> 24) & 0x1F
        name_offs = words[starts].astype(np.int64)
        keep = np.isin(kinds, list(_NAMED)) & (name_offs != 0)
        self._ids = np.flatnonzero(keep) + btf._first_id
        self._strings = btf._all_strings()
        strings = np.frombuffer(self._strings + bytes(self.WIDTH), dtype=np.uint8)
        offs = self._offs = np.minimum(name_offs[keep], len(strings) - self.WIDTH)
        head = strings[offs[:, None] + np.arange(self.WIDTH)]
        nul = head == 0
        head[np.cumsum(nul, axis=1) > nul] = 0          # bytes after the first NUL
        self._keys = np.ascontiguousarray(head).view("<u8")     # (types, 2)

    @classmethod
    def key(cls, name: str) -> tuple[int, int]:
        b = (name.encode() + b"\0")[:cls.WIDTH]
        b += bytes(cls.WIDTH - len(b))
        return int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little")

    def ids(self, name: str) -> list[int]:
        """Type ids (ascending) named ``name`` (names sharing 16 bytes, e.g. the
        btf_trace_kvm_mmu_* typedefs, are told apart here, before decoding any)."""
        import numpy as np
        k0, k1 = self.key(name)
        at = np.flatnonzero((self._keys[:, 0] == k0) & (self._keys[:, 1] == k1))
        want, strings = name.encode() + b"\0", self._strings
        return [int(tid) for tid, off in zip(self._ids[at].tolist(), self._offs[at].tolist())
                if strings[off:off + len(want)] == want]


def load_kernel(root: Path | str = Path("/"), module: str = "kvm") -> tuple[Btf | None, str]:
    """vmlinux BTF plus ``module``'s split BTF when KVM is a module; (None, why) when absent."""
    d = Path(root) / "sys/kernel/btf"
    vmlinux = d / "vmlinux"
    if not vmlinux.exists():
        return None, f"no {vmlinux} (kernel built without CONFIG_DEBUG_INFO_BTF)"
    try:
        btf = Btf.load(vmlinux)
        detail = f"{vmlinux}"
        split = d / module
        if split.exists():
            btf = Btf.load(split, base=btf)
            detail += f" + {split} (split BTF)"
    except BtfError as exc:
        return None, str(exc)
    return btf, detail
