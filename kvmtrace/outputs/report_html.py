"""The self-contained HTML report: one file, no network, readable with JavaScript off.

Sections: the verdict banner and flush pattern (the kernel generation, docs/design.md §2), the
windows-over-time strip, the per-VM / per-vCPU table, each finding with the shadow pages
(``struct kvm_mmu_page``) it left unsync and the events around it, flush->sync latency
histograms per vCPU, the trace's metadata and lost events, and how to open the timeline
in Perfetto.  The analysis data is embedded as ``<script type="application/json"
id="kvmtrace-data">`` (``analysis`` is exactly ``analyze --json``), so the page and the
JSON agree; a Content-Security-Policy forbids every load from outside the file.  The small
script only sorts tables and filters by verdict.

May import: the model's result types, ``pipeline.visual`` and ``outputs.report_svg``.
"""
from __future__ import annotations

import json
import shlex
from bisect import bisect_left, bisect_right
from html import escape
from typing import Any, Optional

from kvmtrace import __version__
from kvmtrace.outputs.report_svg import fmt_rel, histogram, legend, strip
from kvmtrace.outputs.text import REACH_WORDS, format_ns, seconds, who
from kvmtrace.pipeline.visual import LATENCY_LABELS, TraceVisual, VisualData, instant_label

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:")
WINDOW_COLUMNS = ("tgid", "vcpu", "tid", "ts_rel_ns", "dur_ns", "verdict", "latency_ns",
                  "meaningful", "reason")
MAX_LOST_ROWS = 50
MAX_AROUND = 12


def _e(value: Any) -> str:
    return escape(str(value))


def page(data: VisualData, *, context: Optional[dict] = None,
         traces_for_commands: Optional[list[str]] = None) -> str:
    """The whole HTML document.  ``context``: a check or watch that saw this (its verdict
    and reasons are shown under the banner)."""
    analysis = data.result.to_dict()
    paths = traces_for_commands if traces_for_commands is not None else [t.label for t in data.traces]
    body = [
        _banner(analysis, context),
        _strips(data),
        _table(analysis),
        _findings(analysis, data),
        _latency(data),
        _trace_info(data, analysis),
        _perfetto(paths),
    ]
    blob = {"generator": f"kvmtrace {__version__}", "analysis": analysis,
            "context": context, "traces": [_trace_blob(t) for t in data.traces]}
    embedded = json.dumps(blob, separators=(",", ":")).replace("</", "<\\/")
    title = f"kvmtrace report: {analysis['verdict'].upper()}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>", *body,
        f'<script type="application/json" id="kvmtrace-data">{embedded}</script>',
        f"<script>{SCRIPT}</script>", "</body></html>", ""])


def _banner(a: dict, context: Optional[dict]) -> str:
    w = a["windows"]
    lines = [f'<header id="banner" class="banner v-{_e(a["verdict"])}" '
             f'data-verdict="{_e(a["verdict"])}">',
             f'<div class="tool">kvmtrace report</div>'
             f'<h1 id="verdict">{_e(a["verdict"].upper())}</h1>',
             f'<p id="pattern">pattern: <b>{_e(a["pattern"])}</b>: {_e(a["pattern_kernels"])}</p>',
             f'<p id="counts">{w["total"]} flush windows, {w["meaningful"]} meaningful: '
             f'{w["violation"]} violation, {w["suspect"]} suspect, {w["ok"]} ok, '
             f'{w["inconclusive"]} inconclusive, {w["open"]} open; lost events '
             f'{a["lost_events"]}; {a["events"]} events from {len(a["traces"])} trace(s)</p>']
    if context:
        lines.append(f'<p id="context"><b>{_e(context.get("command", ""))}: '
                     f'{_e(str(context.get("verdict", "")).upper())}</b></p>')
        reasons = context.get("reasons") or []
        if reasons:
            lines.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    if w["total"] and not w["meaningful"]:
        lines.append("<p>No window had anything unsync when its flush was serviced, so none "
                     "tested the kernel.</p>")
    lines.append("</header>")
    return "\n".join(lines)


def _strips(data: VisualData) -> str:
    out = ['<section id="windows"><h2>Flush windows over time</h2>',
           "<p>One row per vCPU; one mark per flush window, from the serviced guest flush "
           "to the vCPU's next guest run, placed at its time from the trace start. "
           "Violations are red. Ok windows that share a pixel column share a mark (hover "
           "for the count).</p>", '<div id="filters"></div>']
    for i, t in enumerate(data.traces):
        counts: dict[str, int] = {}
        for m in t.windows:
            counts[m.verdict] = counts.get(m.verdict, 0) + 1
        lost = ('<span class="key"><span class="swatch lostkey"></span>lost events</span>'
                if t.lost else None)
        out.append(f'<figure class="trace-strip"><figcaption>{_e(t.label)}: '
                   f'{fmt_rel(t.end_ns - t.start_ns)} from {seconds(t.start_ns)} s</figcaption>')
        if t.windows:
            out.append(legend(counts, lost))
            out.append(f'<div class="scroll">{strip(t, i)}</div>')
        else:
            out.append("<p>No flush window in this trace.</p>")
        if t.windows_dropped:
            out.append(f"<p class=\"warn\">Only the first {len(t.windows)} of {t.windows_total} "
                       "windows are drawn (memory cap); the counts include all.</p>")
        out.append("</figure>")
    out.append("</section>")
    return "\n".join(out)


def _table(a: dict) -> str:
    head = ("VM", "vCPU", "host threads", "verdict", "total", "meaningful", "ok", "violation",
            "suspect", "inconclusive", "open", "flush->sync mean", "max")
    out = ['<section id="vcpus"><h2>VMs and vCPUs</h2>', '<table class="sortable" id="vcpu-table">',
           "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for vm in a["vms"]:
        for row in vm["vcpus"]:
            c = row["windows"]
            lat = row["latency_ns"]
            vcpu = row["vcpu"] if row["vcpu"] is not None else "?"
            cells = [(vm["tgid"], vm["tgid"]), (vcpu, row["vcpu"] if row["vcpu"] is not None else -1),
                     (" ".join(map(str, row["tids"])), row["tids"][0] if row["tids"] else -1)]
            out.append(f'<tr class="v-{_e(row["verdict"])}" data-verdict="{_e(row["verdict"])}">'
                       + "".join(f'<td data-sort="{_e(s)}">{_e(v)}</td>' for v, s in cells)
                       + f'<td class="verdict">{_e(row["verdict"])}</td>'
                       + "".join(f'<td data-sort="{c[k]}">{c[k]}</td>' for k in
                                 ("total", "meaningful", "ok", "violation", "suspect",
                                  "inconclusive", "open"))
                       + f'<td data-sort="{lat["mean"] if lat["mean"] is not None else -1}">'
                         f'{format_ns(lat["mean"])}</td>'
                       + f'<td data-sort="{lat["max"] if lat["max"] is not None else -1}">'
                         f'{format_ns(lat["max"])}</td></tr>')
    out.append("</tbody></table>")
    out.append(_paths(a.get("windows_by_path") or {}))
    out.append("</section>")
    return "\n".join(out)


def _paths(by_path: dict) -> str:
    """Windows per guest flush path (analysis.flushpaths), when the result counts them."""
    if not by_path:
        return ""
    keys = ("total", "meaningful", "ok", "violation", "suspect", "inconclusive", "open")
    rows = "".join(f"<tr><td>{_e(p)}</td>" + "".join(f"<td>{c.get(k, 0)}</td>" for k in keys)
                   + "</tr>" for p, c in by_path.items())
    return ("<h3>Flush windows by guest flush path</h3><table class=\"sortable\" id=\"path-table\">"
            "<thead><tr><th>flush path</th>" + "".join(f"<th>{k}</th>" for k in keys)
            + f"</tr></thead><tbody>{rows}</tbody></table>")


def _trace_of(data: VisualData, f: dict) -> Optional[TraceVisual]:
    for t in data.traces:
        if not f.get("trace") or f.get("trace") == t.label:
            return t
    return None


def _vm_instants(t: Optional[TraceVisual], f: dict) -> list:
    """The shadow-MMU and flush instants of the finding's VM (any thread) from 1 ms before
    the flush (or the first outstanding SP's unsync) to the window's close."""
    if t is None:
        return []
    lo = min([f["ts"] - 1_000_000] + [o["unsync_ts"] for o in f["outstanding"]])
    hi = f["closed_ts"] if f["closed_ts"] is not None else f["ts"] + 1_000_000
    ts = [i.ts for i in t.instants]
    got = [i for i in t.instants[bisect_left(ts, lo):bisect_right(ts, hi)] if i.tgid == f["tgid"]]
    if len(got) > MAX_AROUND:                    # keep the ones nearest the flush
        got = sorted(sorted(got, key=lambda i: abs(i.ts - f["ts"]))[:MAX_AROUND])
    return got


def _findings(a: dict, data: VisualData) -> str:
    out = ['<section id="findings"><h2>Findings</h2>']
    if not a["findings"]:
        out.append("<p>No violation, suspect or inconclusive window.</p></section>")
        return "\n".join(out)
    more = a["findings_total"] - len(a["findings"])
    out.append(f"<p>{a['findings_total']} window{'s were' if a['findings_total'] != 1 else ' was'} not ok"
               + (f"; the first {len(a['findings'])} are listed" if more else "") + ".</p>")
    for n, f in enumerate(a["findings"], 1):
        t = _trace_of(data, f)
        start = t.start_ns if t is not None else data.start_ns
        out.append(f'<article class="finding v-{_e(f["verdict"])}" id="finding-{n}" '
                   f'data-verdict="{_e(f["verdict"])}" data-ts="{f["ts"]}">')
        out.append(f"<h3>{_e(f['verdict'].upper())}{' (harmless)' if f['harmless'] else ''} "
                   f"at +{fmt_rel(f['ts'] - start)} ({seconds(f['ts'])} s), VM {f['tgid']} "
                   f"{_e(who(f))}</h3>")
        out.append(f"<p>{_e(f['reason'])}</p>")
        facts = [f"pattern {f['pattern']}", f"host thread {f['tid']}",
                 "closed at " + (f"+{fmt_rel(f['closed_ts'] - start)}" if f["closed_ts"] is not None
                                 else "the end of the trace (still open)")]
        for key, word in (("opener", "flush path"), ("obligation", "sync obligation"),
                          ("evidence", "evidence")):
            if f.get(key) is not None:
                facts.append(f"{word} {f[key]}")
        if f.get("trace"):
            facts.append(f"trace {f['trace']}")
        out.append(f'<p class="facts">{_e("; ".join(facts))}</p>')
        out.append(_outstanding(f, start))
        out.append(_events(f, start))
        out.append(_around(_vm_instants(t, f), f, start))
        out.append("</article>")
    out.append("</section>")
    return "\n".join(out)


def _outstanding(f: dict, start: int) -> str:
    if not f["outstanding"]:
        return "<p>No shadow page is known to have been left unsync.</p>"
    rows = "".join(
        f"<tr><td>{o['gfn']:#x}</td><td>{o['role']:#x}</td><td>{o['level']}</td>"
        f"<td>+{fmt_rel(o['unsync_ts'] - start)}</td><td>{o['unsync_tid']}</td>"
        f"<td>{_e(REACH_WORDS[o['reachable']])}</td></tr>" for o in f["outstanding"])
    return ("<h4>Shadow pages left unsync</h4><table class=\"sps\"><thead><tr><th>gfn</th>"
            "<th>role</th><th>level</th><th>unsync since</th><th>by thread</th>"
            f"<th>reachable from the root</th></tr></thead><tbody>{rows}</tbody></table>")


def _events(f: dict, start: int) -> str:
    if not f["events"]:
        return ""
    rows = []
    for e in f["events"]:
        extra = " ".join(f"{k}={v:#x}" if k in ("gfn", "role", "value") else f"{k}={v}"
                         for k, v in e.items() if k not in ("ts", "tid", "event"))
        rows.append(f"<tr><td>+{fmt_rel(e['ts'] - start)}</td><td>{seconds(e['ts'])}</td>"
                    f"<td>{e['tid']}</td><td>{_e(e['event'])}</td><td>{_e(extra)}</td></tr>")
    return ("<h4>Events around it</h4><table class=\"events\"><thead><tr><th>from start</th>"
            "<th>time (s)</th><th>thread</th><th>event</th><th>fields</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


MAX_HISTOGRAMS = 24            # drawn for the vCPUs with most windows; the table has all


def _around(instants: list, f: dict, start: int) -> str:
    if not instants:
        return ""
    rows = []
    for i in instants:
        what = (f"gfn={i.gfn:#x} role={i.role:#x} level={i.level}" if i.kind.startswith("sp_")
                else "")
        mark = ' class="this"' if i.ts == f["ts"] and i.tid == f["tid"] else ""
        rows.append(f"<tr{mark}><td>+{fmt_rel(i.ts - start)}</td><td>{i.tid}</td>"
                    f"<td>{_e(instant_label(i.kind)[1])}</td><td>{_e(what)}</td></tr>")
    return (f"<h4>What the shadow MMU of VM {f['tgid']} did around it (every thread)</h4>"
            "<table class=\"around\"><thead><tr><th>from start</th><th>thread</th><th>event</th>"
            f"<th>fields</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _latency(data: VisualData) -> str:
    out = ['<section id="latency"><h2>Flush to sync latency per vCPU</h2>',
           "<p>From the serviced guest flush to the first sync action in its window "
           "(kvm_mmu_sync_roots, a synced shadow page or a root reload); windows that closed "
           "without one are counted under \"no sync\".</p>"]
    multi = len(data.traces) > 1
    rows = [(t, tgid, vcpu, counts) for t in data.traces
            for (tgid, vcpu), counts in sorted(t.latency.items()) if sum(counts)]
    if not rows:
        out.append("<p>No closed window.</p></section>")
        return "\n".join(out)
    drawn = sorted(rows, key=lambda r: -sum(r[3]))[:MAX_HISTOGRAMS]
    if len(rows) > len(drawn):
        out.append(f"<p>Histograms for the {len(drawn)} vCPUs with most windows; the table "
                   f"below has all {len(rows)}.</p>")
    out.append('<div class="hists">')
    for t, tgid, vcpu, counts in sorted(drawn, key=lambda r: rows.index(r)):
        name = f"VM {tgid} vCPU {vcpu if vcpu >= 0 else '?'}"
        title = f"{name}: flush->sync latency, {sum(counts)} closed windows"
        out.append(f'<figure class="hist-fig"><figcaption>{_e(name)}'
                   + (f" ({_e(t.label)})" if multi else "")
                   + f"</figcaption>{histogram(counts, title)}</figure>")
    out.append("</div>")
    labels = list(LATENCY_LABELS) + ["no sync"]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["VM", "vCPU"] + labels)
    body = "".join(
        f"<tr><td>{tgid}</td><td>{vcpu if vcpu >= 0 else '?'}</td>"
        + "".join(f"<td>{n}</td>" for n in counts) + "</tr>"
        for _, tgid, vcpu, counts in rows)
    out.append(f'<table class="sortable latency" id="latency-table"><thead><tr>{head}</tr>'
               f"</thead><tbody>{body}</tbody></table></section>")
    return "\n".join(out)


META_FIELDS = ("source", "source_format", "source_path", "kernel_release", "kvm_backend", "tdp",
               "clock", "start_time_ns", "start_wall", "lost_events", "vm_assignment",
               "tool_version")


def _trace_info(data: VisualData, a: dict) -> str:
    out = ['<section id="trace"><h2>Trace</h2>']
    for t in data.traces:
        m = t.meta
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(m.get(k, ''))}</td></tr>"
                       for k in META_FIELDS if k in m)
        rows += (f"<tr><th>span</th><td>{fmt_rel(t.end_ns - t.start_ns)} (start from "
                 f"{_e(t.start_source)})</td></tr>")
        if m.get("lost_per_cpu"):
            rows += f"<tr><th>lost per CPU</th><td>{_e(m['lost_per_cpu'])}</td></tr>"
        out.append(f"<h3>{_e(t.label)}</h3><table class=\"meta\">{rows}</table>")
        if m.get("probes"):
            out.append(f"<details><summary>{len(m['probes'])} probes in the trace's "
                       "metadata</summary><p class=\"mono\">"
                       + "<br>".join(_e(p) for p in m["probes"]) + "</p></details>")
        out.append(_lost(t))
    if a["notes"]:
        out.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in a["notes"]) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def _lost(t: TraceVisual) -> str:
    total = int(t.meta.get("lost_events", 0) or 0)
    if not t.lost and not total:
        return '<p class="lost-none">No event was lost.</p>'
    markers = sum(c for _, c in t.lost)
    out = [f'<p class="lost-summary">Lost events: {max(total, markers)} '
           f"({len(t.lost) + t.lost_markers_dropped} loss markers in the stream).</p>"]
    if t.lost:
        rows = "".join(f"<tr><td>+{fmt_rel(ts - t.start_ns)}</td><td>{seconds(ts)}</td>"
                       f"<td>{c}</td></tr>" for ts, c in t.lost[:MAX_LOST_ROWS])
        out.append("<table class=\"lost\"><thead><tr><th>from start</th><th>time (s)</th>"
                   f"<th>events lost</th></tr></thead><tbody>{rows}</tbody></table>")
    return "\n".join(out)


def _perfetto(paths: list[str]) -> str:
    cmd = "kvmtrace timeline " + " ".join(shlex.quote(p) for p in paths) + " -o timeline.json"
    return ('<section id="perfetto"><h2>Every event on a timeline</h2>'
            f"<p>Make a timeline of the same trace with <code>{_e(cmd)}</code>, then open "
            "<code>timeline.json</code> in the Perfetto UI (ui.perfetto.dev, \"Open trace "
            "file\"; the file is read by your browser and not uploaded) or in Chromium's "
            "chrome://tracing (\"Load\"). Each VM is a process and each vCPU a thread; each "
            "flush window is a slice whose name starts with its verdict, with shadow-page "
            "sync, unsync and zap events and the flush requests as instants on the same "
            "thread.</p></section>")


def _trace_blob(t: TraceVisual) -> dict:
    reasons: dict[str, int] = {}
    rows = []
    for m in t.windows:
        dur = None if m.closed_ts is None else m.closed_ts - m.ts
        rows.append([m.tgid, m.vcpu, m.tid, m.ts - t.start_ns, dur, m.verdict, m.latency_ns,
                     int(m.meaningful), reasons.setdefault(m.reason, len(reasons))])
    return {"trace": t.label, "meta": t.meta, "start_ns": t.start_ns, "end_ns": t.end_ns,
            "windows_total": t.windows_total, "windows_drawn": len(t.windows),
            "windows": {"columns": list(WINDOW_COLUMNS), "rows": rows},
            "reasons": list(reasons),
            "lost": [[ts, c] for ts, c in t.lost[:MAX_LOST_ROWS]],
            "latency_bins": list(LATENCY_LABELS) + ["no sync"],
            "latency": [{"tgid": k[0], "vcpu": k[1], "counts": v}
                        for k, v in sorted(t.latency.items())]}


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:0 auto;max-width:1040px;padding:0 16px 40px;color:#1d1d1f;background:#fff}
h2{margin:28px 0 8px;font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 4px}h4{font-size:13px;margin:10px 0 4px}
.banner{margin:16px 0;padding:14px 18px;border-radius:8px;color:#fff;background:#6b6b6b}
.banner h1{margin:0;font-size:30px;letter-spacing:.04em}.banner p{margin:4px 0}
.banner .tool{opacity:.85;font-size:12px;text-transform:uppercase;letter-spacing:.08em}
.banner.v-violation{background:#c62828}.banner.v-suspect{background:#e67700}
.banner.v-ok{background:#2e7d32}.banner.v-inconclusive,.banner.v-no-flushes{background:#616161}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}table.sortable thead th{cursor:pointer}
td.verdict{font-weight:600}tr.v-violation td.verdict{color:#c62828}
tr.v-suspect td.verdict{color:#b85c00}tr.v-ok td.verdict{color:#2e7d32}
.finding{border-left:5px solid #999;padding:4px 12px;margin:12px 0;background:#fafafa}
.finding.v-violation{border-color:#d62728}.finding.v-suspect{border-color:#ff7f0e}
.facts{color:#555;font-size:12.5px}.mono,code{font-family:"DejaVu Sans Mono",monospace;font-size:12px}
.scroll{overflow-x:auto}figure{margin:10px 0}figcaption{font-weight:600;font-size:13px}
svg text{font:11px "DejaVu Sans",sans-serif;fill:#333}
.lane{fill:#f4f4f4}.axis,.tick{stroke:#777}.lost{stroke:#8e24aa;stroke-dasharray:3 2}
.mark.v-ok,.swatch.v-ok{fill:#2ca02c;background:#2ca02c}
.mark.v-violation,.swatch.v-violation{fill:#d62728;background:#d62728}
.mark.v-suspect,.swatch.v-suspect{fill:#ff7f0e;background:#ff7f0e}
.mark.v-inconclusive,.swatch.v-inconclusive{fill:#9e9e9e;background:#9e9e9e}
.mark.v-open,.swatch.v-open{fill:#64b5f6;background:#64b5f6}
.mark.v-violation{stroke:#7f0000;stroke-width:1}
.swatch{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;vertical-align:-1px}
.swatch.lostkey{background:#8e24aa}.legend{margin:2px 0;font-size:13px}
.bar{fill:#4878a8}.bar.nosync{fill:#c0392b}.hists{display:flex;flex-wrap:wrap;gap:8px 24px}
tr.this td{font-weight:600}.warn{color:#b85c00}.hidden{display:none}#filters label{margin-right:12px;font-size:13px}
"""

SCRIPT = """
(function(){
  function key(td){var s=td.getAttribute('data-sort');var n=parseFloat(s);
    return (s!==null&&!isNaN(n))?n:(td.textContent||'').toLowerCase();}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th,col){
      th.title='click to sort';
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-dir')!=='asc';th.setAttribute('data-dir',asc?'asc':'desc');
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          return (x<y?-1:x>y?1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});});});});
  var data=JSON.parse(document.getElementById('kvmtrace-data').textContent);
  document.querySelectorAll('svg.strip').forEach(function(svg,k){
    var tr=data.traces[k];if(!tr){return;}
    svg.addEventListener('mouseover',function(ev){
      var el=ev.target;if(!el.classList||!el.classList.contains('mark')||el.querySelector('title')){return;}
      var row=tr.windows.rows[+el.getAttribute('data-i')];if(!row){return;}
      var n=+el.getAttribute('data-n');var t=document.createElementNS('http://www.w3.org/2000/svg','title');
      t.textContent=(n>1?n+' '+row[5]+' windows from ':row[5]+' window at ')+'+'+(row[3]/1e6).toFixed(3)+
        ' ms, VM '+row[0]+' vCPU '+row[1]+(n>1?'':': '+tr.reasons[row[8]]);
      el.appendChild(t);});});
  var box=document.getElementById('filters');if(!box){return;}
  ['violation','suspect','ok','inconclusive','open'].forEach(function(v){
    var n=document.querySelectorAll('rect.mark.v-'+v).length;if(!n){return;}
    var label=document.createElement('label');var cb=document.createElement('input');
    cb.type='checkbox';cb.checked=true;cb.setAttribute('data-verdict',v);
    cb.addEventListener('change',function(){
      document.querySelectorAll('.mark.v-'+v+', .finding.v-'+v).forEach(function(el){
        el.classList.toggle('hidden',!cb.checked);});});
    label.appendChild(cb);label.appendChild(document.createTextNode(' show '+v));
    box.appendChild(label);});
})();
"""
