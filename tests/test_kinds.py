"""The per-kind table (kvmtrace/kinds.py) is complete and is what the code uses: every kind
has a row, a role and a model handler; every tracepoint a live probe (or a stated reason)
and a text decoder; the live probes and the model's masks come from it."""
from __future__ import annotations

import numpy as np

from kvmtrace.analysis import selection
from kvmtrace.analysis.replay import Replayer
from kvmtrace.functions import PROBED_FUNCTIONS
from kvmtrace.kinds import (EVIDENCE, FUNCTIONS, GATE, KIND_ROWS, KINDS, STATE, WALK,
                            kinds_with, tracepoints)
from kvmtrace.schema import (EVIDENCE_KINDS, FLUSH_PATH_KINDS, FLUSH_REQUEST_KINDS,
                             FUNCTION_KINDS, SP_KINDS, Kind)
from kvmtrace.sources.live.tracepoints import TRACEPOINTS as LIVE
from kvmtrace.sources.text.payloads import TRACEPOINTS as TEXT


def test_every_kind_has_one_row_a_role_and_a_handler() -> None:
    assert [row.kind for row in KINDS] == sorted(KIND_ROWS) == sorted(Kind)
    for row in KINDS:
        assert row.role in (STATE, GATE, EVIDENCE, WALK), row
        assert row.source, f"{row.kind.name}: say what fires it"
        assert callable(getattr(Replayer, row.handler, None)), f"no Replayer.{row.handler}"


def test_every_tracepoint_has_a_live_probe_and_a_text_decoder() -> None:
    live = {tp.name: tp for tp in LIVE}
    assert len(live) == len(LIVE), "a tracepoint recorded twice"
    for row, tp in tracepoints():
        if tp.live is None:
            assert tp.not_live, f"{tp.name}: no live probe and no reason why"
            assert tp.name not in live
        else:
            probe = live[tp.name]
            assert (probe.kind, probe.handler, probe.columns, probe.arg) == (
                row.kind, tp.live, tp.columns, tp.arg)
            assert tp.columns, f"{tp.name}: a live probe that fills no column"
        for name in tp.text:
            assert name in TEXT, f"{tp.name}: no text decoder for {name}"
    assert set(live) == {tp.name for _, tp in tracepoints() if tp.live is not None}
    named = {n for _, tp in tracepoints() for n in tp.text}
    assert set(TEXT) <= named, f"text decoders outside the table: {set(TEXT) - named}"


def test_function_kinds_are_the_probed_functions_kinds() -> None:
    from_functions = {k for f in PROBED_FUNCTIONS for k in (f.entry, f.ret) if k is not None}
    assert from_functions == {row.kind for row in KINDS if row.source == FUNCTIONS}
    assert FUNCTION_KINDS == from_functions


def test_the_model_masks_and_the_kind_sets_follow_the_roles() -> None:
    codes = np.arange(256)
    for role, mask in ((STATE, selection._STATE), (GATE, selection._GATE),
                       (EVIDENCE, selection._EVIDENCE), (WALK, selection._WALK)):
        assert set(codes[mask].tolist()) == {int(k) for k in kinds_with(role)}, role
    assert EVIDENCE_KINDS == kinds_with(EVIDENCE)
    assert FLUSH_REQUEST_KINDS | FLUSH_PATH_KINDS | FUNCTION_KINDS == kinds_with(GATE)
    assert SP_KINDS <= kinds_with(STATE)
