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

__all__ = ["run_exercise", "unavailable_reason", "resolve_flush_via", "flush_support", "ExerciseConfig", "ExerciseResult",
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


def run_exercise(config: ExerciseConfig, via_info: dict | None = None) -> ExerciseResult:
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
    if via_info is None:                     # else the caller resolved it (before recording)
        config, via_info = resolve_flush_via(config)
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
               "flush_via": {**via_info, "paths": list(config.flush_via),
                             "requested_by_path": dict(exerciser.via.by_path),
                             "hypercall_errors": [r for r in exerciser.hypercall_results if r < 0]},
               "kernel": platform.release(), "finished_at": time.time()})


def _one_round(seed: int):
    """flushvia.probe's runner: one round of one path in a throwaway 2-vCPU guest."""
    def run_one(path: str, hypercall: int) -> tuple[int, list[int]]:
        from kvmtrace.exercise.guest import build_guest
        from kvmtrace.exercise.protocol import Exerciser, tables_for
        config = ExerciseConfig(vcpus=2, rounds=1, pages=1, seed=seed, flush_via=(path,),
                                hypercall=hypercall)
        guest = build_guest(2, tables_for(1), KVM_DEVICE)
        ex = Exerciser(guest, config)
        try:
            ex.start()
            ex.run_rounds()
        finally:
            if ex.stop():
                guest.close()
        return sum(1 for s in ex.stale if s.after_flush), ex.hypercall_results
    return run_one


def flush_support(paths: tuple[str, ...], seed: int = 1):
    """flushvia.Support for ``paths`` on this host (runs the guest once per path)."""
    from kvmtrace.exercise import flushvia
    backend = detect_backend().name
    return flushvia.probe(paths, backend, _one_round(seed))


def tracefs_events() -> set | None:
    from kvmtrace.host.tracefs import find_mount
    mount = find_mount()
    if mount is None:
        return None
    out = set()
    for system in ("kvm", "kvmmmu"):
        try:
            out.update((system, e) for e in os.listdir(mount / "events" / system))
        except OSError:
            pass
    return out


def resolve_flush_via(config: ExerciseConfig) -> tuple[ExerciseConfig, dict]:
    """The paths this run will use.  One path the host does not service is refused
    (ExerciseUnavailable, one line); several (``all``) keep those the host services and
    kvmtrace can see and judge here, and say why each other one was left out."""
    from dataclasses import replace
    from kvmtrace.exercise import coverage
    paths = tuple(config.flush_via)
    if not config.flush or paths == ("steal-time",):
        return config, {}
    support = flush_support(paths, config.seed)
    if len(paths) == 1:
        why = support.refused.get(paths[0]) or support.untried.get(paths[0])
        if why:
            raise ExerciseUnavailable(f"--flush-via {paths[0]}: {why}")
        return replace(config, hypercall=support.hypercall), {"skipped": {}}
    rows = {r.path: r for r in coverage.coverage(detect_backend().name, support, tracefs_events(),
                                                 coverage.raw_problem())}
    use = tuple(p for p in paths if p in support.serviced and rows[p].judged)
    skipped = {p: support.refused.get(p) or support.untried.get(p) or ("serviced, but " + (rows[p].judge_note or rows[p].seen_note))
               for p in paths if p not in use}
    if not use:
        raise ExerciseUnavailable("no flush path is both serviced here and judged by kvmtrace: "
                                  + "; ".join(f"{p}: {w}" for p, w in skipped.items()))
    return replace(config, flush_via=use, hypercall=support.hypercall), {"skipped": skipped}
