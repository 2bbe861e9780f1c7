"""What kinds of BPF probe this kernel accepts, found by trying, never from the version.

- tracepoint programs (BPF_PROG_TYPE_TRACEPOINT, CONFIG_BPF_EVENTS): load and attach a
  tiny program to a KVM tracepoint;
- kprobes (CONFIG_KPROBES): kernel/trace/trace_kprobe.c creates tracefs ``kprobe_events``
  and the ``kprobe`` perf PMU (/sys/bus/event_source/devices/kprobe, 4.17+); with neither
  there is nothing to attach a kprobe through;
- raw tracepoints (BPF_PROG_TYPE_RAW_TRACEPOINT, 4.17+): load a tiny program on a kvmmmu
  tracepoint and let the kernel attach it (BCC attaches RAW_TRACEPOINT_PROBE on load);
- fentry (BPF_PROG_TYPE_TRACING, needs BTF and the ftrace trampoline): load a tiny fentry
  program on a function that has a symbol and report the kernel's answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from kvmtrace.host import HostFacts
from kvmtrace.host.tracefs import valid_name
from kvmtrace.sources.live.bccload import captured_stderr, summarize_error

TEST_TRACEPOINTS = (("kvm", "kvm_pv_tlb_flush"), ("kvmmmu", "kvm_mmu_get_page"),
                    ("kvm", "kvm_userspace_exit"), ("syscalls", "sys_enter_getppid"),
                    ("sched", "sched_process_exec"))


@dataclass
class Capability:
    usable: bool
    detail: str      # what was tried and what happened
    fix: str = ""    # what to do when not usable


def tracepoint_programs(bcc: ModuleType, facts: HostFacts) -> Capability:
    """Load and attach a minimal tracepoint program, then detach it."""
    if facts.tracefs is None:
        return Capability(False, "tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    target = next((f"{s}:{e}" for s, e in TEST_TRACEPOINTS if facts.tracefs.exists(s, e)), None)
    if target is None:
        return Capability(False, "no test tracepoint exists", "enable CONFIG_TRACEPOINTS / KVM tracepoints")
    text = "int kt_probe(void *ctx) { return 0; }"
    problem = None
    with captured_stderr() as err:
        b = None
        try:
            b = bcc.BPF(text=text.encode())
            b.attach_tracepoint(tp=target.encode(), fn_name=b"kt_probe")
        except Exception as exc:   # BCC raises bare Exception
            problem = exc
        finally:
            if b is not None:
                b.cleanup()        # detaches too
    if problem is not None:
        return Capability(False, f"loading a tracepoint program on {target} failed: "
                                 f"{summarize_error(problem, err)}",
                          "needs root (or CAP_BPF+CAP_PERFMON) and CONFIG_BPF_EVENTS")
    return Capability(True, f"loaded and attached a BPF program to {target}")


def raw_tracepoints(bcc: ModuleType, facts: HostFacts, event: str = "kvm_mmu_get_page") -> Capability:
    """Load and attach a minimal raw-tracepoint program on event, then detach it."""
    if not valid_name(event):
        return Capability(False, f"bad tracepoint name {event!r}")
    if facts.tracefs is not None and not facts.tracefs.exists("kvmmmu", event):
        return Capability(False, f"tracepoint kvmmmu:{event} is absent", "load KVM")
    text = f"RAW_TRACEPOINT_PROBE({event}) {{ return 0; }}"
    with captured_stderr() as err:
        b = None
        try:
            b = bcc.BPF(text=text.encode())
            problem = None
        except Exception as exc:
            problem = exc
        finally:
            if b is not None:
                b.cleanup()
    if problem is not None:
        return Capability(False, f"loading a raw tracepoint program on {event} failed: "
                                 f"{summarize_error(problem, err)}",
                          "needs BPF_PROG_TYPE_RAW_TRACEPOINT (Linux 4.17+) and root")
    return Capability(True, f"loaded and attached a raw tracepoint program to {event}")


def kprobes(facts: HostFacts) -> Capability:
    """Is there any way to create a kprobe here?"""
    events = facts.tracefs is not None and facts.tracefs.has_file("kprobe_events")
    pmu = (facts.root / "sys/bus/event_source/devices/kprobe").exists()
    if events or pmu:
        via = " and ".join(x for x, ok in (("tracefs kprobe_events", events), ("the kprobe PMU", pmu)) if ok)
        return Capability(True, f"kprobes available through {via}")
    why = "no kprobe_events in tracefs and no kprobe perf PMU"
    config = facts.config.get("CONFIG_KPROBES")
    if config == "n":
        why = f"kernel built without CONFIG_KPROBES ({facts.config.source}): {why}"
    elif facts.tracefs is None:
        why = "tracefs is not mounted and there is no kprobe perf PMU"
    return Capability(False, why, "rebuild the kernel with CONFIG_KPROBES=y to trace KVM functions")


def fentry(bcc: ModuleType, facts: HostFacts, symbol: str) -> Capability:
    """Try to load an fentry program on symbol; report the kernel's answer."""
    if not (facts.root / "sys/kernel/btf/vmlinux").exists():
        return Capability(False, "no /sys/kernel/btf/vmlinux (fentry needs kernel BTF)",
                          "rebuild with CONFIG_DEBUG_INFO_BTF=y")
    if not valid_name(symbol):          # it goes into the C text
        return Capability(False, f"bad symbol {symbol!r}")
    text = f"KFUNC_PROBE({symbol}) {{ return 0; }}"
    with captured_stderr() as err:
        try:
            b = bcc.BPF(text=text.encode())
            b.cleanup()
        except Exception as exc:
            problem = exc
        else:
            problem = None
    if problem is None:
        return Capability(True, f"loaded an fentry program on {symbol}")
    msg = summarize_error(problem, err)
    if "Operation not permitted" in msg:
        msg = (f"the kernel refused to load an fentry program on {symbol} with EPERM "
               f"although this process may load BPF ({msg})")
    return Capability(False, msg, "fentry is not usable on this kernel; tracepoints still work")
