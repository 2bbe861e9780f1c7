"""Why a live test cannot run on this host (None when it can), from tests/host_facts.py.

The reasons come from facts the tests check themselves, never from kvmtrace's own host
probing: a bug there must fail a live test, not skip it.  Under KVMTRACE_REQUIRE_LIVE=1 any
skip of a ``live`` test is a failure (conftest.py).
"""
from __future__ import annotations

import sys

from host_facts import BCC_DIST, facts


def bpf_unavailable_reason() -> str | None:
    return facts().bpf_reason()


def kvm_tracing_unavailable_reason() -> str | None:
    """BPF plus KVM's tracepoints in tracefs (listed only while a KVM module is loaded)."""
    return facts().kvm_tracing_reason()


def kvm_unavailable_reason() -> str | None:
    """The exercise guest under the recorder: KVM tracing plus an openable /dev/kvm."""
    return facts().kvm_reason()


def exercise_unavailable_reason() -> str | None:
    """The built-in guest alone: /dev/kvm."""
    return facts().exercise_reason()


def tracefs_kvm_unavailable_reason() -> str | None:
    """The guest traced through a tracefs instance: root, tracefs, KVM's events, /dev/kvm."""
    return facts().tracefs_kvm_reason()


def shadow_paging() -> bool:
    """Guests here run on the shadow MMU (PVM, or EPT/NPT off): flush windows are meaningful."""
    return bool(facts().shadow_paging)


def bcc():
    """The bcc module (Debian's python3-bpfcc, also from a Python that is not the system one).
    Called only by tests whose skip condition already found BCC installed."""
    try:
        import bcc as mod
    except ImportError:
        sys.path.append(str(BCC_DIST))
        import bcc as mod
    return mod
