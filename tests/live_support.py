"""Why live BPF tests cannot run on this host (None when they can)."""
from __future__ import annotations


from kvmtrace.host import gather
from kvmtrace.live.bccload import headers, import_bcc, privileges
from kvmtrace.live.errors import LiveUnavailable


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


def kvm_unavailable_reason() -> str | None:
    reason = bpf_unavailable_reason()
    if reason:
        return reason
    from kvmtrace.exercise import unavailable_reason
    return unavailable_reason()


def bcc_or_none():
    try:
        return import_bcc()[0]
    except LiveUnavailable:
        return None
