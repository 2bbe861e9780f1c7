"""What an exercise run was asked to do, and what it saw."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

# progress(rounds_done, rounds_total), called from the orchestrating thread.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExerciseConfig:
    vcpus: int = 2               # vCPU 0 writes, the others read
    rounds: int = 300
    pages: int = 4               # remapped addresses per round, each in its own last-level table
    seed: int = 1
    flush: bool = True           # False: the control (no flush requested, staleness expected)
    flush_via: tuple = ("steal-time",)   # flush paths, rotated round by round (flushvia.py)
    hypercall: int = 0x1007      # the PVM flush hypercall number (flushvia.probe finds it)
    progress: Optional[Progress] = None
    address_spaces: int = 1      # page-table trees per vCPU, switched by CR3 loads between passes

    def validate(self) -> None:
        from kvmtrace.exercise.guestcode import MAX_FLAGS, MAX_READS, MAX_STORES
        from kvmtrace.exercise.layout import MAX_VCPUS
        top = min(MAX_FLAGS + 1, MAX_VCPUS)
        if not 2 <= self.vcpus <= top:
            raise ValueError(f"--vcpus must be 2..{top} (one writer, at least one reader)")
        if self.rounds < 1:
            raise ValueError("--rounds must be >= 1")
        if not 1 <= self.pages <= MAX_READS:
            raise ValueError(f"--pages must be 1..{MAX_READS}")
        from kvmtrace.exercise.layout import MAX_ADDRESS_SPACES
        if not 1 <= self.address_spaces <= MAX_ADDRESS_SPACES:
            raise ValueError(f"--address-spaces must be 1..{MAX_ADDRESS_SPACES}")
        # A remap rewrites the PTE in every tree's copy of an unshared table.
        if self.pages * (self.vcpus - 1) * self.address_spaces > MAX_STORES:
            raise ValueError(f"--pages x readers x address spaces must be <= {MAX_STORES} "
                             "PTE writes per round")
        from kvmtrace.analysis.flushpaths import EXERCISE_PATHS
        bad = [p for p in self.flush_via if p not in EXERCISE_PATHS]
        if bad or not self.flush_via:
            raise ValueError(f"--flush-via must be one of {', '.join(EXERCISE_PATHS)}, all")


@dataclass(frozen=True)
class StaleRead:
    """A reader saw a value other than what the guest's current page tables map."""

    vcpu: int
    round: int
    address: int                 # guest virtual address read
    expected: int
    observed: int
    after_flush: bool            # read after the round's flush request (else: at round start)


@dataclass
class ExerciseResult:
    vcpus: int
    rounds: int
    pages: int
    seed: int
    flush: bool
    flushes_requested: int
    reads: int                   # values checked
    stale_reads: list[StaleRead]
    pid: int
    vcpu_tids: dict[int, int]    # vCPU index -> host thread id
    backend: str                 # vmx, svm, pvm
    tdp: bool | None
    exposed: bool                # the host runs this guest on the shadow MMU
    duration_s: float
    extra: dict = field(default_factory=dict)

    @property
    def functional_failure(self) -> bool:
        """The hypervisor let a vCPU read through a stale translation after a flush."""
        return self.flush and bool(self.stale_reads)

    @property
    def control_saw_staleness(self) -> bool:
        return not self.flush and bool(self.stale_reads)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["vcpu_tids"] = {str(k): v for k, v in self.vcpu_tids.items()}
        out["stale_read_count"] = len(self.stale_reads)
        out["functional_failure"] = self.functional_failure
        return out
