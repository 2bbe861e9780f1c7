"""``kvmtrace exercise``: a built-in tiny guest that reproduces the flush-before-sync
scenario on demand and checks, from inside the guest, that the hypervisor honoured every
guest TLB flush (docs/design.md §2).

    from kvmtrace.exercise import run_exercise, ExerciseConfig
    result = run_exercise(ExerciseConfig(vcpus=2, rounds=20, pages=2, seed=1, flush=True))

Modules: ``kvmabi`` (ioctl ABI), ``paravirt`` (steal time / PV TLB flush guest ABI),
``backend`` (VMX/SVM/PVM detection and quirks), ``vm`` (VM and vCPU objects), ``layout``
(memory layout and page tables), ``guestcode`` (the hand-assembled guest), ``cpustate``
(long-mode register state), ``guest`` (the set-up VM), ``protocol`` (the rounds),
``result`` (config and result).
"""
from __future__ import annotations

import os
import platform
import time

from kvmtrace.exercise.backend import detect_backend
from kvmtrace.exercise.result import ExerciseConfig, ExerciseResult, StaleRead

__all__ = ["run_exercise", "unavailable_reason", "ExerciseConfig", "ExerciseResult",
           "StaleRead", "ExerciseUnavailable", "ExerciseError"]

KVM_DEVICE = "/dev/kvm"


class ExerciseUnavailable(RuntimeError):
    """This host cannot run the exercise (exit 4): the message says why."""


class ExerciseError(RuntimeError):
    """The guest stopped unexpectedly mid-run."""


def unavailable_reason(device: str | None = None) -> str | None:
    """Why the exercise cannot run here, in one line, or None when it can."""
    device = device or KVM_DEVICE
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the exercise guest is x86-64 code; this is {platform.machine()}"
    if not os.path.exists(device):
        return f"{device} does not exist (load kvm_intel, kvm_amd or kvm_pvm)"
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        return f"cannot open {device}: permission denied (run as root or in the kvm group)"
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror}"
    os.close(fd)
    backend = detect_backend()
    if backend.quirks is None:
        return "no supported KVM backend loaded (kvm_intel, kvm_amd or kvm_pvm)"
    from kvmtrace.exercise.paravirt import missing_features
    from kvmtrace.exercise.vm import Kvm, pv_features
    try:
        kvm = Kvm(device)
        try:
            missing = missing_features(pv_features(kvm.supported_cpuid()))
        finally:
            kvm.close()
    except OSError as exc:
        return f"{device}: {exc}"
    if missing:
        return "KVM does not offer " + ", ".join(missing) + " to guests"
    return None


def run_exercise(config: ExerciseConfig) -> ExerciseResult:
    """Run the exercise in this process (vCPU threads named ``CPU n/KVM``).

    Raises ExerciseUnavailable when the host cannot run it, ValueError for a bad config,
    ExerciseError when the guest stops unexpectedly.  Stale reads are data, not errors.
    """
    from kvmtrace.exercise.guest import GuestSetupError, build_guest
    from kvmtrace.exercise.protocol import Exerciser, tables_for
    from kvmtrace.exercise.vm import GuestStopped

    config.validate()
    reason = unavailable_reason()
    if reason:
        raise ExerciseUnavailable(reason)
    try:
        guest = build_guest(config.vcpus, tables_for(config.pages), KVM_DEVICE, config.address_spaces)
    except GuestSetupError as exc:
        raise ExerciseUnavailable(str(exc)) from exc
    except OSError as exc:
        raise ExerciseUnavailable(f"creating the VM: {exc}") from exc
    exerciser = Exerciser(guest, config)
    try:
        tids = exerciser.start()
        try:
            duration = exerciser.run_rounds()
        except (GuestStopped, TimeoutError) as exc:
            raise ExerciseError(str(exc)) from exc
        except OSError as exc:
            raise ExerciseError(f"KVM_RUN: {exc}") from exc
    finally:
        if exerciser.stop():          # a vCPU thread still in KVM_RUN keeps its VM
            guest.close()
    return ExerciseResult(
        vcpus=config.vcpus, rounds=config.rounds, pages=config.pages, seed=config.seed,
        flush=config.flush, flushes_requested=exerciser.flushes_requested,
        reads=exerciser.reads, stale_reads=exerciser.stale, pid=os.getpid(), vcpu_tids=tids,
        backend=guest.backend.vendor, tdp=guest.backend.tdp,
        exposed=guest.backend.exposed is True,
        duration_s=duration,
        extra={"tables": guest.layout.tables, "pvm_signature": guest.pvm_signature,
               "address_spaces": config.address_spaces, "cr3_loads": exerciser.cr3_loads,
               "cr3_noflush_loads": exerciser.noflush_loads, "pcid": guest.pcid,
               "kernel": platform.release(), "finished_at": time.time()})
