"""Line formats of the text tracers: ftrace, trace-cmd report and perf script.

ftrace (kernel/trace/trace_output.c, trace_print_context()), for ``trace`` and ``trace_pipe``::

    <comm %16s>-<pid %-7d> [(TGID %7d|-------) ][<cpu %03d>] [<irq flags, 4-5 chars> ]<ts>: <event>: <body>

The ``(TGID)`` column comes with ``options/record-tgid``, the flags with ``options/irq-info``
(four characters before 5.17's migrate-disable column, five after).  comm may hold spaces,
slashes and dashes (``CPU 1/KVM-2102``, ``kvm-nx-lpage-re-13940``), or be ``<...>`` when the
comm cache missed.  Losses print ``CPU:1 [LOST 123 EVENTS]`` (or ``[LOST EVENTS]`` when the
count is unknown) before the next event of that CPU; the ``trace`` header says
``# entries-in-buffer/entries-written: 182/182   #P:2`` (the difference was overwritten).
Timestamps are ``%5lu.%06lu`` for ns clocks and a bare counter for counter clocks (x86-tsc).

trace-cmd report: a ``cpus=N`` header (``version = 6`` before it in older releases),
``[<instance>: ]<comm>-<pid> [<cpu>] <ts>: <event>: <body>`` (the instance prefix when the
data came from a tracefs instance); ``-l`` prints the latency form ``<comm>-<pid> <cpu><flags>
<ts>:`` with comm cut to 8 characters; losses print ``CPU:7 [204600 EVENTS DROPPED]``.

perf script (default fields comm,tid,cpu,time,event,trace; ``-F ...,pid,tid`` prints
``pid/tid``): ``<comm> <tid> [<cpu>] <ts>: <group>:<event>: <body>`` with the event name
right-aligned; ``--header`` adds ``# os release : 6.1.0`` style lines.
"""
from __future__ import annotations

import re
from typing import Iterable

FTRACE = "ftrace"
TRACE_CMD = "trace-cmd"
PERF = "perf"

# A timestamp "secs.frac" (6 or 9 decimals) or a bare counter.
_TS = r"(?P<ts>\d+(?:\.\d+)?)"

# All three line regexes have the same nine groups, in this order, so that the importer can
# unpack m.groups(): comm, pid, extra (ftrace TGID / perf tid / trace-cmd latency cpu), cpu,
# flags, ts, event, colon (empty for function-tracer lines and "<stack trace>"), body.
FTRACE_LINE = re.compile(
    r"\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>\S{4,5})\s+)?" + _TS + r":\s+(?P<event>[\w.$-]+|<[\w ]+>)(?P<colon>:?) ?(?P<body>.*)")

TRACE_CMD_LINE = re.compile(
    r"(?:[^\s:]+:\s+)?\s*(?P<comm>.*?)-(?P<pid>\d+)\s+"
    r"(?:(?P<lcpu>\d+)[^\s\d]\S{3,5}\s+|\[(?P<cpu>\d+)\]\s+(?:(?P<flags>\S{4,6})\s+)?)"
    + _TS + r":\s+(?P<event>[\w.$-]+)(?P<colon>:?)\s*(?P<body>.*)")

PERF_LINE = re.compile(
    r"\s*(?P<comm>.*?)\s+(?P<pid>\d+)(?:/(?P<tid>\d+))?\s+\[(?P<cpu>\d+)\]\s+(?P<flags>)" + _TS +
    r":\s+(?:\d+\s+)?(?P<event>[\w.$-]+(?::[\w.$-]+)?)(?P<colon>:)\s*(?P<body>.*)")

FTRACE_LOST = re.compile(r"CPU:(?P<cpu>\d+) \[LOST (?:(?P<n>\d+) )?EVENTS\]\s*$")
TRACE_CMD_LOST = re.compile(r"CPU:(?P<cpu>\d+) \[(?:(?P<n>\d+) )?EVENTS DROPPED\]\s*$")

ENTRIES = re.compile(r"#\s*entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
TRACE_CMD_HEADER = re.compile(r"(?:version = \d+|cpus=\d+)\s*$")
PERF_HEADER_KV = re.compile(r"#\s*([\w ]+?)\s*:\s*(.*?)\s*$")

# Lines that carry no event: ftrace stack traces, perf call chains, trace-cmd notes.
SKIP_LINE = re.compile(r"\s*(?:=> |<stack trace>|<user stack trace>|\.\.\.)"
                       r"|\s+(?:0x)?[0-9a-f]{6,} \S"
                       r"|CPU \d+ is empty\s*$|cpus=\d+\s*$|version = \d+\s*$")

_NS_SCALE = (1_000_000_000, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)


def ts_ns(text: str) -> int:
    """'2252.595347' -> 2252595347000 exactly (integer arithmetic, no float rounding).

    A bare integer (counter clocks) is returned as it is.
    """
    sec, dot, frac = text.partition(".")
    if not dot:
        return int(sec)
    if len(frac) > 9:
        raise ValueError(f"timestamp {text!r} has more than 9 decimals")
    return int(sec) * 1_000_000_000 + int(frac) * _NS_SCALE[len(frac)]


def sniff(lines: Iterable[str]) -> str | None:
    """The dialect of a text trace from its first lines, or None when none matches."""
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("# tracer:") or ENTRIES.match(stripped):
            return FTRACE
        if TRACE_CMD_HEADER.match(stripped):
            return TRACE_CMD
        if stripped.startswith("#"):
            if stripped.startswith("# ========") or stripped.startswith("# captured on"):
                return PERF
            continue
        if FTRACE_LOST.match(stripped):
            return FTRACE
        if TRACE_CMD_LOST.match(stripped):
            return TRACE_CMD
        m = PERF_LINE.match(line)
        if m is not None and ":" in m.group("event"):
            return PERF
        if FTRACE_LINE.match(line):
            return FTRACE
    return None
