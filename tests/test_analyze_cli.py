"""`kvmtrace analyze`: verdicts, JSON, exit codes and bad input, on real and built traces."""
import json
from pathlib import Path

import pytest

from kvmtrace.exitcodes import for_verdict
from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.sources.stream import load
from kvmtrace.schema import TraceMeta
from kvmtrace.sources.native import write_trace

from cli_support import FIXTURES, LAB, run_main
from model_scenarios import flush_with_sync, flush_without_sync

WINDOW_KEYS = {"total", "meaningful", "ok", "violation", "suspect", "inconclusive", "open"}


# ----------------------------------------------------------------------------- the real capture

def test_real_capture_is_ok_with_a_meaningful_sync_in_place_window(capsys):
    code, out, _ = run_main(["analyze", "--json", str(LAB)], capsys)
    doc = json.loads(out)
    assert code == 0
    assert doc["verdict"] == "ok" and doc["pattern"] == "sync-in-place"
    assert doc["windows"]["meaningful"] >= 1 and doc["windows"]["violation"] == 0
    assert set(doc["windows"]) >= WINDOW_KEYS


def test_real_capture_without_its_sync_page_is_a_violation_on_vcpu1_gfn4(lab_without_sync, capsys):
    code, out, _ = run_main(["analyze", "--json", str(lab_without_sync)], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["verdict"] == "violation"
    finding = doc["findings"][0]
    assert finding["vcpu"] == 1 and finding["verdict"] == "violation"
    assert [o["gfn"] for o in finding["outstanding"]] == [4]
    assert set(finding) >= {"ts", "tgid", "vcpu", "verdict", "reason", "outstanding", "events"}
    assert any(e["event"] == "flush_request_pv" for e in finding["events"])


def test_human_report_names_time_vm_vcpu_and_page(lab_without_sync, capsys):
    code, out, _ = run_main(["analyze", str(lab_without_sync)], capsys)
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith("verdict: VIOLATION")
    assert "vCPU 1" in out and "gfn 0x4" in out and "2252.596626" in out
    assert "flush->sync" in out


def test_real_capture_replays_the_same_from_parquet(tmp_path):
    trace = load(LAB)
    pq = tmp_path / "lab.parquet"
    write_trace(pq, trace.events, trace.meta)
    a, b = analyze_path(LAB).to_dict(), analyze_path(pq).to_dict()
    for key in ("verdict", "pattern", "windows", "findings"):
        assert a[key] == b[key]


# ----------------------------------------------------------------------------- options

def test_json_shape_and_per_vcpu_rows(tmp_path, capsys):
    path = tmp_path / "v.jsonl"
    write_trace(path, flush_without_sync().frame(), TraceMeta(source="generated"))
    code, out, _ = run_main(["analyze", "--json", str(path)], capsys)
    doc = json.loads(out)
    assert code == 1
    assert set(doc) >= {"verdict", "pattern", "windows", "vms", "findings", "lost_events"}
    vm = doc["vms"][0]
    assert vm["tgid"] == 1 and vm["verdict"] == "violation"
    assert set(vm["windows"]) == WINDOW_KEYS
    assert vm["vcpus"][0]["vcpu"] == 1 and vm["vcpus"][0]["windows"]["violation"] == 1


def test_several_traces_and_filters(tmp_path, capsys):
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    write_trace(bad, flush_without_sync().frame(), TraceMeta())
    write_trace(good, flush_with_sync().frame(), TraceMeta())
    code, out, _ = run_main(["analyze", "--json", str(good), str(bad)], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["windows"]["total"] == 2
    assert {vm["trace"] for vm in doc["vms"]} == {str(good), str(bad)}
    code, out, _ = run_main(["analyze", "--json", "--vcpu", "0", str(bad)], capsys)
    assert code == 0 and json.loads(out)["verdict"] == "no-flushes"
    # Filters that select nothing are refused, naming what exists (issue 14).
    code, out, err = run_main(["analyze", "--json", "--vm", "2", str(bad)], capsys)
    assert code == 2 and f"no VM 2 in {bad}; VMs: 1" in err
    code, _, _ = run_main(["analyze", "--vm", "1", str(good)], capsys)
    assert code == 0


def test_lost_events_inside_the_window_exit_3(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    rows = flush_without_sync()
    rows.rows.insert(-1, {"ts": rows.rows[-1]["ts"] - 5, "kind": 0, "value": 3})
    write_trace(path, rows.frame(), TraceMeta())
    code, out, _ = run_main(["analyze", "--json", str(path)], capsys)
    assert code == 3 and json.loads(out)["verdict"] == "inconclusive"


# ----------------------------------------------------------------------------- bad input

def test_missing_file_is_one_line_exit_2(capsys):
    code, out, err = run_main(["analyze", "/nonexistent/trace.parquet"], capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "/nonexistent/trace.parquet" in err


def test_unknown_event_kind_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    write_trace(path, flush_with_sync().frame(), TraceMeta())
    text = path.read_text().replace('"kind":"sp_sync"', '"kind":"sp_teleport"', 1)
    path.write_text(text)
    code, out, err = run_main(["analyze", str(path)], capsys)
    assert code == 2 and "verdict" not in out
    assert "sp_teleport" in err and err.strip().count("\n") == 0


def test_truncated_parquet_is_exit_2(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    write_trace(path, flush_with_sync().frame(), TraceMeta())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out, err = run_main(["analyze", str(path)], capsys)
    assert code == 2 and "verdict" not in out and str(path) in err


@pytest.mark.parametrize("name,text", [
    ("header_only.txt", "# tracer: nop\n#\n# entries-in-buffer/entries-written: 0/0   #P:2\n#\n"),
    ("foreign_only.txt", "# tracer: nop\n"
                         "           bash-100   [000] .....    10.000001: sched_switch: prev_comm=bash\n"
                         "           bash-100   [000] .....    10.000002: sched_switch: prev_comm=sh\n"),
])
def test_text_trace_without_any_model_event_is_exit_2(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run_main(["analyze", "--json", str(path)], capsys)
    # --json: still one JSON object on stdout, and the one line on stderr.
    assert code == 2 and err.strip().count("\n") == 0
    assert str(path) in err and "no events to analyse" in err
    assert json.loads(out) == {"error": err.strip().removeprefix("kvmtrace: "), "verdict": None}
    code, out, err = run_main(["analyze", str(path)], capsys)
    assert code == 2 and out == "" and "no events to analyse" in err


def test_native_trace_without_events_is_exit_2(tmp_path, capsys):
    for name in ("empty.jsonl", "empty.parquet"):
        path = tmp_path / name
        write_trace(path, flush_with_sync().frame().iloc[:0], TraceMeta())
        code, out, err = run_main(["analyze", str(path)], capsys)
        assert code == 2 and out == "" and str(path) in err and "no events" in err


def test_plugin_printed_sp_events_without_gfn_are_never_ok(capsys):
    # One real capture printed two ways: libtraceevent's kvm plugin drops the SP gfn (the
    # model cannot tell shadow pages apart), `trace-cmd report -R` keeps it.
    code, out, _ = run_main(["analyze", "--json", str(FIXTURES / "text" / "trace_cmd_report.txt")],
                            capsys)
    doc = json.loads(out)
    assert code == 3 and doc["verdict"] == "inconclusive" and doc["windows"]["ok"] == 0
    assert any("trace-cmd report -R" in n for n in doc["notes"])
    code, out, _ = run_main(["analyze", "--json",
                             str(FIXTURES / "text" / "trace_cmd_report_raw.txt")], capsys)
    assert code == 0 and json.loads(out)["verdict"] == "ok"


def test_losses_in_a_trace_without_windows_are_not_no_flushes(tmp_path, capsys):
    quiet, lossy = tmp_path / "quiet.jsonl", tmp_path / "lossy.jsonl"
    base = flush_with_sync()
    base.rows = base.rows[:-3]                  # up to before the flush request
    write_trace(quiet, base.frame(), TraceMeta())
    base.lost(7)
    write_trace(lossy, base.frame(), TraceMeta())
    code, out, _ = run_main(["analyze", "--json", str(quiet)], capsys)
    assert code == 0 and json.loads(out)["verdict"] == "no-flushes"
    code, out, _ = run_main(["analyze", "--json", str(lossy)], capsys)
    doc = json.loads(out)
    assert code == 3 and doc["verdict"] == "inconclusive" and doc["lost_events"] == 7
    code, out, _ = run_main(["analyze", "--json", str(quiet), str(lossy)], capsys)
    assert code == 3 and json.loads(out)["verdict"] == "inconclusive"


def test_no_trace_argument_is_a_usage_error(capsys):
    code, _, _ = run_main(["analyze"], capsys)
    assert code == 2


# ----------------------------------------------------------------------------- larger real runs

REAL = FIXTURES / "real"


def _real(name: str) -> Path:
    path = REAL / name
    assert path.is_file(), f"{path}: a shipped fixture is missing"
    return path


def test_real_stress_run_is_ok_in_both_recordings():
    for name in ("exercise_4vcpu_stress.ftrace.txt.gz", "exercise_4vcpu_stress.parquet"):
        res = analyze_path(_real(name))
        assert res.verdict == "ok" and res.pattern == "sync-in-place", name
        assert res.windows["total"] == res.windows["meaningful"] == res.windows["ok"] == 1200


def test_real_stress_run_without_sync_pages_is_1200_violations(tmp_path):
    import gzip
    text = gzip.decompress(_real("exercise_4vcpu_stress.ftrace.txt.gz").read_bytes()).decode()
    # As a kernel that never syncs would record it: no kvm_mmu_sync_page, and no second
    # kvm_mmu_unsync_page for an SP that stayed unsync (arch/x86/kvm/mmu/mmu.c,
    # mmu_try_to_unsync_pages: "if (sp->unsync) continue;" before kvm_unsync_page()).
    kept, unsync = [], set()
    for line in text.splitlines(keepends=True):
        if "kvm_mmu_sync_page" in line:
            continue
        if "kvm_mmu_unsync_page:" in line:
            sp = line.split("kvm_mmu_unsync_page:", 1)[1].split(" root ")[0]
            if sp in unsync:
                continue
            unsync.add(sp)
        kept.append(line)
    path = tmp_path / "stress_no_sync.txt"
    path.write_text("".join(kept))
    res = analyze_path(path)
    assert res.verdict == "violation" and res.windows["violation"] == 1200
    assert all(o["reachable"] for f in res.findings for o in f["outstanding"])


def test_real_control_run_without_flushes_is_no_flushes():
    res = analyze_path(_real("exercise_2vcpu_noflush.parquet"))
    assert res.verdict == "no-flushes" and for_verdict(res.verdict) == 0


def test_per_event_reference_agrees_on_real_captures():
    from kvmtrace.analysis import Replayer
    for path in (LAB, _real("exercise_4vcpu_stress.ftrace.txt.gz")):
        trace = load(path)
        fast, ref = Replayer(trace.meta), Replayer(trace.meta, per_event=True)
        fast.feed(trace.events)
        ref.feed(trace.events)
        assert fast.finish().to_dict() == ref.finish().to_dict(), path
