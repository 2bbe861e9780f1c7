"""kvmtrace report in a real headless browser (Debian's chromium driven by Playwright).

Skips with the reason where chromium or Playwright is absent; .ci/install-browser.sh
installs chromium and the test extra installs Playwright, so they run in CI.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_support import launcher, unavailable
from cli_support import FIXTURES, GEN, LAB, run_main

WHY = unavailable()
README_SHOT_HEIGHT = 1250           # docs/report.png: the top of the page
pytestmark = pytest.mark.skipif(bool(WHY), reason=WHY or "browser available")

NOSYNC = FIXTURES / "lab_two_vcpu_flush_nosync.ftrace.txt"
SHIPPED = sorted(GEN.glob("*.jsonl")) + sorted((FIXTURES / "flushpaths").glob("*.txt")) + [
    LAB, NOSYNC, FIXTURES / "real" / "exercise_2vcpu.parquet",
    FIXTURES / "real" / "exercise_2vcpu_noflush.parquet",
    FIXTURES / "real" / "exercise_4vcpu_stress.parquet",
    FIXTURES / "real" / "exercise_4vcpu_3000flushes.parquet",
    FIXTURES / "real" / "exercise_3space.parquet",
    FIXTURES / "real" / "exercise_3space_nosync.parquet"]


@pytest.fixture(scope="module")
def chromiums():
    with launcher() as lau:
        yield lau


@pytest.fixture(scope="module")
def chromium(chromiums):
    return chromiums.browser()


def report(tmp_path: Path, capsys, trace: Path, name: str = "r.html") -> tuple[Path, dict]:
    """Make the report; return it with `analyze --json` of the same trace."""
    out = tmp_path / name
    code, _, err = run_main(["report", str(trace), "-o", str(out)], capsys)
    assert out.exists(), err
    _, text, _ = run_main(["analyze", "--json", str(trace)], capsys)
    result = json.loads(text)
    from kvmtrace.exitcodes import for_verdict
    assert code == for_verdict(result["verdict"])
    return out, result


def page_facts(page) -> dict:
    return page.evaluate("""() => {
      const marks = Array.from(document.querySelectorAll('rect.mark'));
      return {
        banner: document.querySelector('#verdict').textContent.trim(),
        bannerVerdict: document.querySelector('#banner').dataset.verdict,
        embedded: JSON.parse(document.getElementById('kvmtrace-data').textContent),
        windows: marks.reduce((n, m) => n + Number(m.dataset.n), 0),
        findings: document.querySelectorAll('article.finding').length,
        rows: document.querySelectorAll('#vcpu-table tbody tr').length,
        hists: document.querySelectorAll('svg.hist').length,
      };
    }""")


def assert_clean(log) -> None:
    assert log.console_errors == [] and log.page_errors == []
    assert log.requests == [] and log.blocked == 0


def test_violation_report_shows_the_window_in_red_on_vcpu1_at_its_time(
        chromium, lab_without_sync, tmp_path, capsys):
    assert NOSYNC.read_text() == lab_without_sync.read_text()    # the shipped violation fixture
    html, result = report(tmp_path, capsys, NOSYNC)
    assert result["verdict"] == "violation"
    page, log = chromium.open(html)
    facts = page_facts(page)
    assert facts["banner"] == "VIOLATION" == result["verdict"].upper()
    assert facts["embedded"]["analysis"] == result          # the page's JSON is analyze --json
    assert facts["windows"] == result["windows"]["total"] == 1
    assert facts["findings"] == len(result["findings"]) == 1
    red = page.locator("rect.mark.v-violation")
    assert red.count() == 1
    fill = red.evaluate("el => getComputedStyle(el).fill")
    assert fill == "rgb(214, 39, 40)"
    finding = result["findings"][0]
    assert red.get_attribute("data-ts") == str(finding["ts"]) and finding["vcpu"] == 1
    # Right vCPU: the mark lies inside the lane of the row labelled vCPU 1.
    lane = page.locator('g.row[data-vcpu="1"] rect.lane').bounding_box()
    box = red.bounding_box()
    assert lane["y"] <= box["y"] and box["y"] + box["height"] <= lane["y"] + lane["height"]
    assert page.locator('g.row[data-vcpu="1"] text').text_content() == "VM 0 vCPU 1"
    # Right time: x is where the flush request (2252.596626 s) falls on the axis.
    svg = page.locator("svg.strip")
    start, end = int(svg.get_attribute("data-start-ns")), int(svg.get_attribute("data-end-ns"))
    left, width = float(svg.get_attribute("data-left")), float(svg.get_attribute("data-plot-width"))
    assert start == 2252595347000 and end == 2252608669000
    want_x = left + (2252596626000 - start) / (end - start) * width
    assert float(red.get_attribute("x")) == pytest.approx(want_x, abs=0.01)
    assert page.locator("#finding-1 h3").inner_text().startswith("VIOLATION at +1.279 ms")
    assert "0x4" in page.locator("#finding-1 table.sps").inner_text()
    shot = tmp_path / "violation.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean(log)
    page.close()


@pytest.mark.parametrize("trace", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_fixture_renders_with_counts_that_match_analyze(
        chromium, trace, tmp_path, capsys):
    html, result = report(tmp_path, capsys, trace)
    assert html.stat().st_size < 500_000                    # well under 1 MB
    page, log = chromium.open(html)
    facts = page_facts(page)
    assert facts["banner"] == result["verdict"].upper() == facts["bannerVerdict"].upper()
    assert facts["embedded"]["analysis"]["windows"] == result["windows"]
    assert facts["windows"] == result["windows"]["total"]
    assert facts["findings"] == len(result["findings"])
    assert facts["rows"] == sum(len(vm["vcpus"]) for vm in result["vms"])
    # Every violation is red, on its vCPU's row, at its time.
    found = {(f["ts"], f["vcpu"]) for f in result["findings"] if f["verdict"] == "violation"}
    red = page.locator("rect.mark.v-violation")
    assert red.count() == result["windows"]["violation"]
    for i in range(red.count()):
        mark = red.nth(i)
        ts, vcpu = int(mark.get_attribute("data-ts")), int(mark.get_attribute("data-vcpu"))
        assert (ts, vcpu) in found
        assert mark.evaluate("el => getComputedStyle(el).fill") == "rgb(214, 39, 40)"
        lane = page.locator(f'g.row[data-vcpu="{vcpu}"] rect.lane').bounding_box()
        box = mark.bounding_box()
        assert lane["y"] <= box["y"] and box["y"] + box["height"] <= lane["y"] + lane["height"]
        svg = mark.locator("xpath=ancestor::*[local-name()='svg'][1]")
        start, end = (int(svg.get_attribute(a)) for a in ("data-start-ns", "data-end-ns"))
        want = float(svg.get_attribute("data-left")) + (ts - start) / max(end - start, 1) * \
            float(svg.get_attribute("data-plot-width"))
        assert float(mark.get_attribute("x")) == pytest.approx(want, abs=0.01)
    assert_clean(log)
    page.close()


def test_the_page_reads_the_same_with_javascript_off(chromiums, lab_without_sync, tmp_path,
                                                     capsys):
    html, result = report(tmp_path, capsys, lab_without_sync)
    page, log = chromiums.browser(javascript=False).open(html)
    assert page.locator("#verdict").inner_text() == "VIOLATION"
    marks = page.locator("rect.mark")
    assert sum(int(marks.nth(i).get_attribute("data-n")) for i in range(marks.count())) == 1
    assert page.locator("article.finding").count() == 1
    assert page.locator("#filters input").count() == 0     # controls come only with JS
    page.screenshot(path=str(tmp_path / "nojs.png"))
    assert_clean(log)
    page.close()


def test_sorting_and_filtering_work_with_javascript(chromium, tmp_path, capsys):
    trace = FIXTURES / "real" / "exercise_4vcpu_3000flushes.parquet"
    html, result = report(tmp_path, capsys, trace)
    page, log = chromium.open(html)
    total = page.locator("#vcpu-table thead th", has_text="total").first
    total.click()
    first = [int(x) for x in page.locator("#vcpu-table tbody tr td:nth-child(5)").all_inner_texts()]
    assert first == sorted(first)
    total.click()
    again = [int(x) for x in page.locator("#vcpu-table tbody tr td:nth-child(5)").all_inner_texts()]
    assert again == sorted(first, reverse=True)
    assert page.locator("rect.mark.v-ok").first.is_visible()
    page.locator("rect.mark").first.hover()
    assert "ok window" in page.locator("rect.mark title").first.text_content()
    page.locator('#filters input[data-verdict="ok"]').uncheck()
    assert page.locator("rect.mark.v-ok.hidden").count() == page.locator("rect.mark.v-ok").count()
    assert not page.locator("rect.mark.v-ok").first.is_visible()
    assert_clean(log)
    page.close()


def test_check_replay_writes_the_same_page_for_what_it_saw(chromium, tmp_path, capsys):
    out = tmp_path / "check.html"
    trace = FIXTURES / "real" / "exercise_2vcpu.parquet"
    code, text, err = run_main(["check", "--replay", str(trace), "--json", "--report", str(out)],
                               capsys)
    check = json.loads(text)
    assert code == 0 and check["verdict"] == "pass"
    page, log = chromium.open(out)
    facts = page_facts(page)
    assert facts["embedded"]["context"]["verdict"] == "pass"
    assert "kvmtrace check: PASS" in page.locator("#context").inner_text()
    assert facts["windows"] == check["windows"]["total"] == 20
    assert_clean(log)
    page.close()


def test_readme_screenshot_is_made_by_this_helper_from_the_shipped_fixture(chromium, tmp_path,
                                                                          capsys):
    """docs/report.png is what `python3 tests/browser_support.py` makes of the violation
    fixture's report: same size, and the README shows it beside the two commands."""
    import struct
    from browser_support import shoot
    html, _ = report(tmp_path, capsys, NOSYNC)
    png = tmp_path / "report.png"
    log = shoot(chromium, html, png, clip_height=README_SHOT_HEIGHT)
    assert_clean(log)
    shipped = Path(__file__).resolve().parent.parent / "docs" / "report.png"

    def size(p: Path) -> tuple[int, int]:
        head = p.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        return struct.unpack(">II", head[16:24])
    assert size(shipped) == size(png) == (1100, README_SHOT_HEIGHT)
    readme = (shipped.parent.parent / "README.md").read_text()
    assert "](docs/report.png)" in readme
    assert f"kvmtrace report {NOSYNC.relative_to(FIXTURES.parent)} -o report.html" in readme
    assert f"kvmtrace timeline {NOSYNC.relative_to(FIXTURES.parent)} -o timeline.json" in readme
