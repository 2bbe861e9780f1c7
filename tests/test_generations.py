"""The kernel-generation fixtures: each gives its expected verdict; regenerating is exact."""
import inspect
import json
import re
from pathlib import Path

import pytest

from fixtures import generations
from kvmtrace.exitcodes import for_verdict
from kvmtrace.pipeline.offline import analyze_path
from kvmtrace.sources.stream import load
from kvmtrace.schema import FUNCTION_KINDS, Kind

DIR = Path(__file__).resolve().parent.parent / "fixtures" / "generations"
EXPECTED = json.loads((DIR / "expected.json").read_text())


def test_every_scenario_has_a_committed_fixture_and_expectation():
    names = {f"{sc.name}.jsonl" for sc in generations.SCENARIOS}
    assert names == set(EXPECTED)
    assert names == {p.name for p in DIR.glob("*.jsonl")}
    verdicts = {e["verdict"] for e in EXPECTED.values()}
    assert verdicts >= {"ok", "violation", "suspect", "inconclusive"}
    patterns = {e["pattern"] for e in EXPECTED.values()}
    assert patterns >= {"hardware-flush-only", "unload-reload", "sync-in-place"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_gives_its_expected_verdict(name):
    exp = EXPECTED[name]
    res = analyze_path(DIR / name)
    assert res.verdict == exp["verdict"]
    assert res.pattern == exp["pattern"]
    assert res.windows == exp["windows"]
    assert for_verdict(res.verdict) == exp["exit"]
    if "outstanding_gfns" in exp:
        assert [o["gfn"] for o in res.findings[0]["outstanding"]] == exp["outstanding_gfns"]
    if exp.get("harmless"):
        assert res.findings[0]["harmless"] is True


def test_function_fixtures_carry_function_events_and_tracepoint_ones_do_not():
    for name in EXPECTED:
        kinds = set(load(DIR / name).events["kind"].tolist())
        has_fn = bool(kinds & {int(k) for k in FUNCTION_KINDS})
        assert has_fn == name.startswith("fn-"), name


def test_regenerating_gives_byte_identical_files(tmp_path):
    written = generations.generate(tmp_path)
    assert {p.name for p in written} == {p.name for p in DIR.iterdir() if p.is_file()}
    for path in written:
        assert path.read_bytes() == (DIR / path.name).read_bytes(), path.name


def test_generators_cite_the_kernel_source_they_follow():
    for fn in (generations.flush_v5_10, generations.flush_v5_13, generations.flush_v5_16,
               generations.flush_v6_1_inlined, generations.flush_v6_1_request):
        doc = inspect.getdoc(fn)
        assert re.search(r"v\d\.\d+", doc) and "kvm_vcpu_flush_tlb_guest" in doc, fn.__name__
    assert "arch/x86/kvm/x86.c" in inspect.getsource(generations)


def test_5_16_fixture_follows_the_kernel_order():
    ev = load(DIR / "fn-5.16-sync-in-place.jsonl").events
    names = [Kind(k).name for k in ev["kind"]]
    tail = names[names.index("FLUSH_REQUEST_PV", len(names) - 10):]
    assert tail == ["FLUSH_REQUEST_PV", "FLUSH_GUEST_ENTRY", "SYNC_ROOTS", "SP_SYNC",
                    "SYNC_PREV_ROOTS", "HW_FLUSH", "FLUSH_GUEST_RETURN", "GUEST_ENTRY"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_per_event_reference_agrees_on_every_fixture(name):
    from kvmtrace.analysis import Replayer
    trace = load(DIR / name)
    fast, ref = Replayer(trace.meta), Replayer(trace.meta, per_event=True)
    fast.feed(trace.events)
    ref.feed(trace.events)
    assert fast.finish().to_dict() == ref.finish().to_dict()
