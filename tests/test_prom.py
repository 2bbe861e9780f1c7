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
