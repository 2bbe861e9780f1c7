"""Why live BPF tests cannot run on this host (None when they can)."""
from __future__ import annotations


from kvmtrace.host import gather
from kvmtrace.sources.live.bccload import headers, import_bcc, privileges
from kvmtrace.sources.live.errors import LiveUnavailable


def bpf_unavailable_reason() -> str | None:
    ok, why = privileges()
    if not ok:
        return f"needs root for BPF ({why})"
    facts = gather()
    if facts.tracefs is None:
        return "tracefs is not mounted (run .ci/install-live.sh)"
    try:
        import_bcc()
    except LiveUnavailable as exc:
        return str(exc)
    hdr, detail = headers(facts.kernel_release)
    if hdr is None:
        return f"no kernel headers for BCC: {detail} (run .ci/install-live.sh)"
    return None


def kvm_tracing_unavailable_reason() -> str | None:
    """Why KVM cannot be traced here: BPF, plus a KVM backend and the tracepoints every
    recording needs (tracefs lists KVM's events only while the kvm module is loaded)."""
    reason = bpf_unavailable_reason()
    if reason:
        return reason
    from kvmtrace.sources.live.tracepoints import REQUIRED
    facts = gather()
    if not facts.backend.name:
        return "no KVM backend loaded (modprobe kvm_intel, kvm_amd or kvm_pvm)"
    absent = [n for n in REQUIRED if not facts.tracefs.exists(*n.split(":"))]
    if absent:
        return f"KVM tracepoint(s) {', '.join(absent)} not in tracefs"
    return None


def kvm_unavailable_reason() -> str | None:
    """Why the exercise guest cannot run here under the recorder."""
    reason = kvm_tracing_unavailable_reason()
    if reason:
        return reason
    from kvmtrace.exercise import unavailable_reason
    return unavailable_reason()


def bcc_or_none():
    try:
        return import_bcc()[0]
    except LiveUnavailable:
        return None
