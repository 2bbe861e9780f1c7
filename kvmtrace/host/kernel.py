"""The running kernel: its release string and build configuration.

The configuration comes from ``/proc/config.gz`` (CONFIG_IKCONFIG_PROC) or
``/boot/config-<release>``; it is used only to explain a failure (for example
"CONFIG_KPROBES is not set"), never to decide what to attach — that is probed.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path


def release(root: Path = Path("/")) -> str:
    """The kernel release (uname -r); read from the sysroot when one is given."""
    try:
        return (root / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return os.uname().release if root == Path("/") else ""


class KernelConfig:
    """CONFIG_* values of the running kernel, when the kernel publishes them."""

    def __init__(self, values: dict[str, str] | None, source: str):
        self.values = values
        self.source = source

    @property
    def known(self) -> bool:
        return self.values is not None

    def get(self, option: str) -> str | None:
        """'y', 'm', a value, 'n' when '# CONFIG_X is not set', None when unknown."""
        if self.values is None:
            return None
        return self.values.get(option, "n")

    @classmethod
    def parse(cls, text: str, source: str) -> "KernelConfig":
        values: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("CONFIG_") and "=" in line:
                key, _, value = line.partition("=")
                values[key] = value.strip('"')
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                values[line[2:-len(" is not set")]] = "n"
        return cls(values, source)

    @classmethod
    def load(cls, root: Path = Path("/"), rel: str | None = None) -> "KernelConfig":
        rel = rel if rel is not None else release(root)
        proc = root / "proc/config.gz"
        try:
            with gzip.open(proc, "rt") as f:
                return cls.parse(f.read(), "/proc/config.gz")
        except (OSError, EOFError):
            pass
        boot = root / "boot" / f"config-{rel}"
        try:
            return cls.parse(boot.read_text(), str(boot))
        except OSError:
            return cls(None, "")
