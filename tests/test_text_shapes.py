"""Text traces as people publish them: every shape reads, every event line is accounted for,
damage is counted and never turns into a silent ok (fixtures/shapes/, see fixtures/README.md)."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from kvmtrace.schema import Kind
from kvmtrace.sources.native import TraceFileError
from kvmtrace.sources.stream import load
from kvmtrace.sources.text.text import TextReader

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "fixtures"
SHAPES = FIX / "shapes"
LAB = FIX / "lab_two_vcpu_flush.ftrace.txt"
REAL = FIX / "real" / "exercise_2vcpu.ftrace.txt.gz"

# An event line, counted independently of the importer: a "secs.frac:" timestamp followed
# by an event name and its colon.
EVENT_LINE = re.compile(r"\s\d+\.\d{6,9}:\s+(?:\d+\s+)?[A-Za-z_][\w.$-]*(?::[\w.$-]+)?:(?:\s|$)")


def run(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmtrace", *args], input=stdin,
                          capture_output=True, cwd=REPO, timeout=120)


def event_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines()
               if EVENT_LINE.search(re.sub(r"^(?:> ?)+", "", line)))


@pytest.mark.parametrize("path", sorted(SHAPES.glob("*.txt")), ids=lambda p: p.name)
def test_every_event_line_of_every_shape_is_accounted_for(path):
    reader = TextReader(path)
    reader.open()
    rows = sum(len(c["ts"]) for c, _ in reader.chunks())
    # Lines decoded into rows or ignored (a kind outside the model), and lines skipped.
    skipped_events = sum(1 for r in reader.skips.examples.values() for ln, t in r
                         if EVENT_LINE.search(t))
    assert reader.events_seen + skipped_events == event_lines(path)
    assert rows > 0


def test_trace_cmd_report_without_its_header():
    trace = load(SHAPES / "trace_cmd_no_header.txt")
    assert trace.meta.source_format == "trace-cmd"          # the padded bodies say so
    ev = trace.events
    assert len(ev) == 11 and trace.skipped_lines["total"] == 0
    exits = ev[ev.kind == Kind.GUEST_EXIT]
    assert exits.comm.unique().tolist() == ["qemu-system-x86"] and set(exits.tid) == {31218, 31219}
    assert ev[ev.kind == Kind.MMIO].value.tolist() == [0xFEBF0000]


def test_old_trace_cmd_kvm_plugin_sp_events():
    ev = load(SHAPES / "trace_cmd_plugin_old_sp.txt").events
    gets = ev[ev.kind == Kind.SP_GET]
    # "existing sp gfn 3a22e 1/4 q3 direct --x !pge !nxe root 6 sync"
    assert gets.gfn.tolist() == [0x3A22E, 0x3E8EC] and gets.created.tolist() == [0, 1]
    assert gets.role.iloc[0] == 1 | 3 << 5 | 1 << 7 | 1 << 8          # no efer_nx: "!nxe"
    assert gets.root_count.iloc[0] == 6
    others = ev[ev.kind.isin([Kind.SP_UNSYNC, Kind.SP_SYNC, Kind.SP_ZAP])]
    assert (others.gfn == -1).all()                       # the plugin prints no gfn there


def test_old_plugin_sp_without_gfn_is_never_ok(capsys):
    proc = run("analyze", str(SHAPES / "trace_cmd_plugin_old_sp.txt"))
    assert proc.returncode in (3,), proc.stdout


def test_mail_quotes_and_wrapped_lines():
    trace = load(SHAPES / "mail_quoted_wrapped.txt")
    ev = trace.events
    flush = ev[ev.kind == Kind.FLUSH_REQUEST_PV]
    assert flush.need_flush.tolist() == [1] and flush.vcpu.tolist() == [2]   # joined back
    assert ev[ev.kind == Kind.SP_GET].gfn.tolist() == [0x7A]
    assert ev[ev.kind == Kind.SP_UNSYNC].unsync.tolist() == [1]
    skipped = trace.skipped_lines
    assert skipped["total"] == 3 and skipped["decisive"] == 0       # the prose around it


def test_perf_script_without_comm_or_tid():
    no_comm = load(SHAPES / "perf_script_no_comm.txt").events
    assert set(no_comm.tid) == {-1} and set(no_comm.cpu) == {1}
    assert no_comm[no_comm.kind == Kind.GUEST_ENTRY].value.tolist() == [0x100146, 0x10014A]
    comm_time = load(SHAPES / "perf_script_comm_time.txt").events
    assert set(comm_time.comm) == {"preempt_test"} and set(comm_time.cpu) == {-1}
    assert comm_time.ts.iloc[1] == 20677_199579_000


def test_perf_prof_date_prefixed_lines():
    ev = load(SHAPES / "perf_prof_trace.txt").events
    assert set(ev.tid) == {126953} and ev.cpu.tolist()[:2] == [78, 74]
    assert ev.ts.iloc[0] == 96822671_255015_000


def test_grep_separators_and_other_lines():
    trace = load(SHAPES / "grep_context.txt")
    assert len(trace.events) == 5
    assert trace.skipped_lines["by_reason"][0]["examples"][0]["text"] == "Binary file trace matches"


def test_shadow_paging_without_kvmmmu_is_not_a_silent_no_flushes():
    proc = run("analyze", "--json", str(SHAPES / "shadow_no_kvmmmu.txt"))
    out = json.loads(proc.stdout)
    assert proc.returncode == 3 and out["verdict"] == "inconclusive"
    assert any("shadow paging" in n and "kvmmmu" in n for n in out["notes"])


# ----------------------------------------------------------------------------- compression, stdin

@pytest.mark.parametrize("codec", ["gzip", "xz", "bz2", "zstd"])
def test_compressed_text_is_read_transparently(tmp_path, codec):
    data = LAB.read_bytes()
    path = tmp_path / f"lab.txt.{codec}"
    if codec == "gzip":
        path.write_bytes(gzip.compress(data))
    elif codec == "xz":
        path.write_bytes(lzma.compress(data))
    elif codec == "bz2":
        path.write_bytes(bz2.compress(data))
    else:
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(data)
    assert load(path).events.equals(load(LAB).events)


def test_standard_input_as_dash():
    piped = run("analyze", "--json", "-", stdin=LAB.read_bytes())
    direct = run("analyze", "--json", str(LAB))
    assert piped.returncode == direct.returncode == 0
    a, b = json.loads(piped.stdout), json.loads(direct.stdout)
    assert a["windows"] == b["windows"] and a["verdict"] == b["verdict"] == "ok"
    gz = run("show", "--json", "-", stdin=gzip.compress(LAB.read_bytes()))
    assert gz.returncode == 0 and json.loads(gz.stdout)["events"] == 126


def test_a_fifo_by_name_is_refused_not_blocked_on(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = run("analyze", str(fifo))
    assert proc.returncode == 2 and b"fifo" in proc.stderr.lower() and len(proc.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------- damage

def _real_lines() -> list[str]:
    return gzip.decompress(REAL.read_bytes()).decode().splitlines()


def test_joined_lines_are_detected_counted_and_never_ok(tmp_path):
    lines = _real_lines()
    first = next(i for i, l in enumerate(lines) if not l.startswith("#"))
    joined = lines[:first + 10] + ["".join(lines[first + 10:first + 1012])] + lines[first + 1012:]
    path = tmp_path / "joined.txt"
    path.write_text("\n".join(joined) + "\n")
    trace = load(path)
    assert trace.skipped_lines["total"] == 1 and trace.skipped_lines["decisive"] == 1
    proc = run("analyze", "--json", str(path))
    out = json.loads(proc.stdout)
    assert proc.returncode == 3 and out["verdict"] == "inconclusive" and out["windows"]["ok"] == 0
    assert out["skipped_lines"]["total"] == 1
    # Two events on one line (short enough to parse): the first is not believed either.
    two = lines[:first + 10] + [lines[first + 10] + lines[first + 11]] + lines[first + 12:]
    path.write_text("\n".join(two) + "\n")
    reasons = load(path).skipped_lines["by_reason"]
    assert "joined lines" in reasons[0]["reason"]


@pytest.mark.parametrize("spaces", [400, 800, 1600, 3000, 100_000])
def test_whitespace_lines_do_not_hang(tmp_path, spaces):
    path = tmp_path / "ws.txt"
    body = LAB.read_text()
    path.write_text(" " * spaces + "\n" + " " * spaces + "x\n" + body + " " * spaces + "1.5:\n")
    start = time.process_time()
    trace = load(path)
    assert time.process_time() - start < 5          # a hang guard, not a speed goal
    assert len(trace.events) == len(load(LAB).events)
    assert trace.skipped_lines["total"] == 2


def test_a_first_line_of_spaces_does_not_hang_sniffing(tmp_path):
    path = tmp_path / "sp.txt"
    path.write_text(" " * 3000 + "\n")
    start = time.process_time()
    with pytest.raises(TraceFileError, match="not a recognised trace"):
        load(path)
    assert time.process_time() - start < 5


@pytest.mark.parametrize("block", [1 << 20, 4096])
def test_errors_name_the_right_line(tmp_path, block):
    lines = LAB.read_text().splitlines()
    bad = 101
    lines[bad - 1] = "   pvmvcpu1-13939   [000] .....  2252.595555: kvm_pv_tlb_flush: vcpu one"
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    reader = TextReader(path, strict=True, block_bytes=block)
    reader.open()
    with pytest.raises(TraceFileError, match=rf"line {bad}: cannot decode"):
        list(reader.chunks())
    trace = load(path)
    assert trace.skipped_lines["by_reason"][0]["examples"][0]["line"] == bad


def test_skipped_model_event_makes_the_verdict_inconclusive(tmp_path):
    lines = LAB.read_text().splitlines(keepends=True)
    i = next(n for n, l in enumerate(lines) if "kvm_mmu_sync_page" in l)
    lines[i] = lines[i].replace("l1 8-byte", "l1 8-bite")
    path = tmp_path / "damaged.txt"
    path.write_text("".join(lines))
    proc = run("analyze", "--json", str(path))
    out = json.loads(proc.stdout)
    assert proc.returncode == 3 and out["verdict"] == "inconclusive"
    assert out["skipped_lines"]["decisive"] == 1
    assert out["skipped_lines"]["by_reason"][0]["examples"][0]["line"] == i + 1
    strict = run("analyze", "--strict", "--json", str(path))
    assert strict.returncode == 2 and f"line {i + 1}" in json.loads(strict.stdout)["error"]


@pytest.mark.parametrize("args", [["/nonexistent/x.txt"], ["-"]], ids=["missing", "empty-stdin"])
def test_analyze_json_prints_one_object_on_bad_input(args):
    proc = run("analyze", "--json", *args, stdin=b"")
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert set(out) == {"error", "verdict"} and out["verdict"] is None
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_vms_lists_every_vm_that_had_events(tmp_path):
    text = ("# tracer: nop\n"
            "  CPU 0/KVM-101   (    100) [000] .....   5.000100: kvm_pv_tlb_flush: vcpu 0 need_flush_tlb true\n"
            "  CPU 0/KVM-101   (    100) [000] .....   5.000110: kvm_mmu_sync_page: sp gen 0 gfn 4 l1 8-byte q0 wux nxe ad root 0 unsync\n"
            "  CPU 0/KVM-101   (    100) [000] .....   5.000120: kvm_entry: vcpu 0, rip 0x1000\n"
            "  CPU 0/KVM-201   (    200) [001] .....   5.000130: kvm_entry: vcpu 0, rip 0x2000\n"
            "  CPU 0/KVM-201   (    200) [001] .....   5.000140: kvm_exit: vcpu 0 reason HLT rip 0x2002 info1 0x0 info2 0x0 intr_info 0x00000000 error_code 0x00000000\n")
    path = tmp_path / "two_vms.txt"
    path.write_text(text)
    out = json.loads(run("analyze", "--json", str(path)).stdout)
    assert [vm["tgid"] for vm in out["vms"]] == [100, 200]
    assert out["vms"][1]["verdict"] == "no-flushes"
