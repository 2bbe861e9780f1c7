"""`record` and `doctor` refuse clearly (one line, exit 4) when the host cannot trace; and,
where it can, doctor tells the truth about this host.  The refusal paths run anywhere."""
from __future__ import annotations

import os
import types

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvmtrace.cli import cli
from kvmtrace.host import gather
from kvmtrace.sources.live import recorder as recorder_mod
from kvmtrace.sources.live import loader as loader_mod
from kvmtrace.sources.live import doctor as doctor_mod
from kvmtrace.sources.live.errors import LiveUnavailable

from live_support import kvm_tracing_unavailable_reason

HOSTS = Path(__file__).parent / "data" / "hosts"


def run(args):
    return CliRunner().invoke(cli, args)


def one_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_record_without_root_exits_4(monkeypatch, tmp_path):
    monkeypatch.setattr(recorder_mod, "privileges", lambda: (False, "not root and without CAP_BPF+CAP_PERFMON"))
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(HOSTS / "pvm_6_18"))
    res = run(["record", "-o", str(tmp_path / "x.parquet"), "-d", "1"])
    assert res.exit_code == 4
    assert "needs root" in one_line(res)
    assert not (tmp_path / "x.parquet.part").exists()


def test_record_without_bcc_says_what_to_install(monkeypatch, tmp_path):
    def no_bcc():
        raise LiveUnavailable("BCC is not importable (python3-bpfcc)",
                              "on Debian/Ubuntu: apt install python3-bpfcc linux-headers-$(uname -r)")
    monkeypatch.setattr(recorder_mod, "privileges", lambda: (True, "root"))
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(HOSTS / "pvm_6_18"))
    # BCC is needed to compile: an empty program cache, so nothing compiled is at hand.
    monkeypatch.setenv("KVMTRACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loader_mod, "import_bcc", no_bcc)
    res = run(["record", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 4
    line = one_line(res)
    assert "python3-bpfcc" in line and "apt install" in line


def test_record_without_headers_exits_4(monkeypatch, tmp_path):
    monkeypatch.setattr(recorder_mod, "privileges", lambda: (True, "root"))
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(HOSTS / "pvm_6_18"))
    monkeypatch.setattr(recorder_mod, "headers", lambda rel, root: (None, f"/lib/modules/{rel}/build missing"))
    res = run(["record", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 4
    line = one_line(res)
    assert "kernel headers" in line and "linux-headers" in line


def test_record_without_tracefs_exits_4(monkeypatch, tmp_path):
    (tmp_path / "root/proc").mkdir(parents=True)
    monkeypatch.setattr(recorder_mod, "privileges", lambda: (True, "root"))
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(tmp_path / "root"))
    res = run(["record", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 4
    assert "tracefs" in one_line(res)


def test_record_functions_mode_without_kprobes_exits_4(monkeypatch, tmp_path):
    monkeypatch.setattr(recorder_mod, "privileges", lambda: (True, "root"))
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(HOSTS / "pvm_6_18"))
    res = run(["record", "-o", str(tmp_path / "x.parquet"), "--probes", "functions"])
    assert res.exit_code == 4
    assert "CONFIG_KPROBES" in one_line(res)


def test_record_rejects_bad_input():
    assert run(["record", "-p", "abc", "--ebpf"]).exit_code == 2
    assert run(["record", "-p", "0", "--ebpf"]).exit_code == 2
    assert run(["record"]).exit_code == 2                     # no -o and no --ebpf


def test_doctor_on_a_host_without_kvm_or_tracefs(monkeypatch, tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text("0000000000000000 T _text\n")
    monkeypatch.setattr(doctor_mod, "gather", lambda root="/": gather(tmp_path))
    res = run(["doctor", "--json"])
    assert res.exit_code == 4
    d = json.loads(res.stdout)
    assert d["recording_possible"] is False
    checks = {c["name"]: c for c in d["checks"]}
    assert checks["kvm-backend"]["status"] == "missing" and checks["kvm-backend"]["fix"]
    assert checks["tracefs"]["status"] == "missing" and "mount -t tracefs" in checks["tracefs"]["fix"]


REASON = kvm_tracing_unavailable_reason()


@pytest.mark.live
@pytest.mark.skipif(REASON is not None, reason=f"live BPF on KVM: {REASON}")
def test_doctor_tells_the_truth_about_this_host():
    proc = subprocess.run([sys.executable, "-m", "kvmtrace", "doctor", "--json"],
                          capture_output=True, text=True, timeout=120)
    d = json.loads(proc.stdout)
    checks = {c["name"]: c for c in d["checks"]}
    assert proc.returncode == 0 and d["recording_possible"]
    assert checks["bpf-tracepoint-program"]["status"] == "ok"
    tps = {i["name"]: i for i in checks["kvm-tracepoints"]["items"]}
    assert tps["kvm:kvm_pv_tlb_flush"]["usable"]
    assert "need_flush_tlb@12:u8" in tps["kvm:kvm_pv_tlb_flush"]["fields"]
    facts = gather()
    # What this host is, discovered independently of doctor's own code path:
    if Path("/sys/module/kvm_pvm").is_dir():
        assert d["host"]["kvm_backend"] == "kvm_pvm"
        assert d["host"]["paging"] == "shadow" and d["host"]["exposed"] is True
    kprobe_files = (Path("/sys/bus/event_source/devices/kprobe").exists()
                    or (facts.tracefs.path / "kprobe_events").exists())
    assert (checks["kprobes"]["status"] == "ok") == kprobe_files
    if not kprobe_files and facts.config.get("CONFIG_KPROBES") == "n":
        assert "CONFIG_KPROBES" in checks["kprobes"]["detail"]
    assert checks["fentry"]["status"] in ("ok", "missing") and checks["fentry"]["detail"]
    fns = {i["name"]: i for i in checks["kvm-functions"]["items"]}
    for name, item in fns.items():
        assert (item["status"] in ("present", "clone")) == (facts.kallsyms.has(name)
                                                            or bool(facts.kallsyms.clones_of(name)))


class _FakeProgram:
    """Stands in for the loaded program (loader.Program): the second attach is interrupted
    (Ctrl-C while attaching)."""

    instances: list["_FakeProgram"] = []
    how = "program: fake"

    def __init__(self):
        self.attached: list[str] = []
        self.cleaned = False
        self.maps = types.SimpleNamespace(put=lambda *a: None)
        _FakeProgram.instances.append(self)

    def preload(self, names: list[str]) -> None:
        pass

    def _attach(self, name: str) -> None:
        if len(self.attached) == 1:
            raise KeyboardInterrupt
        self.attached.append(name)

    def attach_raw(self, event: str, fn: str) -> None:
        self._attach(event)

    def attach_tracepoint(self, system: str, event: str, fn: str) -> None:
        self._attach(f"{system}:{event}")

    def close(self) -> None:
        self.cleaned = True


def test_attach_interrupted_half_way_detaches_and_leaves_no_file(monkeypatch, tmp_path):
    monkeypatch.setattr(recorder_mod, "privileges", lambda: (True, "root"))
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(HOSTS / "pvm_6_18"))
    monkeypatch.setattr(recorder_mod, "compile_and_load", lambda *a, **kw: (_FakeProgram(), []))
    monkeypatch.setattr(recorder_mod, "headers", lambda rel, root: (Path("/"), "fake"))
    out = tmp_path / "x.parquet"
    rec = recorder_mod.Recorder(out)
    with pytest.raises(KeyboardInterrupt):
        rec.attach()
    (prog,) = _FakeProgram.instances
    assert prog.attached and prog.cleaned
    assert not out.exists() and not (tmp_path / "x.parquet.part").exists()
    rec.close()                                      # still safe to call


def test_a_full_disk_is_one_clear_error_naming_the_partial_file(monkeypatch, tmp_path):
    # /dev/full fails every write with ENOSPC: put it under the open .part file after its
    # header went out, like a filesystem that filled up mid-recording.
    from kvmtrace.sources.live.records import Columns, lost_frame
    from kvmtrace.schema import TraceMeta
    from kvmtrace.sources.native import TraceFileError, TraceWriter
    monkeypatch.setattr(recorder_mod, "gather", lambda root: gather(HOSTS / "pvm_6_18"))
    out = tmp_path / "x.parquet"
    rec = recorder_mod.Recorder(out)
    rec._writer = TraceWriter(out, TraceMeta(source="recorded"))
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec._writer._raw.fileno())
    os.close(full)
    rec._emit(Columns.of_frame(lost_frame(1, {0: 3})))   # gathered for a compressible chunk ...
    with pytest.raises(TraceFileError) as err:
        rec._write_out(force=True)                   # ... which the full disk refuses
    assert str(err.value) == (f"{out}: cannot write: No space left on device; the chunks "
                              f"written before are readable from {out}.part")


@pytest.mark.parametrize("uid, caps, ok", [
    (0, 1 << 21, True),                       # root with CAP_SYS_ADMIN
    (0, 0, False),                            # root in a container without capabilities
    (1000, (1 << 38) | (1 << 39), True),      # CAP_PERFMON + CAP_BPF without root
    (1000, 1 << 39, False),                   # CAP_BPF alone cannot attach tracing programs
    (0, None, True),                          # no /proc/self/status: the uid decides
    (1000, None, False),
])
def test_privileges_follow_the_effective_capabilities(monkeypatch, uid, caps, ok):
    from kvmtrace.sources.live import bccload
    monkeypatch.setattr(bccload.os, "geteuid", lambda: uid)
    monkeypatch.setattr(bccload, "_effective_caps", lambda: caps)
    got, why = bccload.privileges()
    assert got is ok, why
    if not ok and caps is not None:
        assert "CAP_BPF" in why
