"""Properties of the replay over random event streams (hypothesis).

- A shuffled stream, fed in any chunking, never gives ``ok`` where the original gave
  ``violation``; nor does a stream with duplicated events.
- Chunk boundaries never change the result of an in-order stream.
"""
import pandas as pd
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from kvmtrace.analysis import Replayer, replay_frame
from kvmtrace.sources.frame import concat
from kvmtrace.schema import EVIDENCE_KINDS, FLUSH_PATH_KINDS, FUNCTION_KINDS, KVM_EXIT_INTR, ROOT_SWITCH_KINDS, Kind

from model_scenarios import built, role

VCPU_TIDS = {0: 10, 1: 11, 2: 12}

op = st.one_of(
    st.tuples(st.just("unsync"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("sync"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("zap"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("flush"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("load"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("run"), st.integers(0, 2), st.sampled_from(
        [Kind.SPTE_INSTALL, Kind.GUEST_ENTRY, Kind.EMULATE, Kind.USERSPACE_EXIT])),
    st.tuples(st.just("build"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("lost"), st.just(0), st.just(0)),
    st.tuples(st.just("walk"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    # Guest (KVM_REQ_TLB_FLUSH_GUEST) and Hyper-V flush requests.
    st.tuples(st.just("request"), st.integers(0, 2),
              st.sampled_from([Kind.FLUSH_REQUEST_GUEST, Kind.FLUSH_REQUEST_HYPERV,
                               *sorted(FLUSH_PATH_KINDS)])),
    # Function probes on the flush and MMU-root paths.
    st.tuples(st.just("fn"), st.integers(0, 2), st.sampled_from(sorted(FUNCTION_KINDS))),
    # Every guest-run evidence kind; KVM_RUN returning an exit reason, KVM_EXIT_INTR or an errno.
    st.tuples(st.just("run"), st.integers(0, 2), st.sampled_from(sorted(EVIDENCE_KINDS))),
    st.tuples(st.just("uexit"), st.integers(0, 2), st.sampled_from([2, KVM_EXIT_INTR, -4])),
    # Exact evidence: a parent_ptes link appearing (1) or dropped (0); a root slot read.
    st.tuples(st.just("link"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("unlink"), st.integers(0, 2), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("root"), st.integers(0, 2), st.sampled_from([1, 9, -1])),
    st.tuples(st.just("invalid"), st.integers(0, 2), st.just(0)),
    # A whole snapshot (root 1 with unsync_children n, prev root 9) at one timestamp.
    st.tuples(st.just("snap"), st.integers(0, 2), st.sampled_from([0, 1])),
    # Events that can switch the root silently; a thread that runs another vCPU.
    st.tuples(st.just("switch"), st.integers(0, 2), st.sampled_from(sorted(ROOT_SWITCH_KINDS))),
    st.tuples(st.just("move"), st.integers(0, 2), st.integers(0, 2)),
)


# A violation core: vCPU0 unsyncs the shared L1 page, vCPU1 is flushed and runs unsynced.
CORE = [("build", 1, 4), ("unsync", 0, 4), ("flush", 1, 0), ("run", 1, Kind.SPTE_INSTALL)]
with_core = st.tuples(st.lists(op, max_size=15), st.lists(op, max_size=15)).map(
    lambda ab: ab[0] + CORE + ab[1])


def stream_of(ops) -> pd.DataFrame:
    s = built()
    s.pv(12, 2).get(12, 1, 4, created=0).run(12)
    for name, v, arg in ops:
        tid = VCPU_TIDS[v]
        if name == "unsync":
            s.unsync(tid, arg)
        elif name == "sync":
            s.sync(tid, arg)
        elif name == "zap":
            s.zap(tid, arg)
        elif name == "flush":
            s.pv(tid, v, need_flush=1)
        elif name == "load":
            s.pv(tid, v, need_flush=0)
        elif name == "run":
            s.run(tid, arg, **({"value": 2} if arg == Kind.USERSPACE_EXIT else {}))
        elif name == "build":
            s.get(tid, 2, 3, created=0).get(tid, 3, 2, created=0).get(tid, arg, 1)
        elif name == "lost":
            s.lost()
        elif name == "walk":
            s.walk(tid, [2, 3, arg], leaf=0x50)
        elif name == "request":
            s.add(arg, tid, vcpu=v)
        elif name == "fn":
            s.fn(arg, tid, **({"value": 0} if arg == Kind.MMU_LOAD_RETURN else {}))
        elif name == "uexit":
            s.run(tid, Kind.USERSPACE_EXIT, value=arg)
        elif name in ("link", "unlink"):
            s.add(Kind.SP_LINK, tid, gfn=arg, role=role(1), level=1, parent_gfn=3,
                  parent_role=role(2), value=int(name == "link"))
        elif name == "invalid":       # an event sources/validate.py refused
            s.add(Kind.INVALID, tid, value=1)
        elif name == "root":
            s.add(Kind.ROOT_STATE, tid, gfn=arg, role=role(4) if arg >= 0 else -1, value=0)
        elif name == "snap":
            s.add(Kind.ROOT_STATE, tid, gfn=1, role=role(4), value=0, unsync=0,
                  unsync_children=arg)
            s.rows.append({**s.rows[-1], "gfn": 9, "value": 1, "unsync_children": 0})
        elif name == "switch":
            s.add(arg, tid, **({"level": 3} if arg == Kind.CR_WRITE else {}))
        elif name == "move":
            s.pv(tid, arg, need_flush=0)
    return s.frame()


def feed_in_chunks(frame: pd.DataFrame, cuts: list[int]):
    r = Replayer()
    bounds = sorted({0, len(frame), *[c % (len(frame) + 1) for c in cuts]})
    for a, b in zip(bounds, bounds[1:]):
        r.feed(frame.iloc[a:b])
    return r.finish()


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(with_core, st.randoms(use_true_random=False), st.lists(st.integers(0, 200), max_size=4))
def test_shuffled_stream_never_turns_a_violation_into_ok(ops, rnd, cuts):
    frame = stream_of(ops)
    original = replay_frame(frame)
    assume(original.verdict == "violation")
    order = list(range(len(frame)))
    rnd.shuffle(order)
    shuffled = frame.iloc[order].reset_index(drop=True)
    assert replay_frame(shuffled).verdict != "ok"
    assert feed_in_chunks(shuffled, cuts).verdict != "ok"


@SETTINGS
@given(with_core, st.data())
def test_duplicated_events_never_turn_a_violation_into_ok(ops, data):
    frame = stream_of(ops)
    original = replay_frame(frame)
    assume(original.verdict == "violation")
    picks = data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=len(frame)))
    duplicated = concat([frame, frame.iloc[picks]]).sort_values("ts", kind="stable")
    assert replay_frame(duplicated.reset_index(drop=True)).verdict != "ok"
    assert replay_frame(concat([frame, frame])).verdict != "ok"     # everything twice


def test_a_repeated_unsync_line_keeps_the_violation():
    # Found by a 2000-example run of the property above (pinned here: @example cannot give
    # st.data()).  SP 4 is unsync and reachable from vCPU1's root; vCPU1's thread syncs SP 5
    # in the window, and SP 4 stays unsync: a violation.  The same stream with SP 4's
    # kvm_mmu_unsync_page line repeated made the key "two SPs printing alike", so its link
    # proved nothing and the own-thread sync read as "the root was synced": ok.  No sync
    # took either SP, so both are unsync, whichever the link is of.
    ops = [("unsync", 0, 4), ("unsync", 0, 5), ("flush", 1, 0), ("sync", 1, 5),
           ("run", 1, Kind.SPTE_INSTALL)]
    frame = stream_of(ops)
    assert replay_frame(frame).verdict == "violation"
    (row,) = [i for i, (k, g) in enumerate(zip(frame.kind, frame.gfn))
              if k == Kind.SP_UNSYNC and g == 4]
    duplicated = concat([frame, frame.iloc[[row]]]).sort_values("ts", kind="stable")
    assert replay_frame(duplicated.reset_index(drop=True)).verdict == "violation"


@SETTINGS
@given(st.lists(op, min_size=1, max_size=30), st.lists(st.integers(0, 200), max_size=5))
# Found by hypothesis: a cut between two elements of one guest walk (after row 18 of 29)
# made the next element look like a top-level edge from the root, losing the edge to the
# unsync L1 page: suspect instead of violation.
@example(ops=[("unsync", 0, 5), ("flush", 0, 0), ("walk", 0, 5), ("flush", 0, 0),
              ("flush", 0, 0), ("flush", 0, 0), ("unsync", 0, 4), ("walk", 0, 4)], cuts=[18])
def test_chunk_boundaries_do_not_change_the_result(ops, cuts):
    frame = stream_of(ops)
    assert feed_in_chunks(frame, cuts).to_dict() == replay_frame(frame).to_dict()


@SETTINGS
@given(st.lists(op, min_size=1, max_size=30), st.lists(st.integers(0, 200), max_size=3))
# Found by hypothesis: a walk edge repeated after its SP appeared was handed on once only.
@example(ops=[("walk", 0, 5), ("unsync", 0, 5), ("walk", 0, 5), ("flush", 0, 0),
              ("run", 0, Kind.SPTE_INSTALL)], cuts=[])
def test_vectorised_selection_equals_the_per_event_reference(ops, cuts):
    frame = stream_of(ops)
    ref = Replayer(per_event=True)
    ref.feed(frame)
    assert feed_in_chunks(frame, cuts).to_dict() == ref.finish().to_dict()


def test_the_grammar_covers_every_kind_the_model_handles():
    # One op of each form; together they must emit every Kind (each has an on_<kind> handler).
    ops = [("build", 1, 4), ("unsync", 0, 4), ("sync", 0, 4), ("zap", 0, 5), ("flush", 1, 0),
           ("load", 1, 0), ("lost", 0, 0), ("walk", 1, 4), ("uexit", 1, 2), ("link", 1, 4),
           ("root", 1, 1), ("invalid", 1, 0),
           ("snap", 1, 1), ("move", 1, 2)]
    ops += [("switch", 1, k) for k in ROOT_SWITCH_KINDS]
    ops += [("request", 1, k) for k in (Kind.FLUSH_REQUEST_GUEST, Kind.FLUSH_REQUEST_HYPERV,
                                        *FLUSH_PATH_KINDS)]
    ops += [("fn", 1, k) for k in FUNCTION_KINDS] + [("run", 1, k) for k in EVIDENCE_KINDS]
    kinds = set(stream_of(ops).kind.tolist())
    assert kinds == {int(k) for k in Kind}, {Kind(k).name for k in set(map(int, Kind)) - kinds}


def test_the_generator_reaches_violations():
    # Guards the properties above against vacuity: the op grammar does produce violations.
    ops = [("unsync", 0, 4), ("flush", 1, 0), ("run", 1, Kind.SPTE_INSTALL)]
    assert replay_frame(stream_of(ops)).verdict == "violation"
