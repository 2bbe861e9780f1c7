"""Damaged and hostile trace inputs for the fuzz test and bench/fuzz_bench.py.

Each case is bytes written to a file and fed to ``analyze`` in process.  ``damaged`` cases
must never give a verdict of ok or violation (their events cannot be trusted): binary
noise, lost newlines (joined lines), bytes flipped inside a gzip member (CRC-protected,
so always detectable).  The others (blank or whitespace lines, very long lines, Parquet
bytes flipped, truncations) must only never hang or raise anything but one-line errors.
"""
from __future__ import annotations

import gzip
import random
import signal
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SOURCES = [ROOT / "fixtures" / "lab_two_vcpu_flush.ftrace.txt",
                *sorted((ROOT / "fixtures" / "text").glob("*.txt"))]
REAL = ROOT / "fixtures" / "real" / "exercise_2vcpu.parquet"
CATEGORIES = ("whitespace", "long_line", "joined", "noise", "gz_flip", "parquet_flip",
              "jsonl_edit", "truncated")
DAMAGED = frozenset({"joined", "noise", "gz_flip"})


@dataclass
class Case:
    category: str
    suffix: str
    data: bytes
    harmless: bool = False          # the bytes changed but decode to the very same trace

    @property
    def damaged(self) -> bool:
        return self.category in DAMAGED and not self.harmless


_NATIVE: dict[str, bytes] = {}


def _native(fmt: str) -> bytes:
    """The real 2-vCPU capture as a kvmtrace file of format fmt (made once)."""
    if fmt not in _NATIVE:
        import tempfile
        from kvmtrace.sources.native import write_trace
        from kvmtrace.sources.stream import load
        trace = load(REAL)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / f"t.{fmt}"
            write_trace(out, trace.events, trace.meta, chunk_rows=64)
            _NATIVE[fmt] = out.read_bytes()
    return _NATIVE[fmt]


def _text(rng: random.Random) -> list[str]:
    return rng.choice(TEXT_SOURCES).read_text(errors="replace").splitlines(keepends=True)


def _model_event_names() -> frozenset[str]:
    from kvmtrace.kinds import tracepoints
    names = set()
    for _, tp in tracepoints():
        for full in (tp.name, *tp.aliases):
            names.add(full.rpartition(":")[2])
    return frozenset(names)


def _names_model_event(line: str) -> bool:
    """Whether a text line mentions an event of a kind the model reads (by name)."""
    return any(f"{name}:" in line for name in _MODEL_EVENTS)


def _event_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]


_MODEL_EVENTS = _model_event_names()


def make_case(rng: random.Random, category: str | None = None) -> Case:
    category = category or rng.choice(CATEGORIES)
    if category == "whitespace":
        lines = _text(rng)
        for _ in range(rng.randint(1, 5)):
            pad = rng.choice([" ", "\t", "  \t ", "\r"]) * rng.choice([1, 50, 400, 1600, 3000])
            lines.insert(rng.randint(0, len(lines)), pad + "\n")
        return Case(category, ".txt", "".join(lines).encode())
    if category == "long_line":
        lines = _text(rng)
        body = rng.choice(["x", "kvm_mmu_sync_page: ", " [000] ", "9", "-"]) * rng.choice([100, 5000, 100000])
        lines.insert(rng.randint(0, len(lines)), body + "\n")
        return Case(category, ".txt", "".join(lines).encode())
    if category == "joined":
        lines = _text(rng)
        events = _event_lines(lines)
        if len(events) < 3:
            return make_case(rng, "noise")
        a = rng.randrange(len(events) - 1)
        b = rng.randint(a + 1, min(len(events) - 1, a + rng.choice([1, 5, 1000])))
        first, last = events[a], events[b]
        joined = "".join(line.rstrip("\n") for line in lines[first:last + 1]) + "\n"
        # Joining only events the model never reads (kvm_fpu, kvm_unmap_hva_range ...)
        # loses nothing a verdict depends on: such a case may still give ok or violation
        # (the skipped line is reported).  Model events are named by kvmtrace's kind table.
        harmless = not any(_names_model_event(line) for line in lines[first:last + 1])
        return Case(category, ".txt", "".join(lines[:first] + [joined] + lines[last + 1:]).encode(),
                    harmless=harmless)
    if category == "noise":
        n = rng.choice([1, 7, 200, 4096, 70000])
        head = rng.choice([b"", b"PAR1", b"\x1f\x8b", b"\xff\xff\xff\xff", b'{"kvmtrace":', b"# tracer: nop\n"])
        return Case(category, ".bin", head + bytes(rng.getrandbits(8) for _ in range(n)))
    if category == "gz_flip":
        data = bytearray(_native("jsonl.gz"))
        at = rng.randrange(10, len(data) - 8)          # past the (unchecked) header fields
        for i in range(rng.choice([1, 2, 8])):
            data[at + i] ^= rng.randint(1, 255)
        # A flip in bits deflate never reads (padding after the last block) changes
        # nothing: such a case is no damage.
        try:
            harmless = gzip.decompress(bytes(data)) == gzip.decompress(_native("jsonl.gz"))
        except (OSError, EOFError, zlib.error):
            harmless = False
        return Case(category, ".jsonl.gz", bytes(data), harmless)
    if category == "parquet_flip":
        data = bytearray(_native("parquet"))
        for _ in range(rng.choice([1, 4, 16])):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        return Case(category, ".parquet", bytes(data))
    if category == "jsonl_edit":
        lines = _native("jsonl").decode().splitlines(keepends=True)
        i = rng.randrange(len(lines))
        edit = rng.choice(["[" * 50000, '{"kvmtrace": [1, 2]}', '{"ts": 1, "kind": "sp_get", "gfn": 9223372036854775813}',
                           '{"ts": 1e400}', "null", '{"kind": {"a": 1}, "ts": 2}'])
        lines[i] = edit + "\n"
        return Case(category, ".jsonl", "".join(lines).encode())
    # truncated
    fmt = rng.choice(["jsonl.gz", "parquet", "jsonl"])
    data = _native(fmt)
    return Case(category, "." + fmt, data[:rng.randrange(1, len(data))])


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_case(case: Case, workdir: Path, limit_s: float = 5.0) -> tuple[str, float]:
    """Analyse the case in process: ('error' | 'verdict:V' | 'traceback:T' | 'hang', seconds)."""
    from kvmtrace.pipeline.offline import SelectionError, analyze_paths
    from kvmtrace.schema import SchemaError
    from kvmtrace.sources.native import TraceFileError
    path = workdir / f"case{case.suffix}"
    path.write_bytes(case.data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    t0 = time.monotonic()
    try:
        outcome = "verdict:" + analyze_paths([path]).verdict
    except (TraceFileError, SchemaError, SelectionError):
        outcome = "error"
    except _Timeout:
        outcome = "hang"
    except Exception as exc:          # what the fuzzing looks for
        outcome = f"traceback:{type(exc).__name__}: {str(exc)[:120]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.monotonic() - t0
    if elapsed > limit_s:
        outcome = "hang"              # a C-level loop holds off the alarm: still a hang
    return outcome, elapsed


def judge(case: Case, outcome: str) -> str:
    """'' when the outcome is acceptable, else what is wrong."""
    if outcome == "hang" or outcome.startswith("traceback:"):
        return outcome
    if case.damaged and outcome in ("verdict:ok", "verdict:violation"):
        return "verdict from damaged input: " + outcome
    return ""
