"""kvmtrace: find guest TLB flushes that x86 KVM completes before syncing its shadow MMU."""
__version__ = "0.1.0"
