"""Exit codes shared by every kvmtrace command."""
OK = 0             # ok, pass, no flushes seen, not exposed
VIOLATION = 1      # a violation (or a stale read) was found
BAD_INPUT = 2      # usage error or unreadable input
INCONCLUSIVE = 3   # suspect or inconclusive evidence
ENVIRONMENT = 4    # this host cannot do it: no privileges, BPF, tracefs or KVM
