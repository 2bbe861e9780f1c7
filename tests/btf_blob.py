"""Build small BTF blobs by hand (include/uapi/linux/btf.h encoding) for the reader's tests."""
from __future__ import annotations

import struct


class BlobBuilder:
    def __init__(self, base_strings: int = 0, first_id: int = 1):
        self.strings = bytearray(b"\0") if not base_strings else bytearray()
        self.base_strings = base_strings
        self.types: list[bytes] = []
        self.first_id = first_id

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = self.base_strings + len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, name: str, kind: int, vlen: int, st: int, extra: bytes = b"", kflag: bool = False) -> int:
        info = (kind << 24) | vlen | (1 << 31 if kflag else 0)
        self.types.append(struct.pack("<III", self.s(name), info, st) + extra)
        return self.first_id + len(self.types) - 1

    def int_(self, name: str, size: int) -> int:
        return self._add(name, 1, 0, size, struct.pack("<I", size * 8))

    def ptr(self, target: int) -> int:
        return self._add("", 2, 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self._add("", 3, 0, 0, struct.pack("<III", elem, index, n))

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, 8, 0, target)

    def const(self, target: int) -> int:
        return self._add("", 10, 0, target)

    def func_proto(self, ret: int, params: list[int]) -> int:
        return self._add("", 13, len(params), ret, b"".join(struct.pack("<II", 0, p) for p in params))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False,
               bitfields: dict[str, int] | None = None) -> int:
        bitfields = bitfields or {}
        kflag = bool(bitfields)
        extra = b""
        for mname, mtype, bit_off in members:
            off = (bitfields.get(mname, 0) << 24 | bit_off) if kflag else bit_off
            extra += struct.pack("<III", self.s(mname), mtype, off)
        return self._add(name, 5 if union else 4, len(members), size, extra, kflag)

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return hdr + types + bytes(self.strings)
