"""The probe program, compiled (or taken from the cache), loaded and attached.

Two ways, one interface (``Program``):
- ``OwnProgram``: kvmtrace loads a ``bpfobject.ProgramObject`` itself with bpf(2).  The
  object comes from the program cache (progcache.py) when this text was compiled before on
  this kernel, else BCC compiles it once and the object is extracted and stored.  This is
  the path of every tracepoint and raw-tracepoint program: no BCC import, no clang, when
  the cache has it.
- ``BccProgram``: BCC loads and attaches, as it always did.  Kept for programs with kprobes
  (kvmtrace's loader attaches tracepoints only) and for bytecode the extractor refuses.

Maps are read through their fds the same way in both (``MapView``).

May import: kvmtrace.sources.live.{bpfsys,bpfobject,progcache,bccload}.
"""
from __future__ import annotations

import errno
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvmtrace.sources.live import bpfsys
from kvmtrace.sources.live.bccload import CFLAGS, captured_stderr, identity, import_bcc, summarize_error
from kvmtrace.sources.live.bpfobject import (LoadedProgram, ProgramObject, bcc_tables, extract,
                                             load)
from kvmtrace.sources.live.progcache import ProgramCache, key

_KEY_FORMATS = {4: "<I", 8: "<Q"}


class CompileFailed(Exception):
    """BCC could not compile the program text (the message is BCC's or clang's)."""


class LoadFailed(Exception):
    """The kernel refused a program or map; ``eperm`` when for lack of privileges."""

    def __init__(self, message: str, eperm: bool = False):
        super().__init__(message)
        self.eperm = eperm


def refusal(exc: BaseException, what: str) -> LoadFailed:
    """A LoadFailed naming the verifier's last words when there are some."""
    if isinstance(exc, bpfsys.BpfError):
        last = [l for l in exc.log.splitlines() if l.strip()][-2:]
        detail = f"{exc}" + (f" (verifier: {' / '.join(last)})" if last else "")
        return LoadFailed(f"{what}: {detail}", eperm=exc.errno == errno.EPERM)
    return LoadFailed(f"{what}: {exc}")


class MapView:
    """Reads and writes elements of the program's maps by name, through their fds."""

    def __init__(self, fds: dict[str, int]):
        self.fds = fds
        self._info: dict[str, dict] = {}

    def info(self, name: str) -> dict:
        if name not in self._info:
            self._info[name] = bpfsys.map_info(self.fds[name])
        return self._info[name]

    def _key(self, name: str, k: int) -> bytes:
        size = int(self.info(name)["key_size"])
        if size not in _KEY_FORMATS:
            raise ValueError(f"map {name}: {size}-byte keys are not integers")
        return struct.pack(_KEY_FORMATS[size], k)

    def get(self, name: str, k: int) -> bytes | None:
        """The value at integer key ``k`` (all CPUs' values for a per-CPU map), or None."""
        info = self.info(name)
        size = int(info["value_size"])
        if info["type"] in bpfsys.PERCPU_MAP_TYPES:
            size = (size + 7) // 8 * 8 * bpfsys.possible_cpus()
        return bpfsys.lookup(self.fds[name], self._key(name, k), size)

    def u64(self, name: str, k: int) -> int:
        value = self.get(name, k)
        return struct.unpack_from("<Q", value)[0] if value else 0

    def per_cpu_u64(self, name: str, k: int) -> list[int]:
        value = self.get(name, k)
        return list(struct.unpack(f"<{len(value) // 8}Q", value)) if value else []

    def put(self, name: str, k: int, value: bytes) -> None:
        # The kernel copies value_size bytes from the buffer whatever its length: a value
        # that drifted from the C struct would be read past its end, silently.
        size = int(self.info(name)["value_size"])
        if len(value) != size:
            raise ValueError(f"map {name}: a {len(value)}-byte value for {size}-byte values")
        bpfsys.update(self.fds[name], self._key(name, k), value)


class Program:
    """A loaded probe program: attach its functions, read its maps, close it."""
    how: str = ""
    maps: MapView

    def preload(self, names: list[str]) -> None:
        """Load these functions now, all at once where the loader can (attach then only
        attaches); a refusal is raised by the attach of that function."""

    def prog_fds(self) -> dict[str, int]:
        """The loaded programs' fds by function name (bench/exact_cost_bench.py reads their
        run counts from /proc/self/fdinfo)."""
        raise NotImplementedError

    def attach_raw(self, event: str, fn: str) -> None:
        raise NotImplementedError

    def attach_tracepoint(self, system: str, event: str, fn: str) -> None:
        raise NotImplementedError

    def attach_kprobe(self, symbol: str, fn: str, is_return: bool) -> None:
        raise LoadFailed("kvmtrace's own loader attaches tracepoints only")

    def close(self) -> None:
        raise NotImplementedError


class OwnProgram(Program):
    def __init__(self, loaded: LoadedProgram, tracefs: Path, how: str):
        self.loaded = loaded
        self.tracefs = tracefs
        self.how = how
        self.maps = MapView(loaded.map_fds)
        self.refused: dict[str, bpfsys.BpfError] = {}

    def preload(self, names: list[str]) -> None:
        self.refused.update(self.loaded.load_progs(names))

    def prog_fds(self) -> dict[str, int]:
        return dict(self.loaded.prog_fds)

    def _prog(self, fn: str, what: str) -> None:
        try:
            if fn in self.refused:
                raise self.refused[fn]
            self.loaded.load_prog(fn)
        except bpfsys.BpfError as exc:
            raise refusal(exc, f"loading {what}") from None

    def attach_raw(self, event: str, fn: str) -> None:
        self._prog(fn, f"raw tracepoint {event}")
        try:
            self.loaded.attach_raw(event, fn)
        except bpfsys.BpfError as exc:
            raise refusal(exc, f"attaching raw tracepoint {event}") from None

    def attach_tracepoint(self, system: str, event: str, fn: str) -> None:
        self._prog(fn, f"tracepoint {system}:{event}")
        id_file = self.tracefs / "events" / system / event / "id"
        try:
            tp_id = int(id_file.read_text())
        except (OSError, ValueError) as exc:
            raise LoadFailed(f"cannot read {id_file}: {exc}") from None
        try:
            self.loaded.attach_perf(tp_id, fn, f"{system}:{event}")
        except bpfsys.BpfError as exc:
            raise refusal(exc, f"attaching tracepoint {system}:{event}") from None

    def close(self) -> None:
        self.loaded.close()


class BccProgram(Program):
    def __init__(self, bpf, how: str):
        self.bpf = bpf
        self.how = how
        self.maps = MapView(dict(bcc_tables(bpf, import_bcc()[0].lib)))

    def prog_fds(self) -> dict[str, int]:
        return {(k.decode() if isinstance(k, bytes) else k): fn.fd for k, fn in self.bpf.funcs.items()}

    def _call(self, what: str, fn, **kw) -> None:
        with captured_stderr() as err:
            try:
                fn(**kw)
            except Exception as exc:          # BCC raises bare Exception
                raise LoadFailed(f"{what}: {summarize_error(exc, err)}") from None

    def attach_raw(self, event: str, fn: str) -> None:
        self._call(f"raw tracepoint {event}", self.bpf.attach_raw_tracepoint,
                   tp=event.encode(), fn_name=fn.encode())

    def attach_tracepoint(self, system: str, event: str, fn: str) -> None:
        self._call(f"tracepoint {system}:{event}", self.bpf.attach_tracepoint,
                   tp=f"{system}:{event}".encode(), fn_name=fn.encode())

    def attach_kprobe(self, symbol: str, fn: str, is_return: bool) -> None:
        attach = self.bpf.attach_kretprobe if is_return else self.bpf.attach_kprobe
        self._call(f"{'kretprobe' if is_return else 'kprobe'} {symbol}", attach,
                   event=symbol.encode(), fn_name=fn.encode())

    def close(self) -> None:
        detach_all(self.bpf)


def detach_all(bpf) -> None:
    """Detach every probe of a BCC program, the perf-event ones in parallel, then let BCC
    clean up.  Closing a tracepoint's or kprobe's perf event waits in the kernel for an RCU
    grace period (perf_event_release_kernel; 72-88 ms each measured here), so BCC's
    one-by-one cleanup() spent 1.3 s on 17 tracepoints; the closes are ctypes calls that
    release the GIL, so a thread each lets the grace periods overlap."""
    jobs = [(bpf.detach_tracepoint, k) for k in list(getattr(bpf, "tracepoint_fds", ()))]
    jobs += [(bpf.detach_kprobe_event, k) for k in list(getattr(bpf, "kprobe_fds", ()))]

    def run(job) -> None:
        fn, k = job
        try:
            fn(k)
        except Exception:            # cleanup() below retries whatever is still attached
            pass
    if jobs:
        with ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
            list(pool.map(run, jobs))
    bpf.cleanup()


def compile_and_load(text: str, prog_types: dict[str, int], headers: Path, tracefs: Path,
                     with_kprobes: bool, root: Path = Path("/"),
                     cache: ProgramCache | None = None) -> tuple[Program, list[str]]:
    """The program of ``text`` with its maps created and its functions loaded (a function
    the kernel refuses is refused again at its attach), and notes saying where it came
    from.  Raises CompileFailed or LoadFailed."""
    notes: list[str] = []
    if not with_kprobes:
        cache = cache if cache is not None else ProgramCache()
        k = key(text, CFLAGS, identity(), headers, root)
        obj = cache.get(k)
        if cache.note:
            notes.append(cache.note)
        if obj is not None and set(prog_types) <= {p.name for p in obj.progs}:
            prog = _own(obj, tracefs, f"program: compiled before, loaded from the cache in {cache.dir}")
            prog.preload(list(prog_types))
            return prog, notes
    bcc, how = import_bcc()
    notes.append(f"BCC: {how}")
    with captured_stderr() as err:
        try:
            bpf = bcc.BPF(text=text.encode(), cflags=list(CFLAGS))
        except Exception as exc:              # BCC raises bare Exception
            raise CompileFailed(summarize_error(exc, err)) from None
    if with_kprobes:
        return BccProgram(bpf, "program: compiled and loaded by BCC (kprobes)"), notes
    try:
        obj = extract(bpf, bcc.lib, prog_types)
    except Exception as exc:                  # ObjectError, or BCC's and bpf(2)'s own
        notes.append(f"program: loaded by BCC (not extracted: {exc})")
        return BccProgram(bpf, "program: compiled and loaded by BCC"), notes
    bpf.cleanup()                              # BCC's maps; kvmtrace creates its own
    prog = _own(obj, tracefs, "program: compiled by BCC")
    prog.preload(list(prog_types))
    if prog.refused:
        prog.how += " (not cached: the kernel refused " + ", ".join(sorted(prog.refused)) + ")"
        return prog, notes
    # Stored only once the kernel accepted every function: a bad extraction is never reused.
    stored = cache.put(k, obj)
    if cache.note:
        notes.append(cache.note)
    if stored:
        prog.how += f"; cached in {stored}"
    return prog, notes


def _own(obj: ProgramObject, tracefs: Path, how: str) -> OwnProgram:
    try:
        loaded = load(obj)
    except bpfsys.BpfError as exc:
        raise refusal(exc, "creating the maps") from None
    return OwnProgram(loaded, tracefs, how)
