"""The Prometheus textfile: it parses, and it is replaced atomically."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kvmtrace.outputs.prom import render_metrics, write_atomically


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_carry_the_verdict() -> None:
    text = render_metrics("fail", {"ok": 3, "violation": 2, "meaningful": 5}, stale_reads=1,
                          timestamp=1700000000.5, labels={"host": 'a"b'})
    samples = _samples(text)
    host = ("host", 'a"b')
    assert samples[("kvmtrace_check_verdict", (host, ("verdict", "fail")))] == 1
    assert samples[("kvmtrace_check_verdict", (host, ("verdict", "pass")))] == 0
    assert samples[("kvmtrace_check_windows", (host, ("verdict", "violation")))] == 2
    assert samples[("kvmtrace_check_violations", (host,))] == 2
    assert samples[("kvmtrace_check_meaningful_windows", (host,))] == 5
    assert samples[("kvmtrace_check_stale_reads", (host,))] == 1
    assert samples[("kvmtrace_check_last_run_timestamp_seconds", (host,))] == 1700000000.5


def test_replacement_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "kvmtrace.prom"
    texts = [render_metrics(v, {"ok": i}, 0, float(i)) for i, v in
             enumerate(["pass", "fail", "inconclusive", "not-exposed"] * 25)]
    write_atomically(path, texts[0])
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(path.read_text())

    t = threading.Thread(target=reader)
    t.start()
    for text in texts:
        write_atomically(path, text)
    stop.set()
    t.join()
    assert seen, "the reader never ran"
    assert all(s in texts for s in seen), "a reader saw a partially written file"
    assert path.read_text() == texts[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["kvmtrace.prom"], "temporary files left behind"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


# ------------------------------------------------- textfile-collector conventions, strictly

import shutil
import subprocess

import pytest

from prom_lint import lint, samples
from kvmtrace.outputs.prom import VERDICTS, Measured

GOOD = ('# HELP kvmtrace_x An x.\n# TYPE kvmtrace_x gauge\nkvmtrace_x{a="1"} 1\n'
        'kvmtrace_x{a="2"} 2.5\n')


@pytest.mark.parametrize("bad, problem", [
    (GOOD.replace(" 2.5\n", " 2.5 1700000000000\n"), "timestamp"),
    (GOOD.replace("# TYPE kvmtrace_x gauge\n", ""), "without a TYPE"),
    (GOOD.replace("kvmtrace_x", "node_x"), "prefix"),
    (GOOD.replace("kvmtrace_x", "kvmtrace_x_ms"), "base unit"),
    (GOOD.replace("kvmtrace_x", "kvmtrace_x_total"), "_total is for counters"),
    (GOOD.replace('a="2"', 'a="1"'), "twice"),
    (GOOD.replace('a="2"', 'a="2\\t"'), "bad escape"),
    (GOOD.replace('a="2"', 'a="2'), "label a"),
    (GOOD[:-1], "newline"),
    (GOOD + "# HELP kvmtrace_x Again.\n", "after its samples"),
    (GOOD + '# HELP kvmtrace_y A y.\n# TYPE kvmtrace_y gauge\nkvmtrace_y 1\nkvmtrace_x{a="3"} 1\n',
     "not contiguous"),
    (GOOD.replace(" 2.5\n", " two\n"), "not a number"),
    (GOOD + "\n", "blank"),
    (GOOD.replace("gauge", "gauges"), "unknown type"),
])
def test_the_checker_catches_what_the_collector_rejects(bad: str, problem: str) -> None:
    assert lint(GOOD) == []
    found = lint(bad)
    assert found and problem in found[0], found


def _all_runs() -> dict[str, str]:
    """One rendering per verdict, with and without the guest's figures."""
    runs = {v: render_metrics(v, {"ok": 3, "violation": int(v == "fail"), "meaningful": 4},
                              stale_reads=0, timestamp=1700000000.25, reason=f"why {v}\n\"q\"",
                              exit_code=0, measured=Measured(events=9, lost_events=2,
                                                             duration_seconds=1.5))
            for v in VERDICTS}
    runs["exercise"] = render_metrics("pass", {"ok": 1}, 0, 1.0, labels={"site": "x"},
                                      measured=Measured(guest_flushes_requested=300))
    return runs


@pytest.mark.parametrize("name", list(_all_runs()))
def test_every_rendering_passes_the_strict_checker_and_prometheus_client(name: str) -> None:
    text = _all_runs()[name]
    assert lint(text) == []
    strict = samples(text)
    assert _samples(text) == {(k, v): x for (k, v), x in strict.items()}   # same reading
    one_hot = [dict(labels)["verdict"] for (n, labels), v in strict.items()
               if n == "kvmtrace_check_verdict" and v == 1]
    assert one_hot == [name if name in VERDICTS else "pass"]
    assert sum(v for (n, _), v in strict.items() if n == "kvmtrace_check_verdict") == 1


def test_base_units_and_the_run_time_are_values_not_timestamps() -> None:
    s = samples(_all_runs()["pass"])
    assert s[("kvmtrace_check_duration_seconds", ())] == 1.5
    assert s[("kvmtrace_check_lost_events", ())] == 2
    assert s[("kvmtrace_check_events", ())] == 9
    assert s[("kvmtrace_check_last_run_timestamp_seconds", ())] == 1700000000.25
    assert ("kvmtrace_check_guest_flushes_requested", ()) not in s       # no guest ran
    assert samples(_all_runs()["exercise"])[
        ("kvmtrace_check_guest_flushes_requested", (("site", "x"),))] == 300


def test_an_error_run_exports_no_measurement() -> None:
    """A check that could not judge must not look like one that saw zero violations."""
    names = {n for n, _ in samples(_all_runs()["error"])}
    assert names == {"kvmtrace_check_verdict", "kvmtrace_check_last_run_timestamp_seconds",
                     "kvmtrace_check_info"}
    judged = {n for n, _ in samples(_all_runs()["inconclusive"])}
    assert {"kvmtrace_check_violations", "kvmtrace_check_windows",
            "kvmtrace_check_lost_events"} <= judged


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None,
                    reason="promtool is not installed (.ci/install-deploy-tools.sh installs it)")
@pytest.mark.parametrize("name", ["pass", "error", "exercise"])
def test_promtool_check_metrics_accepts_the_file(name: str) -> None:
    """promtool's own linter (Debian's prometheus package; .ci/install-deploy-tools.sh)."""
    promtool = str(PROMTOOL)
    proc = subprocess.run([promtool, "check", "metrics"], input=_all_runs()[name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    bad = subprocess.run([promtool, "check", "metrics"], capture_output=True, text=True,
                         input="# HELP x_ms An x.\n# TYPE x_ms counter\nx_ms 1\n", timeout=60)
    assert bad.returncode != 0          # the linter does lint


def test_check_writes_a_clean_file_with_what_the_json_says(tmp_path: Path, capsys) -> None:
    import json

    from cli_support import REAL, run_main
    prom = tmp_path / "kvmtrace.prom"
    code, out, _ = run_main(["check", "--replay", str(REAL), "--json", "--prom", str(prom)],
                            capsys)
    d = json.loads(out)
    assert code == d["exit_code"] == 0
    text = prom.read_text()
    assert lint(text) == []
    s = samples(text)
    assert s[("kvmtrace_check_verdict", (("verdict", d["verdict"]),))] == 1
    assert s[("kvmtrace_check_events", ())] == d["events"] > 0
    assert s[("kvmtrace_check_lost_events", ())] == d["lost_events"]
    assert s[("kvmtrace_check_duration_seconds", ())] == pytest.approx(d["duration_s"], abs=1e-3)
    assert s[("kvmtrace_check_windows", (("verdict", "ok"),))] == d["windows"]["ok"] > 0
