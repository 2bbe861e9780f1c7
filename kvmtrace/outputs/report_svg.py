"""Hand-written inline SVG for the HTML report: the windows-over-time strip and the
flush->sync latency histograms.

The strip has one row per vCPU (``struct kvm_vcpu``) of each VM and one mark per flush
window at its time, coloured by verdict through CSS classes (``v-violation`` is red).
Every violation and suspect window is a mark of its own with its time, vCPU and reason
(``data-ts``, ``data-vcpu``, ``<title>``), drawn last (on top); ok, inconclusive and open
windows that fall on the same pixel column of a row share one short mark whose ``data-n``
says how many windows it stands for and ``data-i`` which is the first (an index into the
embedded window table), which keeps the page small for traces with thousands of windows.
The marks' ``data-n`` add up to the windows drawn.

May import: ``pipeline.visual`` (the data) and the standard library.
"""
from __future__ import annotations

from html import escape
from typing import Optional

from kvmtrace.analysis.report import row_key, row_order
from kvmtrace.pipeline.visual import LATENCY_LABELS, TraceVisual, WindowMark

STRIP_LEFT = 120              # px for the row labels
STRIP_WIDTH = 840             # px of time axis
ROW_H = 24
MARK_H = 16
AXIS_H = 30
ALONE = ("violation", "suspect")           # never merged with other windows
DRAW_ORDER = ("ok", "open", "inconclusive", "suspect", "violation")


def fmt_rel(ns: float) -> str:
    """A duration from the trace start, in the unit that suits it."""
    if abs(ns) < 1_000:
        return f"{ns:.0f} ns"
    if abs(ns) < 1_000_000:
        return f"{ns / 1e3:.1f} us"
    if abs(ns) < 1_000_000_000:
        return f"{ns / 1e6:.3f} ms"
    return f"{ns / 1e9:.3f} s"


def row_label(tgid: int, vcpu: int, tid: int) -> str:
    return f"VM {tgid} vCPU {vcpu}" if vcpu >= 0 else f"VM {tgid} thread {tid}"


def _rows(t: TraceVisual) -> list[tuple[int, int, int]]:
    """(tgid, vcpu, tid) rows: one per vCPU; per thread while the vCPU is unknown."""
    keys = {row_key(m.tgid, m.vcpu, m.tid) for m in t.windows}
    return sorted(keys, key=row_order)


def _ticks(span: int) -> list[int]:
    """About six round tick positions (ns from the start) over [0, span]."""
    raw = max(span / 6, 1)
    mag = 10 ** (len(str(int(raw))) - 1)
    step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
    return list(range(0, span + 1, int(step)))


def strip(t: TraceVisual, trace_index: int) -> str:
    """The strip of one trace: rows of window marks over its time axis."""
    rows = _rows(t)
    start = t.start_ns
    span = max(t.end_ns - start, 1)
    height = len(rows) * ROW_H + AXIS_H + 6
    width = STRIP_LEFT + STRIP_WIDTH + 20
    scale = STRIP_WIDTH / span

    def x_of(ns: int) -> float:
        return STRIP_LEFT + (ns - start) * scale

    out = [f'<svg class="strip" id="strip-{trace_index}" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
           f'data-start-ns="{start}" data-end-ns="{t.end_ns}" data-left="{STRIP_LEFT}" '
           f'data-plot-width="{STRIP_WIDTH}">',
           f'<title>Flush windows over time, {escape(t.label)}</title>']
    row_of = {}
    for i, (tgid, vcpu, tid) in enumerate(rows):
        y = i * ROW_H
        row_of[(tgid, vcpu, tid)] = y
        out.append(f'<g class="row" data-tgid="{tgid}" data-vcpu="{vcpu}" '
                   f'data-row-y="{y}"><rect class="lane" x="{STRIP_LEFT}" y="{y + 2}" '
                   f'width="{STRIP_WIDTH}" height="{ROW_H - 4}"/>'
                   f'<text class="rowlabel" x="{STRIP_LEFT - 8}" y="{y + ROW_H / 2 + 4:.0f}" '
                   f'text-anchor="end">{escape(row_label(tgid, vcpu, tid))}</text></g>')
    axis_y = len(rows) * ROW_H + 4
    out.append(f'<line class="axis" x1="{STRIP_LEFT}" y1="{axis_y}" '
               f'x2="{STRIP_LEFT + STRIP_WIDTH}" y2="{axis_y}"/>')
    for tick in _ticks(span):
        x = STRIP_LEFT + tick * scale
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}"/>'
                   f'<text class="ticklabel" x="{x:.1f}" y="{axis_y + 18}" text-anchor="middle">'
                   f'{"0" if tick == 0 else "+" + fmt_rel(tick)}</text>')
    for ts, count in t.lost[:200]:
        x = x_of(ts)
        out.append(f'<line class="lost" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{axis_y}">'
                   f'<title>{count} events lost at +{fmt_rel(ts - start)}</title></line>')
    out += _marks(t, rows, row_of, x_of)
    out.append("</svg>")
    return "\n".join(out)


def _marks(t: TraceVisual, rows, row_of: dict, x_of) -> list[str]:
    merged: dict[tuple, list] = {}      # (row, verdict, pixel) -> [x0, x1, n, first index]
    alone: list[tuple[int, WindowMark, float, float, tuple]] = []
    for i, m in enumerate(t.windows):
        row = (m.tgid, m.vcpu, m.tid if m.vcpu < 0 else -1)
        end = m.closed_ts if m.closed_ts is not None else t.end_ns
        x0 = x_of(m.ts)
        x1 = max(x_of(max(end, m.ts)), x0 + 2.0)
        if m.verdict in ALONE:
            alone.append((i, m, x0, x1, row))
            continue
        key = (row, m.verdict, int(x0))
        got = merged.get(key)
        if got is None:
            merged[key] = [x0, x1, 1, i]
        else:
            got[0], got[1], got[2] = min(got[0], x0), max(got[1], x1), got[2] + 1
    out = []
    for verdict in DRAW_ORDER:
        for (row, v, _), (x0, x1, n, i) in merged.items():
            if v != verdict:
                continue
            y = row_of[row] + (ROW_H - MARK_H) / 2
            # Short: thousands of these (the page's script adds a tooltip on hover).
            out.append(f'<rect class="mark v-{verdict}" x="{x0:.2f}" y="{y:.0f}" '
                       f'width="{x1 - x0:.2f}" height="{MARK_H}" data-n="{n}" data-i="{i}"/>')
        for i, m, x0, x1, row in alone:
            if m.verdict != verdict:
                continue
            y = row_of[row] + (ROW_H - MARK_H) / 2
            tip = f"{verdict.upper()} at +{fmt_rel(m.ts - t.start_ns)}: {m.reason}"
            out.append(_rect(m, i, x0, x1, y, 1, verdict, tip))
    return out


def _rect(m: WindowMark, i: int, x0: float, x1: float, y: float, n: int, verdict: str,
          tip: str) -> str:
    return (f'<rect class="mark v-{verdict}" x="{x0:.2f}" y="{y:.0f}" width="{x1 - x0:.2f}" '
            f'height="{MARK_H}" data-n="{n}" data-verdict="{verdict}" data-tgid="{m.tgid}" '
            f'data-vcpu="{m.vcpu}" data-ts="{m.ts}" data-i="{i}"><title>{escape(tip)}</title></rect>')


def histogram(counts: list[int], title: str) -> str:
    """Flush->sync latency histogram: one bar per LATENCY_LABELS bin, then "no sync"."""
    labels = list(LATENCY_LABELS) + ["no sync"]
    bar_w, gap, left, top, plot_h = 30, 4, 30, 16, 80
    width = left + len(labels) * (bar_w + gap) + 8
    height = top + plot_h + 56
    peak = max(max(counts), 1)
    out = [f'<svg class="hist" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>"]
    base = top + plot_h
    for k, (label, n) in enumerate(zip(labels, counts)):
        x = left + k * (bar_w + gap)
        h = plot_h * n / peak
        cls = "bar nosync" if label == "no sync" else "bar"
        out.append(f'<rect class="{cls}" x="{x}" y="{base - h:.1f}" width="{bar_w}" '
                   f'height="{h:.1f}" data-count="{n}"><title>{escape(label)}: {n}</title></rect>')
        if n:
            out.append(f'<text class="barcount" x="{x + bar_w / 2}" y="{base - h - 3:.1f}" '
                       f'text-anchor="middle">{n}</text>')
        out.append(f'<text class="binlabel" x="{x + bar_w / 2}" y="{base + 12}" '
                   f'text-anchor="end" transform="rotate(-35 {x + bar_w / 2} {base + 12})">'
                   f'{escape(label)}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{base}" x2="{width - 8}" y2="{base}"/>')
    out.append("</svg>")
    return "\n".join(out)


def legend(counts: dict[str, int], extra: Optional[str] = None) -> str:
    items = [f'<span class="key"><span class="swatch v-{v}"></span>{v} {counts.get(v, 0)}</span>'
             for v in ("violation", "suspect", "ok", "inconclusive", "open")]
    if extra:
        items.append(extra)
    return f'<p class="legend">{" ".join(items)}</p>'
