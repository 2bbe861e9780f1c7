"""kvmtrace.factorize gives pandas.factorize's codes and uniques, with or without pandas."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from kvmtrace import factorize as fz

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
# Few distinct values with long runs (a chunk's threads), or anything.
KEYS = st.one_of(
    hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-3, 3)),
    hnp.arrays(np.int64, st.integers(0, 300), elements=INT64),
    hnp.arrays(np.uint64, st.integers(0, 300), elements=st.integers(0, (1 << 64) - 1)),
    hnp.arrays(np.uint64, st.integers(0, 300), elements=st.sampled_from([0, 1, (1 << 64) - 1])),
    st.lists(st.tuples(st.integers(-2, 5), st.integers(1, 40)), max_size=40).map(
        lambda runs: np.repeat(np.array([v for v, _ in runs], dtype=np.int64),
                               [n for _, n in runs])),
)


def _same(got: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> None:
    want_codes, want_uniques = pd.factorize(keys)
    codes, uniques = got
    assert codes.dtype == np.intp and uniques.dtype == keys.dtype
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(uniques, want_uniques)


@settings(max_examples=300)
@given(KEYS)
def test_numpy_factorize_is_pandas_factorize(keys):
    _same(fz.factorize_numpy(keys), keys)


@settings(max_examples=200)
@given(KEYS)
def test_the_table_and_the_sort_each_are_pandas_factorize(keys):
    """Both numpy strategies, whichever factorize_numpy would pick for these keys."""
    if not len(keys):
        return
    _same(fz._sorted_factorize(keys), keys)
    span = int(keys.max()) - int(keys.min()) + 1
    if span <= 1 << 16:
        _same(fz._dense_factorize(keys, keys.min(), span), keys)


def test_thread_ids_over_the_whole_pid_range_take_the_table(monkeypatch):
    rng = np.random.default_rng(5)
    keys = rng.choice(np.array([1, 4_194_303, 77, 2_000_000], dtype=np.uint32), 1 << 16)
    used = []
    monkeypatch.setattr(fz, "_sorted_factorize", lambda k: used.append(k) or None)
    _same(fz.factorize_numpy(keys), keys)
    assert used == []


@settings(max_examples=100)
@given(KEYS)
def test_factorize_is_pandas_factorize_either_way(keys):
    _same(fz.factorize(keys), keys)
    _same(fz.factorize(keys, allow_import=False), keys)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32])
def test_empty_keys(dtype):
    keys = np.empty(0, dtype=dtype)
    _same(fz.factorize_numpy(keys), keys)
    assert len(fz.factorize_rows(keys, keys)) == 0


@pytest.mark.parametrize("n", [fz.SMALL_ROWS + 7, fz.PANDAS_ROWS + 3])
def test_big_arrays_both_paths_agree(n):
    rng = np.random.default_rng(n)
    for keys in (rng.integers(-5, 500, n), np.repeat(rng.integers(0, 1 << 62, n // 9 + 1), 9)[:n],
                 rng.integers(0, 1 << 63, n).astype(np.uint64)):
        _same(fz.factorize_numpy(keys), keys)
        _same(fz.factorize(keys), keys)


ROW_COLUMNS = st.integers(0, 120).flatmap(lambda n: st.lists(
    hnp.arrays(np.int64, n, elements=st.one_of(st.integers(-1, 3), INT64)), min_size=1,
    max_size=4))


@settings(max_examples=300)
@given(ROW_COLUMNS)
def test_factorize_rows_is_multiindex_factorize(columns):
    want = pd.MultiIndex.from_arrays(columns).factorize()[0] if len(columns[0]) else np.empty(0)
    got = fz.factorize_rows(*columns, allow_import=False)
    assert got.dtype == np.intp
    np.testing.assert_array_equal(got, want)


def test_factorize_rows_of_big_arrays_is_multiindex_factorize():
    rng = np.random.default_rng(3)
    n = fz.PANDAS_ROWS + 11
    columns = [rng.integers(0, 9, n), rng.integers(-1, 2, n), rng.integers(0, 1 << 40, n) % 97]
    want = pd.MultiIndex.from_arrays(columns).factorize()[0]
    np.testing.assert_array_equal(fz.factorize_rows(*columns, allow_import=False), want)
    np.testing.assert_array_equal(fz.factorize_rows(*columns), want)


def test_without_pandas_loaded_small_and_recorder_arrays_stay_numpy(monkeypatch):
    """The choice itself: pandas is used when loaded or for big arrays, and imported only
    when allowed (the recorder's drain never imports it)."""
    assert fz._pandas(fz.SMALL_ROWS, allow_import=False) is pd     # loaded: used
    assert fz._pandas(fz.SMALL_ROWS - 1, allow_import=True) is None
    monkeypatch.delitem(sys.modules, "pandas")
    assert fz._pandas(fz.PANDAS_ROWS * 4, allow_import=False) is None
    assert fz._pandas(fz.PANDAS_ROWS - 1, allow_import=True) is None
