"""Exit codes shared by every kvmtrace command, and the one verdict -> exit code table.

Imports nothing: every layer may use it.
"""
OK = 0             # ok, pass, no flushes seen, not exposed
VIOLATION = 1      # a violation (or a stale read) was found
BAD_INPUT = 2      # usage error or unreadable input
INCONCLUSIVE = 3   # suspect or inconclusive evidence
ENVIRONMENT = 4    # this host cannot do it: no privileges, BPF, tracefs or KVM

# Trace verdicts (analyze, watch, timeline/report) and check verdicts (check) share one table.
BY_VERDICT = {
    "ok": OK, "no-flushes": OK, "violation": VIOLATION, "suspect": INCONCLUSIVE,
    "inconclusive": INCONCLUSIVE,
    "pass": OK, "not-exposed": OK, "fail": VIOLATION,
}


def for_verdict(verdict: str) -> int:
    """The exit code of a trace or check verdict."""
    return BY_VERDICT[verdict]
