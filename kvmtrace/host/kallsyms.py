"""/proc/kallsyms: which kernel functions have a symbol (and so could take a probe).

A ``static`` function the compiler inlined into every caller has no symbol, and kprobes or
fentry cannot attach to it; that is how ``kvm_vcpu_flush_tlb_guest`` (arch/x86/kvm/x86.c)
disappears on Debian 6.1 and most 6.x builds.  GCC clones (``name.isra.0``,
``name.constprop.0``, ``name.part.0``) and split cold parts (``name.cold``) are listed
separately: a clone is attachable, but only the calls that use it go through it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_CLONE_RE = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\.(?P<suffix>(?:isra|constprop|part|cold|lto_priv)[.0-9a-z_]*)$")
TEXT_TYPES = frozenset("tTwW")


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    type: str       # nm-style type letter: T/t text, W/w weak
    module: str     # "" for vmlinux, else the [module] tag


# A text symbol line is "ffffffff81000000 T name" or "... t name\t[module]".  Splitting
# 120 000 lines into objects took 0.5-1 s per command here; one regex pass collecting the
# names takes ~0.06 s, and the few symbols a command asks about are looked up on demand.
_NAME_RE = re.compile(r"^[0-9a-fA-F]{1,16} [tTwW] ([^\s\[\]]+)", re.MULTILINE)
_MODULE_RE = re.compile(r"^[0-9a-fA-F]{1,16} [tTwW] [^\s\[\]]+[ \t]+\[([^\]\s]+)\]", re.MULTILINE)


class Kallsyms:
    """Text symbols by name (addresses may read as 0 without CAP_SYSLOG; names stay)."""

    def __init__(self, text: str = "") -> None:
        self._text = text
        self.names: frozenset[str] = frozenset(_NAME_RE.findall(text))
        self._modules: set[str] | None = None
        self._dotted: list[str] | None = None     # names with a clone suffix, maybe

    @classmethod
    def parse(cls, text: str) -> "Kallsyms":
        return cls(text)

    @property
    def modules(self) -> set[str]:
        """The [module] tags of text symbols."""
        if self._modules is None:
            # Module symbols follow vmlinux's: scan from the first "\t[" only.
            first = self._text.find("\t[")
            line = self._text.rfind("\n", 0, first) + 1 if first >= 0 else len(self._text)
            self._modules = set(_MODULE_RE.findall(self._text, line))
        return self._modules

    @classmethod
    def load(cls, root: Path = Path("/")) -> "Kallsyms | None":
        try:
            return cls.parse((root / "proc/kallsyms").read_text())
        except OSError:
            return None

    def has(self, name: str) -> bool:
        return name in self.names

    def lookup(self, name: str) -> list[Symbol]:
        """Every text symbol of that name (modules may repeat a static name)."""
        if name not in self.names:
            return []
        line = re.compile(rf"^([0-9a-fA-F]{{1,16}}) ([tTwW]) {re.escape(name)}"
                          rf"(?:[ \t]+\[([^\]\s]+)\])?[ \t]*$", re.MULTILINE)
        return [Symbol(name, int(a, 16), k, m) for a, k, m in line.findall(self._text)]

    def clones_of(self, name: str) -> list[str]:
        """Compiler clones of name (name.isra.0 ...), excluding split .cold parts; sorted."""
        if self._dotted is None:
            self._dotted = [c for c in self.names if "." in c]
        prefix = name + "."
        return sorted(c for c in self._dotted if c.startswith(prefix) and ".cold" not in c
                      and (m := _CLONE_RE.match(c)) is not None and m.group("base") == name)

    def __len__(self) -> int:
        return len(self.names)
