"""Line formats of the text tracers: ftrace, trace-cmd report and perf script, parsed alike.

ftrace (kernel/trace/trace_output.c, trace_print_context()), for ``trace`` and ``trace_pipe``::

    <comm %16s>-<pid %-7d> [(TGID %7d|-------) ][<cpu %03d>] [<irq flags, 4-5 chars> ]<ts>: <event>: <body>

The ``(TGID)`` column comes with ``options/record-tgid``, the flags with ``options/irq-info``
(four characters before 5.17's migrate-disable column, five after).  comm may hold spaces,
slashes and dashes (``CPU 1/KVM-2102``, ``kvm-nx-lpage-re-13940``), or be ``<...>`` when the
comm cache missed.  Losses print ``CPU:1 [LOST 123 EVENTS]`` (or ``[LOST EVENTS]`` when the
count is unknown) before the next event of that CPU; the ``trace`` header says
``# entries-in-buffer/entries-written: 182/182   #P:2`` (the difference was overwritten).
Timestamps are ``%5lu.%06lu`` for ns clocks and a bare counter for counter clocks (x86-tsc).

trace-cmd report: a ``cpus=N`` header (``version = 6`` before it in older releases; people
drop it when pasting), ``[<instance>: ]<comm>-<pid> [<cpu>] <ts>: <event>: <body>`` with the
body padded to align; ``-l`` prints the latency form ``<comm>-<pid> <cpu><flags> <ts>:``;
losses print ``CPU:7 [204600 EVENTS DROPPED]``.

perf script (tools/perf/builtin-script.c, perf_sample__fprintf_start(): comm ``%16s``, then
``%5d/%-5d`` pid/tid or ``%7d`` tid, `` [%03d]`` cpu, ``%5lu.%06lu:`` time, then the event
name right-aligned): ``<comm> <tid> [<cpu>] <ts>: <group>:<event>: <body>``; ``-F`` drops
fields (``[001] 770.850287: kvm:kvm_entry: ...`` with no comm/tid, ``comm 20677.199579: ...``
with no tid or cpu).  perf-prof (OpenCloudOS) prefixes a wall-clock date and prints irq
flags before the cpu: ``2022-04-22 17:39:26.535148  <...> 126953 .... [078] 96822671.255015:
kvm:kvm_exit: ...``.

All of these are parsed by ONE procedure (``split_event_line``), so no header line is needed
to read a trace: the timestamp token ``<digits>[.<digits>]:`` anchors the line, what precedes
it is the task context, what follows the event and its body.  Nothing here backtracks: every
regular expression is anchored with bounded repetition, and lines longer than ``MAX_LINE``
are refused before any parsing (a trace line is ~100-200 bytes).
"""
from __future__ import annotations

import re
from typing import NamedTuple

FTRACE = "ftrace"
TRACE_CMD = "trace-cmd"
PERF = "perf"

MAX_LINE = 4096          # longer lines are skipped unparsed (joined lines, binary junk)

# The timestamp token: preceded by whitespace (or the line start), followed by whitespace.
_TS = re.compile(r"(?<!\S)(\d{1,20}(?:\.\d{1,12})?):(?=\s|$)", re.A)
_CPU = re.compile(r"(?<!\S)\[(\d{1,6})\](?=\s)", re.A)
# After the timestamp: [perf sample period] event[:] body.
_EVENT = re.compile(r"[ \t]*(?:(\d{1,20})[ \t]+)?"
                    r"([A-Za-z_][\w.$-]{0,127}(?::[A-Za-z_][\w.$-]{0,127})?|<[\w ]{1,32}>)(:?)(?=\s|$)", re.A)
_DATE = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d{1,9})?\s+", re.A)
_INSTANCE = re.compile(r"[^\s:]{1,64}:\s", re.A)
_LATENCY = re.compile(r"(\d{1,6})([^\s\d]\S{2,6})$", re.A)
_PIDTAIL = re.compile(r"-(\d{1,10})$", re.A)
_PERF_PID = re.compile(r"(?:^|\s)(\d{1,10})(?:/(\d{1,10}))?$", re.A)
_FLAGS_TOKEN = re.compile(r"[.\w]{4,5}$", re.A)
_DIGITS = re.compile(r"[0-9]{1,10}", re.A)

FTRACE_LOST = re.compile(r"CPU:(?P<cpu>\d{1,6}) \[LOST (?:(?P<n>\d{1,20}) )?EVENTS\]\s*$", re.A)
TRACE_CMD_LOST = re.compile(r"CPU:(?P<cpu>\d{1,6}) \[(?:(?P<n>\d{1,20}) )?EVENTS DROPPED\]\s*$", re.A)

ENTRIES = re.compile(r"#\s*entries-in-buffer/entries-written:\s*(\d{1,20})/(\d{1,20})", re.A)
TRACE_CMD_HEADER = re.compile(r"(?:version = \d{1,6}|cpus=\d{1,6})\s*$", re.A)
PERF_HEADER_KV = re.compile(r"#\s*([\w ]{1,40}?)\s*:\s*(.*?)\s*$", re.A)

# Lines that carry no event: ftrace stack traces, perf call chains, trace-cmd notes, grep -C
# group separators.
SKIP_LINE = re.compile(r"\s*(?:=> |<stack trace>|<user stack trace>|\.\.\.)"
                       r"|\s{1,16}(?:0x)?[0-9a-f]{6,16} \S"
                       r"|CPU \d{1,6} is empty\s*$|cpus=\d{1,6}\s*$|version = \d{1,6}\s*$|--\s*$", re.A)

# A kvm_exit for INVLPG: VMX and SVM intercept INVLPG only when the shadow MMU runs the guest
# (vmx.c: CPU_BASED_INVLPG_EXITING is cleared with EPT; svm.c: INTERCEPT_INVLPG with npt off).
INVLPG_EXIT = re.compile(r"(?:vcpu [0-9]{1,10} )?reason (?:INVLPG|invlpg)(?![\w])", re.A)

# A mail quote ("> ", "> > ", ">>").
QUOTE = re.compile(r"(?:>[ \t]?){1,16}", re.A)

_NS_SCALE = (1_000_000_000, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)


class EventLine(NamedTuple):
    comm: str
    tid: int          # -1 when the line does not say (perf -F without tid)
    tgid: int         # -1 unknown: ftrace "(TGID)" column, perf "pid/tid"
    cpu: int          # -1 when the line does not say
    ts: str
    event: str        # "kvm_exit", "kvm:kvm_exit" (perf), "<stack trace>", a function name
    colon: str        # ":" after a tracepoint name; "" for function-tracer lines
    body: str


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


def _context(prefix: str, has_cpu: bool) -> tuple[str, int, int, int] | None:
    """(comm, tid, tgid, latency cpu, problem) of the text before ``[cpu]`` / the timestamp."""
    p = prefix.strip()
    m = _DATE.match(p)
    if m is not None:                                   # perf-prof's wall-clock prefix
        p = p[m.end():]
    m = _INSTANCE.match(p)
    if m is not None and p[m.end():].strip():
        p = p[m.end():].lstrip()                        # trace-cmd "instance: "
    cpu = -1
    if not has_cpu:
        m = _LATENCY.search(p)                          # trace-cmd -l: "comm-pid <cpu><flags>"
        if m is not None and m.start() > 0 and p[m.start() - 1].isspace() \
                and _PIDTAIL.search(p[:m.start()].rstrip()):
            cpu = int(m.group(1))
            p = p[:m.start()].rstrip()
    tgid = -1
    if p.endswith(")"):                                 # ftrace "(  TGID)" / "(-------)"
        lp = p.rfind("(")
        if lp < 0:
            return None
        inner = p[lp + 1:-1].strip()
        if _DIGITS.fullmatch(inner):
            tgid = int(inner)
        elif not inner or inner.strip("-"):
            return None
        p = p[:lp].rstrip()
    parts = p.rsplit(None, 1)
    if len(parts) == 2 and "." in parts[1] and _FLAGS_TOKEN.match(parts[1]):
        p = parts[0].rstrip()                           # perf-prof irq flags "d..."
    m = _PIDTAIL.search(p)
    if m is not None:                                   # ftrace / trace-cmd "comm-pid"
        return p[:m.start()].strip(), int(m.group(1)), tgid, cpu
    m = _PERF_PID.search(p)
    if m is not None:                                   # perf "comm pid/tid" or "comm tid"
        if m.group(2) is not None:
            return p[:m.start()].strip(), int(m.group(2)), int(m.group(1)), cpu
        return p[:m.start()].strip(), int(m.group(1)), tgid, cpu
    return p, -1, tgid, cpu                         # perf without tid: comm only


def split_event_line(line: str) -> EventLine | None:
    """Split one trace line (no newline, no quote prefix) into its parts; None if it is not
    an event line of any of the tracers above."""
    if len(line) > MAX_LINE:
        return None
    cpu_m = _CPU.search(line)
    ts_m = _TS.search(line, cpu_m.end() if cpu_m is not None else 0)
    if ts_m is None:
        return None
    if cpu_m is not None:
        between = line[cpu_m.end():ts_m.start()].strip()
        if between and (len(between) > 8 or " " in between or "\t" in between):
            return None                                 # irq flags are one short token
        prefix = line[:cpu_m.start()]
        cpu = int(cpu_m.group(1))
    else:
        prefix = line[:ts_m.start()]
        cpu = -1
    ctx = _context(prefix, cpu_m is not None)
    if ctx is None:
        return None
    comm, tid, tgid, lat_cpu = ctx
    if cpu < 0:
        cpu = lat_cpu
    ev = _EVENT.match(line, ts_m.end() + 1)
    if ev is None:
        return None
    _period, event, colon = ev.groups()                 # perf prints a sample's period
    body = line[ev.end():].strip()
    return EventLine(comm, tid, tgid, cpu, ts_m.group(1), event, colon, body)


def looks_like_event(line: str) -> bool:
    """Whether a line that failed to parse began like an event line (a "[cpu]" or a
    timestamp): a capture cut inside it, rather than prose around a pasted trace."""
    head = line[:MAX_LINE]
    return _CPU.search(head) is not None or _TS.search(head) is not None


def unquote(line: str) -> str:
    """Drop a mail quote prefix ("> ", "> > ")."""
    m = QUOTE.match(line)
    return line[m.end():] if m is not None else line


def sniff(lines: list[str]) -> str | None:
    """The tracer that wrote a text trace, from a bounded prefix of its lines; None when no
    line there is a trace line.  Headers help but are not needed: pasted excerpts lack them."""
    first_event = None
    for raw in lines:
        line = unquote(raw.rstrip("\r\n"))
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
        if first_event is None:
            ev = split_event_line(line)
            if ev is not None and (ev.colon or ev.event.startswith("<")):
                first_event = ev, line
    if first_event is None:
        return None
    ev, line = first_event
    if ":" in ev.event:
        return PERF
    # trace-cmd pads the body to align it ("kvm_exit:             reason ..."), ftrace does not;
    # its -l form has no [cpu].
    after = line.find(ev.event + ":")
    padded = after >= 0 and line[after + len(ev.event) + 1:after + len(ev.event) + 3] == "  "
    return TRACE_CMD if padded or "[" not in line else FTRACE
