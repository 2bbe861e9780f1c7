"""A probe on a tracepoint any process can fire at will, for checking and benchmarking
the recorder's transport (not a KVM event; never part of a real recording).

``syscalls:sys_enter_getppid`` (CONFIG_FTRACE_SYSCALLS) fires once per getppid(2), the
cheapest system call there is, so a tight loop produces the highest event rate one core
can.  Its rows are written with kind HYPERCALL and value = the syscall number.
"""
from __future__ import annotations

from kvmtrace.schema import Kind
from kvmtrace.sources.live.tracepoints import ALWAYS, TracepointProbe

GETPPID = TracepointProbe("syscalls", "sys_enter_getppid", Kind.HYPERCALL, ALWAYS,
                          {"value": ("{__syscall_nr}",)})
