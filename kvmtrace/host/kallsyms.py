"""/proc/kallsyms: which kernel functions have a symbol (and so could take a probe).

A ``static`` function the compiler inlined into every caller has no symbol, and kprobes or
fentry cannot attach to it; that is how ``kvm_vcpu_flush_tlb_guest`` (arch/x86/kvm/x86.c)
disappears on Debian 6.1 and most 6.x builds.  GCC clones (``name.isra.0``,
``name.constprop.0``, ``name.part.0``) and split cold parts (``name.cold``) are listed
separately: a clone is attachable, but only the calls that use it go through it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_CLONE_RE = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\.(?P<suffix>(?:isra|constprop|part|cold|lto_priv)[.0-9a-z_]*)$")
TEXT_TYPES = frozenset("tTwW")


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    type: str       # nm-style type letter: T/t text, W/w weak
    module: str     # "" for vmlinux, else the [module] tag


@dataclass
class Kallsyms:
    """Text symbols by name (addresses may read as 0 without CAP_SYSLOG; names stay)."""

    by_name: dict[str, list[Symbol]] = field(default_factory=dict)
    clones: dict[str, list[str]] = field(default_factory=dict)   # base name -> clone names
    modules: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> "Kallsyms":
        out = cls()
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] not in TEXT_TYPES:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            module = parts[3].strip("[]") if len(parts) > 3 else ""
            if module:
                out.modules.add(module)
            sym = Symbol(parts[2], addr, parts[1], module)
            out.by_name.setdefault(sym.name, []).append(sym)
            m = _CLONE_RE.match(sym.name)
            if m:
                out.clones.setdefault(m.group("base"), []).append(sym.name)
        return out

    @classmethod
    def load(cls, root: Path = Path("/")) -> "Kallsyms | None":
        try:
            return cls.parse((root / "proc/kallsyms").read_text())
        except OSError:
            return None

    def has(self, name: str) -> bool:
        return name in self.by_name

    def lookup(self, name: str) -> list[Symbol]:
        return self.by_name.get(name, [])

    def clones_of(self, name: str) -> list[str]:
        """Compiler clones of name (name.isra.0 ...), excluding split .cold parts."""
        return [c for c in self.clones.get(name, []) if ".cold" not in c]

    def __len__(self) -> int:
        return len(self.by_name)
