"""``kvmtrace doctor``: every precondition of live tracing, checked on this host.

Each check has a status (ok / missing / info), what was found, and what to do when it is
missing.  Recording is possible when every *required* check is ok.  Nothing here assumes
a kernel version: tracepoints and their layouts come from tracefs, functions from
kallsyms, and kprobe / fentry / BPF support from trying.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kvmtrace.host import FormatError, HostFacts, gather, setup
from kvmtrace.host import exactlayout
from kvmtrace.host.probepoints import OTHER_BACKEND, discover
from kvmtrace.sources.live import capabilities
from kvmtrace.sources.live.bccload import headers, import_bcc, privileges
from kvmtrace.sources.live.progcache import ProgramCache
from kvmtrace.sources.live.errors import INSTALL_HINT, LiveUnavailable
from kvmtrace.sources.live.program import resolve
from kvmtrace.sources.live.tracepoints import REQUIRED, TRACEPOINTS

OK, MISSING, INFO = "ok", "missing", "info"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    required: bool = False
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Diagnosis:
    checks: list[Check]
    host: dict[str, Any]

    @property
    def recording_possible(self) -> bool:
        return all(c.status == OK for c in self.checks if c.required)

    def to_dict(self) -> dict[str, Any]:
        return {"recording_possible": self.recording_possible, "host": self.host,
                "checks": [asdict(c) for c in self.checks]}


def diagnose(root: str = "/") -> Diagnosis:
    facts = gather(root)
    checks: list[Check] = [_kernel(facts), _backend(facts), _paging(facts)]
    ok, why = privileges()
    checks.append(Check("privileges", OK if ok else MISSING, why,
                        "" if ok else "run as root (or with CAP_BPF and CAP_PERFMON)", True))
    bcc = None
    try:
        bcc, how = import_bcc()
        checks.append(Check("bcc", OK, how, required=True))
    except LiveUnavailable as exc:
        checks.append(Check("bcc", MISSING, exc.problem, exc.fix, True))
    hdr, detail = headers(facts.kernel_release, facts.root)
    checks.append(Check("kernel-headers", OK if hdr else MISSING, detail,
                        "" if hdr else INSTALL_HINT + " (links /lib/modules/$(uname -r)/build)", True))
    checks.append(_tracefs(facts))
    checks.append(_tracepoints(facts))
    checks.append(_bpf_tracepoint(bcc, facts, ok and hdr is not None))
    kp = capabilities.kprobes(facts)
    checks.append(Check("kprobes", OK if kp.usable else MISSING, kp.detail, kp.fix))
    checks.append(_exact(bcc, facts, ok and hdr is not None))
    checks.append(_fentry(bcc, facts, ok and hdr is not None))
    checks.append(_functions(facts, kp.usable))
    checks.append(_self_setup(facts))
    checks.append(Check("program-cache", INFO, ProgramCache().describe()))
    host = {"kernel_release": facts.kernel_release, "kvm_backend": facts.kvm_backend,
            "tdp": facts.tdp, "paging": facts.backend.paging, "exposed": facts.backend.exposed,
            "tracefs": str(facts.tracefs.path) if facts.tracefs else None}
    return Diagnosis(checks, host)


def _self_setup(facts: HostFacts) -> Check:
    actions = setup.plan(facts.root)
    if not actions:
        return Check("self-setup", INFO, "nothing to set up (tracefs and header links are in place "
                                         "or cannot be provided without installing packages)")
    todo = "; ".join(a.describe() for a in actions)
    return Check("self-setup", INFO, f"kvmtrace doctor --fix (and record, check, watch, exercise "
                                     f"--record as root, unless --no-setup) would: {todo}",
                 items=[{"action": a.name, "command": a.describe(), "why": a.why} for a in actions])


def _kernel(facts: HostFacts) -> Check:
    cfg = f"; config from {facts.config.source}" if facts.config.known else "; kernel config not published"
    return Check("kernel", INFO, f"Linux {facts.kernel_release}{cfg}")


def _backend(facts: HostFacts) -> Check:
    b = facts.backend
    if not b.name:
        return Check("kvm-backend", MISSING,
                     "no KVM vendor backend (kvm_intel, kvm_amd, kvm_pvm) found" +
                     ("" if b.kvm_present else "; KVM itself is absent"),
                     "load kvm_intel or kvm_amd (modprobe), on a host with VMX/SVM", True)
    ev = "; ".join(f"{n}: {', '.join(e)}" for n, e in b.evidence.items())
    return Check("kvm-backend", OK, f"{b.name} ({ev})", required=True)


def _paging(facts: HostFacts) -> Check:
    b = facts.backend
    if b.tdp is None:
        return Check("paging", INFO, f"TDP state unknown ({b.tdp_source})")
    if b.tdp:
        return Check("paging", INFO, f"TDP on ({b.tdp_source}): ordinary guests do not use the shadow "
                                     "MMU, so this host is not exposed (nested L2 guests still are)")
    return Check("paging", INFO, f"shadow paging ({b.tdp_source}): exposed — every guest TLB flush "
                                 "must sync unsync shadow pages")


def _tracefs(facts: HostFacts) -> Check:
    if facts.tracefs is None:
        return Check("tracefs", MISSING, "tracefs is not mounted",
                     "kvmtrace doctor --fix, or mount -t tracefs nodev /sys/kernel/tracing", True)
    problem = facts.tracefs.access_problem()
    if problem:
        return Check("tracefs", MISSING, f"mounted at {facts.tracefs.path} but not readable ({problem})",
                     "run as root", True)
    return Check("tracefs", OK, f"mounted at {facts.tracefs.path}", required=True)


def _tracepoints(facts: HostFacts) -> Check:
    items = []
    usable = 0
    for tp in TRACEPOINTS:
        try:
            fmt = facts.tracefs.format(tp.system, tp.event) if facts.tracefs else None
            r = resolve(tp, fmt)
        except FormatError as exc:
            fmt, r = None, str(exc)
        present = fmt is not None or bool(facts.tracefs and facts.tracefs.exists(tp.system, tp.event))
        item: dict[str, Any] = {"name": tp.name, "kind": tp.kind.name.lower(), "present": present}
        if fmt is not None:
            item["id"] = fmt.id
            item["fields"] = fmt.layout()
        if isinstance(r, str):
            item["usable"] = False
            item["why"] = r
        else:
            item["usable"] = True
            usable += 1
        items.append(item)
    if facts.tracefs is None:
        return Check("kvm-tracepoints", MISSING, "cannot read tracepoints without tracefs",
                     "mount tracefs", True, items)
    unreadable = facts.tracefs.access_problem()
    if unreadable:
        # tracefs is mode 0700 (fs/tracefs/inode.c): unprivileged, a present tracepoint
        # cannot be told from an absent one.
        for i in items:
            if not i["present"]:
                i["present"] = None
                i["why"] = f"not readable without root ({unreadable})"
        return Check("kvm-tracepoints", MISSING,
                     f"{len(items)} tracepoints not readable without root ({unreadable})",
                     "run as root", True, items)
    absent = [i["name"] for i in items if not i["present"]]
    detail = f"{usable} of {len(items)} usable" + (f"; absent: {', '.join(absent)}" if absent else "")
    key = [i for i in items if i["name"] in REQUIRED]
    if not all(i["usable"] for i in key):
        return Check("kvm-tracepoints", MISSING, detail + "; the flush-request / SP-sync tracepoints are needed",
                     "a kernel with KVM (CONFIG_KVM) and its tracepoints", True, items)
    return Check("kvm-tracepoints", OK, detail, required=True, items=items)


def _bpf_tracepoint(bcc, facts: HostFacts, can_try: bool) -> Check:
    if bcc is None or not can_try:
        return Check("bpf-tracepoint-program", MISSING, "not tried: needs root, BCC and kernel headers",
                     "fix the checks above", True)
    cap = capabilities.tracepoint_programs(bcc, facts)
    return Check("bpf-tracepoint-program", OK if cap.usable else MISSING, cap.detail, cap.fix, True)


def _exact(bcc, facts: HostFacts, can_try: bool) -> Check:
    """The exact probe mode: BTF has every field it reads, and raw tracepoints load."""
    from kvmtrace.sources.live.plan import exact_problem
    layout = exactlayout.discover(facts.root)
    items = [{"field": line} for line in layout.lines()]
    problem = exact_problem(facts, layout)
    if problem:
        return Check("exact-mode", MISSING, f"off: {problem}",
                     "record --probes auto uses the tracepoints instead (inferred evidence)",
                     items=items)
    if bcc is None or not can_try:
        return Check("exact-mode", MISSING, f"BTF fields found ({layout.source}); raw tracepoints "
                     "not tried: needs root, BCC and kernel headers", items=items)
    cap = capabilities.raw_tracepoints(bcc, facts)
    if not cap.usable:
        return Check("exact-mode", MISSING, f"off: {cap.detail}", cap.fix, items=items)
    return Check("exact-mode", OK, f"on: {cap.detail}; all {len(items)} fields found in "
                 f"{layout.source}", items=items)


def _fentry(bcc, facts: HostFacts, can_try: bool) -> Check:
    status = discover(facts.kallsyms, facts.kvm_backend)
    target = next((s.symbol for s in status if s.status == "present"), None)
    if bcc is None or not can_try:
        return Check("fentry", MISSING, "not tried: needs root, BCC and kernel headers")
    if target is None:
        return Check("fentry", MISSING, "no probed KVM function has a symbol to try fentry on")
    cap = capabilities.fentry(bcc, facts, target)
    return Check("fentry", OK if cap.usable else MISSING, cap.detail, cap.fix)


def _functions(facts: HostFacts, kprobes_ok: bool) -> Check:
    filt = facts.tracefs.filter_functions() if facts.tracefs else None
    items = []
    for st in discover(facts.kallsyms, facts.kvm_backend, filt):
        if st.status == OTHER_BACKEND:
            continue
        items.append({"name": st.name, "status": st.status, "symbol": st.symbol,
                      "attachable": st.attachable and kprobes_ok, "detail": st.detail,
                      "kind": (st.function.entry or st.function.ret).name.lower()})
    present = [i["name"] for i in items if i["status"] in ("present", "clone")]
    missing = [i["name"] for i in items if i["status"] == "missing"]
    detail = (f"with symbols: {', '.join(present) or 'none'}; no symbol (likely inlined): "
              f"{', '.join(missing) or 'none'}; available_filter_functions "
              f"{'readable' if filt is not None else _unreadable(facts)}")
    if not kprobes_ok:
        detail += "; none attachable without kprobes"
    return Check("kvm-functions", OK if present and kprobes_ok else INFO, detail, items=items)


def _unreadable(facts: HostFacts) -> str:
    why = facts.tracefs.read_error("available_filter_functions") if facts.tracefs else "no tracefs"
    return f"not readable ({why})"


def render(d: Diagnosis) -> str:
    out = []
    for c in d.checks:
        mark = {"ok": "ok  ", "missing": "MISS", "info": "info"}[c.status]
        req = "" if c.required or c.status != MISSING else " (optional)"
        out.append(f"[{mark}] {c.name:24} {c.detail}{req}")
        if c.status == MISSING and c.fix:
            out.append(f"       {'':24} -> {c.fix}")
        if c.name == "kvm-tracepoints":
            for i in c.items:
                state = ("ok  " if i["usable"] else "--  ")
                desc = (i.get("fields", "") if i["present"] else
                        "not readable without root" if i["present"] is None else "absent")
                why = "" if i["usable"] or not i["present"] else f"  ({i['why']})"
                out.append(f"         {state}{i['name']:34} {desc}{why}")
        if c.name == "exact-mode":
            for i in c.items:
                out.append(f"         {i['field']}")
        if c.name == "kvm-functions":
            for i in c.items:
                out.append(f"         {'ok  ' if i['attachable'] else '--  '}{i['name']:38} {i['status']}: {i['detail']}")
    verdict = ("recording is possible" if d.recording_possible
               else "recording is NOT possible: fix the MISS lines marked required above")
    out.append(f"=> {verdict}")
    return "\n".join(out)
