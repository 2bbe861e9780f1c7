"""ShadowMMU: the VM-wide SP set, unsync bookkeeping, links and reachability."""
from kvmtrace.analysis.shadow import ShadowMMU

ROOT, L3, L2, L1 = (1, 0x3704), (2, 0x3703), (3, 0x3702), (4, 0x3701)


def tree(created: bool = True) -> ShadowMMU:
    s = ShadowMMU()
    sps = [s.page(g, r, r & 0xF, created=created) for g, r in (ROOT, L3, L2, L1)]
    for parent, child in zip(sps, sps[1:]):
        s.link(parent, child)
    return s


def test_reachable_through_known_links():
    s = tree()
    assert s.reachable(L1, ROOT) is True
    assert s.reachable(ROOT, ROOT) is True


def test_reachability_unknown_without_root_or_parents():
    s = tree()
    assert s.reachable(L1, None) is None
    lone = ShadowMMU()
    lone.page(4, 0x3701, 1)                 # seen only via unsync: its parents are unknown
    assert lone.reachable((4, 0x3701), ROOT) is None


def test_unreachable_when_every_path_ends_at_another_root():
    s = tree()
    other_root = s.page(9, 0x3704, 4, created=True)
    assert s.reachable(L1, other_root.key) is False


def test_not_known_unreachable_when_pages_predate_the_trace():
    s = tree(created=False)
    other_root = s.page(9, 0x3704, 4, created=True)
    assert s.reachable(L1, other_root.key) is None


def test_zap_removes_links_and_unsync():
    s = tree()
    s.mark_unsync(*L1, 1, seq=1, ts=5, tid=10)
    s.zap(L2)
    assert L2 not in s.pages
    assert s.reachable(L1, ROOT) is None     # its only parent is gone
    assert s.zap(L1) is True and L1 not in s.unsync


def test_unsync_before_is_ordered_by_sequence():
    s = tree()
    s.mark_unsync(*L1, 1, seq=5, ts=50, tid=10)
    s.mark_unsync(9, 0x3701, 1, seq=8, ts=80, tid=10)
    assert [k for k, _ in s.unsync_before(6)] == [L1]
    assert [k for k, _ in s.unsync_before(9)] == [L1, (9, 0x3701)]
    s.mark_sync(L1)
    s.mark_unsync(*L1, 1, seq=10, ts=100, tid=10)   # unsync again: no longer "before 9"
    assert [k for k, _ in s.unsync_before(9)] == [(9, 0x3701)]


def test_find_prefers_the_same_role_family():
    s = ShadowMMU()
    s.page(2, 0x3703, 3)
    s.page(2, 0x3703 | (1 << 17), 3)         # the same table shadowed for a nested guest
    assert s.find(2, 3, like_role=0x3704).role == 0x3703
    assert s.find(2, 3) is None              # ambiguous without a role to match


def test_new_page_with_existing_key_drops_stale_links():
    s = tree()
    s.page(*L2, 2, created=True)             # recreated: the old links belonged to the freed SP
    assert s.reachable(L1, ROOT) is None


def test_analysis_never_imports_bcc_or_the_live_collector():
    import subprocess
    import sys
    code = ("import sys, kvmtrace.analysis, kvmtrace.commands.analyze, fixtures.generations;"
            "bad = [m for m in sys.modules if m == 'bcc' or m.startswith('bcc.') "
            "or m.startswith('kvmtrace.sources.live') or m.startswith('kvmtrace.host')];"
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
