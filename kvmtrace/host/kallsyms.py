"""/proc/kallsyms: which kernel functions have a symbol (and so could take a probe).

A ``static`` function the compiler inlined into every caller has no symbol, and kprobes or
fentry cannot attach to it; that is how ``kvm_vcpu_flush_tlb_guest`` (arch/x86/kvm/x86.c)
disappears on Debian 6.1 and most 6.x builds.  GCC clones (``name.isra.0``,
``name.constprop.0``, ``name.part.0``) and split cold parts (``name.cold``) are listed
separately: a clone is attachable, but only the calls that use it go through it.
"""
from __future__ import annotations

import mmap
import os
import re
import time
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
# 120 000 lines into objects took 0.5-1 s per command here, one regex pass collecting every
# name 0.07 s (plus 0.02 s to sort out the dotted ones); a command asks about a dozen
# names.  So names are collected per family (the names sharing their 2nd-4th characters:
# "vm_" for kvm_*, pvm_* and svm_* alike): the regex engine's literal search finds those
# three characters right after " T x" (_name_starts, ~3 ms for the whole file) and each
# is kept if it starts a name on a text symbol line (what _NAME_RE checks on every line).
# The full set is built only when asked for (names).
_NAME_RE = re.compile(r"^[0-9a-fA-F]{1,16} [tTwW] ([^\s\[\]]+)", re.MULTILINE)
_MODULE_RE = re.compile(r"^[0-9a-fA-F]{1,16} [tTwW] [^\s\[\]]+[ \t]+\[([^\]\s]+)\]", re.MULTILINE)
_ADDRESS_RE = re.compile(r"[0-9a-fA-F]{1,16}")
_TOKEN_RE = re.compile(r"[^\s\[\]]+")
_SPACE_OR_BRACKET = re.compile(r"[\s\[\]]")
_TEXT_MARKS = frozenset(f" {t} " for t in TEXT_TYPES)


def _name_starts(text: str, key: str):
    """Where a name with ``key`` at its 2nd character starts right after " T " (t, w, W):
    the regex engine finds the literal key (~4 000 "vm_" in /proc/kallsyms) and checks the
    6 characters before it itself; a str.find and a slice per occurrence took ~15 ms."""
    if any(key[j:] == key[:len(key) - j] for j in range(1, len(key))):
        # A key that can overlap itself ("aaa"): a regex match would hide the next one.
        i = text.find(key)
        while i >= 0:
            if i >= 4 and text[i - 4:i - 1] in _TEXT_MARKS and not _SPACE_OR_BRACKET.match(text, i - 1):
                yield i - 1
            i = text.find(key, i + 1)
        return
    k = re.escape(key)
    for m in re.finditer(rf"{k}(?<=[ ][tTwW][ ][^\s\[\]]{k})", text):
        yield m.start() - 1


class Kallsyms:
    """Text symbols by name (addresses may read as 0 without CAP_SYSLOG; names stay)."""

    def __init__(self, text: str = "") -> None:
        self._text = text
        self._names: frozenset[str] | None = None
        self._families: dict[str, frozenset[str]] = {}    # name[1:4] -> names
        self._modules: set[str] | None = None

    @property
    def names(self) -> frozenset[str]:
        """Every text symbol's name (one pass over the whole file: prefer has())."""
        if self._names is None:
            self._names = frozenset(_NAME_RE.findall(self._text))
        return self._names

    def _family(self, name: str) -> frozenset[str]:
        """Text symbol names with name's 2nd-4th characters (a superset of those that
        start like name); the full set for names shorter than 4 characters."""
        key = name[1:4]
        if len(key) < 3 or self._names is not None or _TOKEN_RE.fullmatch(key) is None:
            return self.names
        found = self._families.get(key)
        if found is None:
            found = self._families[key] = frozenset(self._scan(key))
        return found

    def _scan(self, key: str):
        """Every name that has ``key`` at its 2nd character, on a text symbol line."""
        text = self._text
        for s in _name_starts(text, key):
            line = text.rfind("\n", 0, s) + 1
            if _ADDRESS_RE.fullmatch(text, line, s - 3):
                yield _TOKEN_RE.match(text, s).group()

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
        text = _take_prefetched(root)
        if text is not None:
            return cls.parse(text)
        try:
            return cls.parse((root / "proc/kallsyms").read_text())
        except OSError:
            return None

    def has(self, name: str) -> bool:
        return name in self._family(name)

    def lookup(self, name: str) -> list[Symbol]:
        """Every text symbol of that name (modules may repeat a static name)."""
        if not self.has(name):
            return []
        line = re.compile(rf"^([0-9a-fA-F]{{1,16}}) ([tTwW]) {re.escape(name)}"
                          rf"(?:[ \t]+\[([^\]\s]+)\])?[ \t]*$", re.MULTILINE)
        return [Symbol(name, int(a, 16), k, m) for a, k, m in line.findall(self._text)]

    def clones_of(self, name: str) -> list[str]:
        """Compiler clones of name (name.isra.0 ...), excluding split .cold parts; sorted."""
        prefix = name + "."
        return sorted(c for c in self._family(name) if c.startswith(prefix) and ".cold" not in c
                      and (m := _CLONE_RE.match(c)) is not None and m.group("base") == name)

    def __len__(self) -> int:
        return len(self.names)


# ----------------------------------------------------------------------------- prefetch
#
# The kernel formats /proc/kallsyms one seq_file page per read(2) (fs/seq_file.c
# seq_read_iter; kernel/kallsyms.c s_show): 1 300 reads and ~35 ms of CPU here, which the
# probe plan waited for.  prefetch() has a child process (cat) copy it into a memfd while
# this one is still importing (pandas, the pipeline): on another core, and without the
# GIL (a thread would need the GIL back after each of those reads).  load() then takes the
# copy -- unless /proc/modules changed meanwhile (opening /dev/kvm can autoload kvm): a
# module's symbols come and go with it, so the file is read again -- or if it is older
# than MAX_AGE (a command that failed before planning, in a long-lived process).

@dataclass
class _Prefetch:
    pid: int
    fd: int                 # the memfd the child writes
    modules: bytes | None   # /proc/modules when it started
    started: float          # time.monotonic()


_pending: dict[str, _Prefetch] = {}
MAX_AGE = 30.0              # seconds: an older copy (a command that never used it) is dropped


def _modules(root: Path) -> bytes | None:
    try:
        return (root / "proc/modules").read_bytes()
    except OSError:
        return None


def prefetch(root: Path | str = Path("/")) -> bool:
    """Start copying root/proc/kallsyms into memory in the background (see above); False
    when that cannot start here (load() then reads the file itself)."""
    root = Path(root)
    path = str(root / "proc/kallsyms")
    if path in _pending:
        return True
    if not hasattr(os, "memfd_create") or not hasattr(os, "posix_spawnp"):
        return False
    try:
        fd = os.memfd_create("kvmtrace-kallsyms", os.MFD_CLOEXEC)
    except OSError:
        return False
    try:
        pid = os.posix_spawnp("cat", ["cat", "--", path], os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    except OSError:
        os.close(fd)
        return False
    _pending[path] = _Prefetch(pid, fd, _modules(root), time.monotonic())
    return True


def _take_prefetched(root: Path) -> str | None:
    """The prefetched text of root/proc/kallsyms, None when there is none to trust."""
    job = _pending.pop(str(root / "proc/kallsyms"), None)
    if job is None:
        return None
    try:
        _pid, status = os.waitpid(job.pid, 0)
        if (os.waitstatus_to_exitcode(status) != 0 or _modules(root) != job.modules
                or time.monotonic() - job.started > MAX_AGE):
            return None
        size = os.fstat(job.fd).st_size
        if not size:
            return ""
        with mmap.mmap(job.fd, size, prot=mmap.PROT_READ) as data:    # decoded in place
            return str(data, "utf-8", "replace")
    except OSError:                     # ChildProcessError: someone reaped it
        return None
    finally:
        os.close(job.fd)
