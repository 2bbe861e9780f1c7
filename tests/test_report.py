"""kvmtrace report without a browser: the page's structure, its JSON, its size, and the
--report options of check and watch (the browser tests are in test_report_browser.py)."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from cli_support import FIXTURES, GEN, LAB, run_main


class Page(HTMLParser):
    """Counts what the tests look at, and every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict] = []
        self.findings = 0
        self.loads: list[str] = []
        self.banner: dict = {}
        self._json = False
        self.json_text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "rect" and "mark" in cls:
            self.marks.append(a)
        if tag == "article" and "finding" in cls:
            self.findings += 1
        if tag == "header" and a.get("id") == "banner":
            self.banner = a
        for key in ("src", "href"):
            if a.get(key) and a[key] != "data:,":
                self.loads.append(f"{tag} {key}={a[key]}")
        if tag == "script" and a.get("type") == "application/json":
            self._json = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._json = False

    def handle_data(self, data):
        if self._json:
            self.json_text += data


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text())
    return p


def test_violation_page_structure_matches_analyze(lab_without_sync, tmp_path, capsys):
    out = tmp_path / "r.html"
    code, _, err = run_main(["report", str(lab_without_sync), "-o", str(out)], capsys)
    assert code == 1 and "verdict violation" in err
    _, text, _ = run_main(["analyze", "--json", str(lab_without_sync)], capsys)
    result = json.loads(text)
    page = parse(out)
    assert page.banner["data-verdict"] == "violation"
    assert json.loads(page.json_text)["analysis"] == result
    assert sum(int(m["data-n"]) for m in page.marks) == result["windows"]["total"] == 1
    assert [m["data-verdict"] for m in page.marks] == ["violation"]
    assert page.marks[0]["data-vcpu"] == "1" and page.findings == 1
    assert page.loads == []
    html = out.read_text()
    # Around the finding: vCPU 0's thread made gfn 4 unsync 431 us before vCPU 1's flush.
    around = re.search(r"<table class=\"around\">.*?</table>", html, re.S).group(0)
    assert re.findall(r"<td>(\d+)</td><td>([^<]+)</td>", around) == [
        ("13938", "SP unsync"), ("13939", "flush request (steal-time)")]
    assert "gfn=0x4 role=0x1701 level=1" in around
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)    # no URL but the SVG namespace


def test_big_fixture_stays_small(tmp_path, capsys):
    out = tmp_path / "r.html"
    trace = FIXTURES / "real" / "exercise_4vcpu_3000flushes.parquet"
    code, _, _ = run_main(["report", str(trace), "-o", str(out)], capsys)
    assert code == 0
    assert out.stat().st_size < 500_000
    page = parse(out)
    assert sum(int(m["data-n"]) for m in page.marks) == 3000
    assert len(page.marks) < 3000               # ok windows on one pixel column share a mark
    html = out.read_text()
    latency = re.search(r'<table class="sortable latency".*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr><td>17554</td><td>(\d)</td>((?:<td>\d+</td>)+)</tr>", latency)
    assert [v for v, _ in rows] == ["1", "2", "3"]
    assert [sum(map(int, re.findall(r"\d+", cells))) for _, cells in rows] == [1000] * 3


def test_analyze_prints_the_report_command_on_a_violation(lab_without_sync, capsys):
    code, out, _ = run_main(["analyze", str(lab_without_sync)], capsys)
    assert code == 1
    assert out.splitlines()[-1] == f"see it: kvmtrace report {lab_without_sync} -o kvmtrace-report.html"
    code, out, err = run_main(["analyze", "--json", "--vcpu", "1", str(lab_without_sync)], capsys)
    assert json.loads(out)["verdict"] == "violation"
    assert "kvmtrace report --vcpu 1 " in err
    code, out, err = run_main(["analyze", str(LAB)], capsys)
    assert code == 0 and "kvmtrace report" not in out + err


def test_watch_replay_report(lab_without_sync, tmp_path, capsys):
    out = tmp_path / "w.html"
    code, _, err = run_main(["watch", "--replay", str(lab_without_sync), "--report", str(out)],
                            capsys)
    assert code == 1 and "wrote the report" in err
    page = parse(out)
    data = json.loads(page.json_text)
    assert data["context"] == {"command": "kvmtrace watch", "verdict": "violation"}
    assert [m["data-verdict"] for m in page.marks] == ["violation"]


def test_report_option_checks_its_directory_before_tracing(tmp_path, capsys):
    trace = str(GEN / "tp-violation.jsonl")
    code, _, err = run_main(["check", "--replay", trace, "--report",
                             str(tmp_path / "missing" / "c.html")], capsys)
    assert code == 2 and "does not exist" in err


def test_two_traces_two_strips_and_every_window(tmp_path, capsys):
    a, b = GEN / "tp-violation.jsonl", FIXTURES / "real" / "exercise_2vcpu.parquet"
    out = tmp_path / "r.html"
    code, _, _ = run_main(["report", str(a), str(b), "-o", str(out)], capsys)
    assert code == 1
    _, text, _ = run_main(["analyze", "--json", str(a), str(b)], capsys)
    result = json.loads(text)
    page = parse(out)
    assert sum(int(m["data-n"]) for m in page.marks) == result["windows"]["total"] == 21
    html = out.read_text()
    assert html.count('<svg class="strip"') == 2
    assert [m["data-verdict"] for m in page.marks if "data-verdict" in m] == ["violation"]
    data = json.loads(page.json_text)
    assert [t["trace"] for t in data["traces"]] == [str(a), str(b)]
    assert [t["windows_total"] for t in data["traces"]] == [1, 20]


def test_window_cap_is_said_on_the_page_and_in_the_timeline():
    from kvmtrace.outputs.report_html import page as render_page
    from kvmtrace.outputs.timeline import build
    from kvmtrace.pipeline.visual import collect_paths
    data = collect_paths([FIXTURES / "real" / "exercise_2vcpu.parquet"], max_windows=5)
    t = data.traces[0]
    assert len(t.windows) == 5 and t.windows_total == 20 and t.windows_dropped == {"ok": 15}
    assert data.result.windows["total"] == 20            # the analysis counts them all
    html = render_page(data)
    assert "Only the first 5 of 20 windows are drawn" in html
    marks = re.findall(r'<rect class="mark[^>]*data-n="(\d+)"', html)
    assert sum(map(int, marks)) == 5
    meta = build(data)["metadata"]["kvmtrace"]["traces"][0]
    assert meta["windows"] == 20 and meta["windows_shown"] == 5
    assert meta["windows_left_out_by_verdict"] == {"ok": 15}
