"""Factorisation of key arrays: codes in first-appearance order, as ``pandas.factorize`` gives.

The model numbers threads, VMs and guest page-table edges per chunk this way, and the live
recorder numbers the threads of a chunk.  pandas' hash table is the fastest way for big
arrays, but importing pandas costs ~0.4 s of start-up that ``check`` and ``record`` do not
otherwise need.  So small arrays (the live recorder's 0.1 s chunks, every chunk of a short
check) are factorised with numpy -- a table indexed by the key where the keys span a small
range (thread ids: below 2**22), else one sort of the values that start a run of equal
keys -- and pandas is imported only for arrays of ``PANDAS_ROWS`` keys or more (an offline replay's
million-row chunks, where a sort would cost 5-10x the hash table: bench/replay_bench.py).
Both ways give identical codes and uniques (tests/test_factorize.py checks it against
pandas).

May import: numpy; pandas lazily.  Contract layer: no kvmtrace module.
"""
from __future__ import annotations

import sys

import numpy as np

# From this many keys on, pandas' hash table is worth importing pandas (bench/
# factorize_bench.py, loaded host: 64 Ki random int64 keys 14-15 ms by sort, 1.5-2.4 ms by
# pandas; 512 Ki keys 150-215 ms vs 24-32 ms).
PANDAS_ROWS = 1 << 16
# Below this many keys numpy is as fast as pandas even when pandas is already imported.
SMALL_ROWS = 1 << 10
# Keys spanning at most this many values (and at most 64 per key) are looked up in a table
# of the span: 9-11 ms for 512 Ki thread ids spread over 4 M values here, where the sort
# takes 27-39 ms and pandas 5 ms (bench/factorize_bench.py).
DENSE_SPAN = 1 << 22


def _pandas(n: int, allow_import: bool):
    """pandas, when it should factorise ``n`` keys (None: numpy does)."""
    if n < SMALL_ROWS:
        return None
    loaded = sys.modules.get("pandas")
    if loaded is not None:
        return loaded
    if allow_import and n >= PANDAS_ROWS:
        import pandas
        return pandas
    return None


def _by_first_appearance(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, order) of distinct values whose first rows are ``first``: ``order`` lists them
    by first appearance, ``rank[i]`` is value i's place in it (its code)."""
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order), dtype=np.intp)
    return rank, order


def _sorted_factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank, order = _by_first_appearance(first)
    return rank[inverse.reshape(-1)], uniq[order]


def _dense_factorize(keys: np.ndarray, lo, span: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(keys)
    offset = (keys - lo).astype(np.intp, copy=False)
    seen = np.zeros(span, dtype=bool)
    seen[offset] = True
    values = np.flatnonzero(seen)                   # the distinct offsets, sorted
    lookup = np.empty(span, dtype=np.intp)
    lookup[values] = np.arange(len(values), dtype=np.intp)
    ids = lookup[offset]                            # codes in value order
    first = np.full(len(values), n, dtype=np.intp)
    np.minimum.at(first, ids, np.arange(n, dtype=np.intp))
    rank, order = _by_first_appearance(first)
    return rank[ids], keys[first[order]]


def _factorize_heads(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if keys.dtype.kind in "iu":
        lo = keys.min()
        span = int(keys.max()) - int(lo) + 1
        if span <= min(DENSE_SPAN, 64 * len(keys)):    # else the table costs more than a sort
            return _dense_factorize(keys, lo, span)
    return _sorted_factorize(keys)


def factorize_numpy(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques) of a 1-D array: ``uniques[codes] == keys``, codes numbered in order
    of first appearance (``pandas.factorize(keys)`` for NaN-free keys)."""
    keys = np.asarray(keys)
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.intp), keys[:0].copy()
    # Events come in runs of one thread (one CPU's records): sort only the run heads.
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if 2 * len(starts) > n:
        return _factorize_heads(keys)
    codes, uniques = _factorize_heads(keys[starts])
    return np.repeat(codes, np.diff(np.r_[starts, n])), uniques


def factorize(keys: np.ndarray, *, allow_import: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``pandas.factorize(keys)`` for a NaN-free 1-D array: numpy for small arrays, pandas
    for big ones (imported for them only when ``allow_import``; the live recorder never
    imports it: a 0.4 s import in the drain would lose events)."""
    pd = _pandas(len(keys), allow_import)
    if pd is None:
        return factorize_numpy(keys)
    codes, uniques = pd.factorize(keys)
    return codes.astype(np.intp, copy=False), uniques


def factorize_rows(*arrays: np.ndarray, allow_import: bool = True) -> np.ndarray:
    """Codes of the rows (tuples) of equal-length key arrays, in order of first appearance
    (``pandas.MultiIndex.from_arrays(arrays).factorize()[0]``)."""
    n = len(arrays[0])
    pd = _pandas(n, allow_import)
    if pd is not None:
        return pd.MultiIndex.from_arrays(list(arrays)).factorize()[0].astype(np.intp, copy=False)
    codes, _ = factorize_numpy(arrays[0])
    for more in arrays[1:]:
        sub, uniq = factorize_numpy(more)
        # (code so far, code of this column) is one-to-one with the tuple so far; both codes
        # are < n, so the pair packs into one int64 without overflow for n < 2**31.
        codes, _ = factorize_numpy(codes.astype(np.int64) * max(len(uniq), 1) + sub)
    return codes
