"""`kvmtrace check` live on this host: with the built-in guest it passes; with no VM in the
traced set it is inconclusive, never pass.  Skips, saying why, without root, BCC, kernel
headers, tracefs or /dev/kvm."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmtrace.sources.live.tracepoints import attached
from prometheus_client.parser import text_string_to_metric_families

from live_support import kvm_tracing_unavailable_reason, kvm_unavailable_reason, shadow_paging

from kvmtrace.host import gather

TRACE_REASON = kvm_tracing_unavailable_reason()
KVM_REASON = kvm_unavailable_reason()


def check(*args: str) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "kvmtrace", "check", "--json", *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}, proc.stderr


@pytest.mark.live
@pytest.mark.skipif(KVM_REASON is not None, reason=f"live check --exercise: {KVM_REASON}")
def test_check_with_the_exercise_passes_here(tmp_path: Path) -> None:
    prom = tmp_path / "kvmtrace.prom"
    t0 = time.monotonic()
    code, d, err = check("--exercise", "--prom", str(prom))
    took = time.monotonic() - t0
    facts = gather()
    assert facts.tdp is (not shadow_paging())
    if not shadow_paging():
        assert (code, d["verdict"]) == (0, "not-exposed"), d
        return
    assert (code, d["verdict"]) == (0, "pass"), (d.get("reasons"), err)
    ex = d["exercise"]
    assert ex["finished"] and ex["stale_read_count"] == 0 and ex["flushes_requested"] > 0
    assert d["windows"]["meaningful_ok"] >= ex["flushes_requested"]
    assert d["windows"]["violation"] == 0 and d["lost_events"] == 0
    assert d["traced_tgids"] == [ex["pid"]]
    assert [vm["tgid"] for vm in d["vms"]] == [ex["pid"]]
    assert d["host"] == {"kernel": facts.kernel_release, "backend": facts.kvm_backend,
                         "tdp": facts.tdp, "exposed": not facts.tdp}
    assert attached("kvm:kvm_pv_tlb_flush", d["probes"]["attached"])
    # How long it took is a bench figure (README), not a test: a loaded host is slower.
    assert took > 0
    assert d["duration_s"] < 15, "it should stop once the guest is done, not run -d 30"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
    assert samples[("kvmtrace_check_verdict", (("verdict", "pass"),))] == 1
    assert samples[("kvmtrace_check_stale_reads", ())] == 0
    assert samples[("kvmtrace_check_meaningful_windows", ())] == d["windows"]["meaningful"]


@pytest.mark.live
@pytest.mark.skipif(TRACE_REASON is not None, reason=f"live check: {TRACE_REASON}")
def test_check_without_a_vm_is_inconclusive_never_pass() -> None:
    # The traced set is one process that runs no VM (other work on this host may run
    # guests; -p keeps them out, so "no VM" is certain).
    idle = subprocess.Popen(["sleep", "60"])
    try:
        code, d, err = check("-d", "2", "-p", str(idle.pid))
    finally:
        idle.kill()
        idle.wait()
    if not shadow_paging():
        # docs/design.md §2: with EPT/NPT on and no VM on the shadow MMU the host is not exposed.
        assert (code, d["verdict"]) == (0, "not-exposed"), (d, err)
        assert d["windows"]["total"] == 0 and d["events"] == 0
        return
    assert (code, d["verdict"]) == (3, "inconclusive"), (d, err)
    assert d["windows"]["total"] == 0 and d["events"] == 0
    assert d["reasons"][0].startswith("no guest TLB flush was serviced while tracing")
    assert any("--exercise" in s for s in d["next_steps"])
    assert 1.5 <= d["duration_s"] < 10


@pytest.mark.live
@pytest.mark.skipif(KVM_REASON is not None, reason=f"live check --exercise -p: {KVM_REASON}")
def test_check_with_the_exercise_and_pids_traces_both_and_stops_on_evidence() -> None:
    idle = subprocess.Popen(["sleep", "60"])
    try:
        code, d, err = check("--exercise", "-p", str(idle.pid), "-d", "20")
    finally:
        idle.kill()
        idle.wait()
    if not shadow_paging():
        assert (code, d["verdict"]) == (0, "not-exposed"), (d.get("reasons"), err)
        return
    assert (code, d["verdict"]) == (0, "pass"), (d.get("reasons"), err)
    assert d["traced_tgids"] == sorted([idle.pid, d["exercise"]["pid"]])
    assert d["duration_s"] < 15, "enough evidence once the guest finished: no need for -d 20"


@pytest.mark.live
@pytest.mark.skipif(KVM_REASON is not None, reason=f"live check --exercise stopped: {KVM_REASON}")
def test_a_stopped_check_ends_its_guest_early_and_is_inconclusive() -> None:
    # Ctrl-C / SIGTERM set the stop event; a guest asked for 200001 rounds must not run on.
    import re
    import threading
    from kvmtrace.pipeline.check import CheckConfig, run_check
    from kvmtrace.sources.chunks import LiveSource
    stop = threading.Event()

    def status(text: str) -> None:
        m = re.search(r"guest (\d+)/", text)
        if m and int(m.group(1)) >= 1:
            stop.set()
    cfg = CheckConfig(exercise=True, min_windows=100_000, other_vms=False, status=status,
                      status_interval=0.0)
    report = run_check(LiveSource(tgids=[os.getpid()]), cfg, stop)
    ex = report.exercise
    assert ex["finished"] is False and ex["error"].startswith("interrupted after ")
    assert 1 <= ex["rounds_done"] < ex["rounds"] == 200_001
    assert (report.verdict, report.exit_code) == ("inconclusive", 3)
    assert any("stopped before it finished: interrupted" in r for r in report.check.reasons)
    assert report.check.reasons[-1].startswith("the check was stopped (Ctrl-C or SIGTERM) after ")
