"""tracefs: where it is mounted, which tracepoints exist, and their record layouts.

Every tracepoint has ``events/<system>/<event>/format`` (kernel/trace/trace_events.c,
``f_show``): one ``field:<c declaration>; offset:N; size:N; signed:N;`` line per field of
the raw record the kernel hands a BPF tracepoint program.  The first four fields
(``common_type`` .. ``common_pid``, 8 bytes) are the ``struct trace_entry`` header; BPF
tracepoint programs may not read them (kernel/trace/bpf_trace.c,
``tp_prog_is_valid_access`` rejects offsets below 8).  Layouts change between kernel
versions, so every offset kvmtrace uses is read from these files at run time.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# Where tracefs is mounted, most likely first (debugfs' tracing dir is the pre-4.1 path).
CANDIDATE_MOUNTS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")

_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>[01]);")
_DECL_RE = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<array>\[[^\]]*\])?$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FormatError(ValueError):
    """A tracepoint format file that does not parse."""


@dataclass(frozen=True)
class TraceField:
    """One field of a tracepoint's raw record."""

    name: str
    ctype: str      # the C type as declared, e.g. "unsigned int", "__u64"
    offset: int
    size: int
    signed: bool
    array: bool     # declared as name[N]

    @property
    def is_scalar(self) -> bool:
        return not self.array and self.size in (1, 2, 4, 8)

    def describe(self) -> str:
        if self.array:
            return f"{self.name}@{self.offset}:{self.size}B[]"
        sign = "s" if self.signed else "u"
        return f"{self.name}@{self.offset}:{sign}{self.size * 8}"


@dataclass(frozen=True)
class TracepointFormat:
    """The parsed ``format`` file of ``system:event``."""

    system: str
    event: str
    id: int
    fields: dict[str, TraceField] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.system}:{self.event}"

    def payload(self) -> list[TraceField]:
        """Fields after the common trace_entry header."""
        return [f for f in self.fields.values() if not f.name.startswith("common_")]

    def layout(self) -> str:
        return " ".join(f.describe() for f in self.payload())


def parse_format(text: str, system: str = "", event: str = "") -> TracepointFormat:
    """Parse a tracepoint ``format`` file's text."""
    name = event
    tp_id = -1
    fields: dict[str, TraceField] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("name:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("ID:"):
            try:
                tp_id = int(stripped.split(":", 1)[1])
            except ValueError:
                raise FormatError(f"{system}:{name}: bad ID line {stripped!r}") from None
        elif stripped.startswith("field:"):
            f = _parse_field(stripped, system, name)
            fields[f.name] = f
        elif stripped.startswith("print fmt:"):
            break
    if not fields:
        raise FormatError(f"{system}:{name}: no fields in format file")
    return TracepointFormat(system, name, tp_id, fields)


def _parse_field(line: str, system: str, event: str) -> TraceField:
    m = _FIELD_RE.match(line)
    if not m:
        raise FormatError(f"{system}:{event}: cannot parse field line {line!r}")
    decl = m.group("decl").strip()
    d = _DECL_RE.match(decl)
    if not d:
        raise FormatError(f"{system}:{event}: cannot parse declaration {decl!r}")
    return TraceField(name=d.group("name"), ctype=d.group("type").strip(),
                      offset=int(m.group("offset")), size=int(m.group("size")),
                      signed=m.group("signed") == "1", array=d.group("array") is not None)


def find_mount(root: Path = Path("/")) -> Path | None:
    """The tracefs directory with an ``events`` tree, or None when tracefs is not mounted.

    tracefs' root is mode 0700 unless mounted with ``mode=`` (fs/tracefs/inode.c,
    TRACEFS_DEFAULT_MODE), so to anyone but root a mounted one cannot even be looked into:
    that counts as mounted (``Tracefs.access_problem`` says why it is of no use), an empty
    mount point does not."""
    for rel in _mounts_from_proc(root) + list(CANDIDATE_MOUNTS):
        path = root / rel.lstrip("/")
        if _is_dir(path / "events") is not False:
            return path
    return None


def _is_dir(path: Path) -> bool | None:
    """Whether path is a directory; None when we may not look (EACCES)."""
    try:
        return path.is_dir()          # pathlib re-raises EACCES, it swallows only ENOENT & co
    except PermissionError:
        return None
    except OSError:
        return False


def _mounts_from_proc(root: Path) -> list[str]:
    out: list[str] = []
    try:
        text = (root / "proc/mounts").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            out.append(parts[1])
        elif len(parts) >= 3 and parts[2] == "debugfs":
            out.append(parts[1] + "/tracing")
    return out


class Tracefs:
    """A tracefs directory (the live one, or a recorded copy under tests/data)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._formats: dict[str, TracepointFormat | None] = {}

    def exists(self, system: str, event: str) -> bool:
        return bool(_is_dir(self.path / "events" / system / event))

    def access_problem(self) -> str:
        """Why this process cannot read the tracefs tree ("" when it can)."""
        try:
            os.listdir(self.path / "events")
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""

    def format(self, system: str, event: str) -> TracepointFormat | None:
        """The parsed format of system:event, or None when the tracepoint does not exist."""
        if not (_NAME_RE.match(system) and _NAME_RE.match(event)):
            raise FormatError(f"bad tracepoint name {system}:{event}")
        key = f"{system}:{event}"
        if key not in self._formats:
            path = self.path / "events" / system / event / "format"
            try:
                text = path.read_text()
            except FileNotFoundError:
                self._formats[key] = None
            except OSError as exc:
                raise FormatError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
            else:
                self._formats[key] = parse_format(text, system, event)
        return self._formats[key]

    def has_file(self, name: str) -> bool:
        try:
            return (self.path / name).exists()
        except OSError:
            return False

    def filter_functions(self) -> set[str] | None:
        """The functions ``available_filter_functions`` lists (``name [module]`` lines):
        those ftrace-based attachment can use.  None when unreadable (it needs root)."""
        try:
            text = (self.path / "available_filter_functions").read_text()
        except OSError:
            return None
        return {line.split()[0] for line in text.splitlines() if line.strip()}

    def read_error(self, name: str) -> str:
        """Why name cannot be read ("" when it can)."""
        try:
            with open(self.path / name, "rb") as f:
                f.read(1)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""


def valid_name(name: str) -> bool:
    """A C identifier: the only tracepoint/field names kvmtrace lets into generated C."""
    return bool(_NAME_RE.match(name))
