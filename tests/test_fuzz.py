"""Issue 14 (4): hostile inputs through analyze, in process, each under a time limit: no
hang, no traceback, no verdict of ok or violation from damaged input.  The same generator
runs 10 000 cases in bench/fuzz_bench.py."""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_inputs", ROOT / "bench" / "fuzz_inputs.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_inputs"] = fuzz
_spec.loader.exec_module(fuzz)

NATIVE = ("noise", "gz_flip", "parquet_flip", "jsonl_edit", "truncated")
TEXT = ("whitespace", "long_line", "joined")
LIMIT_S = 10.0          # per case: far above any sane case on a loaded 2-core machine


def _check(seed: int, category: str, tmp_path_factory) -> None:
    case = fuzz.make_case(random.Random(seed), category)
    outcome, elapsed = fuzz.run_case(case, tmp_path_factory.mktemp("fuzz"), LIMIT_S)
    assert fuzz.judge(case, outcome) == "", (category, seed, outcome, f"{elapsed:.1f} s")


@settings(max_examples=200, deadline=None, phases=[Phase.generate], report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), category=st.sampled_from(NATIVE))
def test_damaged_native_and_binary_inputs(seed, category, tmp_path_factory):
    _check(seed, category, tmp_path_factory)


@settings(max_examples=60, deadline=None, phases=[Phase.generate], report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), category=st.sampled_from(TEXT))
def test_hostile_text_inputs(seed, category, tmp_path_factory):
    _check(seed, category, tmp_path_factory)
