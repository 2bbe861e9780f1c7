"""An on-disk cache of compiled probe programs (bpfobject.ProgramObject), one per kernel.

BCC's compile of the probe program (clang over the program and BCC's headers) is most of
``check``'s time; its output depends only on the program text, the compiler flags, BCC
itself and the kernel headers and configuration it compiles against.  The key hashes all
of them: the text (which already carries every offset and field layout discovered from
BTF and tracefs), the flags, the BCC module's version and libbcc's file identity, the
running kernel's /proc/version and release, and the identity of the headers BCC uses.  A
different kernel, a rebuilt kernel with the same release, new headers or a new BCC each
give a different key, so an object is never loaded for a kernel it was not compiled for.

The objects are loaded into the kernel by root, so the cache is trusted only when this
user owns the directory and the file and nobody else may write them; otherwise it is
not used (the reason goes into the recording's notes).  Files are written to a temporary
name, fsynced and renamed, so a reader sees a whole object or none; each carries the
SHA-256 of its payload, checked on read.

Location: ``$KVMTRACE_CACHE_DIR`` (``off`` disables the cache), else
``/var/cache/kvmtrace`` for root, else ``$XDG_CACHE_HOME/kvmtrace`` (``~/.cache``).

May import: kvmtrace.sources.live.bpfobject (and the standard library).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from kvmtrace.sources.live.bpfobject import ObjectError, ProgramObject

ENV = "KVMTRACE_CACHE_DIR"
SUFFIX = ".bpfobj"
KEEP = 32                 # objects kept; older ones are removed when a new one is stored
MAGIC = b"kvmtrace-bpfobj 1\n"


def default_dir() -> Path | None:
    """The cache directory, or None when disabled."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "no") else Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/kvmtrace")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmtrace"


def file_identity(path: str | os.PathLike) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}: absent"
    return f"{os.path.realpath(path)} {st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def key(text: str, cflags: tuple[str, ...], compiler: str, headers: str | os.PathLike,
        root: str | os.PathLike = "/") -> str:
    """The cache key of ``text`` compiled with ``cflags`` by ``compiler`` (a string that
    changes with BCC: bccload.identity()) against ``headers``."""
    root = Path(root)
    hdr = Path(headers)
    parts = {
        "text": hashlib.sha256(text.encode()).hexdigest(),
        "cflags": list(cflags),
        "compiler": compiler,
        "kernel": _read(str(root / "proc/version")),
        "release": os.uname().release,
        # The headers' directory may be a symlink farm: the files BCC reads that change
        # with a kernel build (the configuration and the version header).
        "bcc_kernel_source": os.environ.get("BCC_KERNEL_SOURCE", ""),
        "source": file_identity(root / "lib/modules" / os.uname().release / "source"),
        "headers": [file_identity(hdr)] + [
            file_identity(hdr / p) for p in ("include/generated/autoconf.h",
                                               "include/config/auto.conf",
                                               "include/generated/uapi/linux/version.h")],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _trusted(path: Path, is_dir: bool) -> str:
    """Why ``path`` must not be trusted ("" if it may)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return _untrusted_stat(st, path, is_dir)


def _untrusted_stat(st: os.stat_result, path: Path, is_dir: bool) -> str:
    if is_dir and not stat.S_ISDIR(st.st_mode) or not is_dir and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a {'directory' if is_dir else 'regular file'}"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


class ProgramCache:
    def __init__(self, directory: Path | None = None):
        self.dir = default_dir() if directory is None else directory
        self.note = "" if self.dir is not None else f"program cache off ({ENV}=off)"

    def describe(self) -> str:
        """One line for kvmtrace doctor: where the cache is, how full, whether it is used."""
        if self.dir is None:
            return self.note
        if not self.dir.is_dir():
            return f"{self.dir} (empty: the first live command compiles and stores the program)"
        why = _trusted(self.dir, True)
        if why:
            return f"not used: {why}"
        n = len(list(self.dir.glob(f"*{SUFFIX}")))
        return (f"{self.dir}: {n} compiled program{'s' if n != 1 else ''} (a program not there "
                f"is compiled by BCC, about a second, and stored)")

    def _path(self, k: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{k}{SUFFIX}"

    def get(self, k: str) -> ProgramObject | None:
        """The cached object, or None (absent, untrusted or damaged: the note says which)."""
        if self.dir is None or not self.dir.is_dir():
            return None
        why = _trusted(self.dir, True)
        if why:
            self.note = f"program cache not used: {why} (chown root {self.dir}; chmod go-w {self.dir})"
            return None
        path = self._path(k)
        try:
            # Checked on the open file, not the path: O_NOFOLLOW refuses a symlink, and the
            # ownership and mode come from the very inode that is read.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.note = f"program cache entry {path} not used: {exc.strerror or exc}"
            return None
        with os.fdopen(fd, "rb") as f:
            why = _untrusted_stat(os.fstat(f.fileno()), path, False)
            if why:
                self.note = f"program cache not used: {why}"
                return None
            data = f.read()
        try:
            if not data.startswith(MAGIC):
                raise ObjectError("not a kvmtrace program object")
            digest, _, payload = data[len(MAGIC):].partition(b"\n")
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                raise ObjectError("checksum mismatch")
            obj = ProgramObject.from_bytes(payload)
        except ObjectError as exc:
            self.note = f"program cache entry {path} ignored: {exc}"
            return None
        try:
            os.utime(path)               # recently used: the last to be pruned
        except OSError:
            pass
        return obj

    def put(self, k: str, obj: ProgramObject) -> Path | None:
        """Store ``obj``; None (and the note says why) when the cache cannot be written."""
        if self.dir is None:
            return None
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            why = _trusted(self.dir, True)
            if why:
                self.note = f"program cache not written: {why}"
                return None
            payload = obj.to_bytes()
            data = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path(k))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._prune()
            return self._path(k)
        except OSError as exc:
            self.note = f"program cache not written: {exc.strerror or exc}"
            return None

    def _prune(self) -> None:
        assert self.dir is not None
        entries = []
        for p in self.dir.glob(f"*{SUFFIX}"):
            try:
                entries.append((p.stat().st_mtime, p))
            except FileNotFoundError:            # pruned by a concurrent run
                pass
        for _, old in sorted(entries, reverse=True)[KEEP:]:
            old.unlink(missing_ok=True)
