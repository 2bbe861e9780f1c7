"""Human-readable text of an analysis result and of one finding (analyze, watch).

May import: the event contract, the model's result types.  Consumes only
``AnalysisResult.to_dict()`` and finding dicts (``analysis.report.finding_dict``).
"""
from __future__ import annotations

from typing import Optional

from kvmtrace.analysis.report import AnalysisResult

HUMAN_FINDINGS = 10
REACH_WORDS = {True: "reachable", False: "unreachable", None: "reachability unknown"}


def format_ns(ns: Optional[int]) -> str:
    if ns is None:
        return "-"
    if ns < 10_000:
        return f"{ns} ns"
    if ns < 10_000_000:
        return f"{ns / 1e3:.1f} us"
    return f"{ns / 1e6:.1f} ms"


def seconds(ns: int) -> str:
    return f"{ns / 1e9:.6f}"


def who(f: dict) -> str:
    """The vCPU of a finding, or its host thread while the vCPU id is unknown."""
    return f"vCPU {f['vcpu']}" if f.get("vcpu") is not None else f"thread {f.get('tid')}"


def finding_lines(f: dict) -> list[str]:
    """One finding (a closed non-ok window): verdict, reason, what was left unsync, context."""
    lines = [f"{seconds(f['ts'])}  {f['verdict'].upper()}"
             + (" (harmless)" if f["harmless"] else "")
             + f" [evidence {f.get('evidence', 'none')}]"
             + f"  VM {f['tgid']} {who(f)}: {f['reason']}"
             + (f" [flush path: {f['opener']}]" if f.get("opener") else "")]
    for r in f.get("root_state", []):
        slot = "root" if r["slot"] == 0 else f"prev root {r['slot']}"
        lines.append(f"    {slot}: gfn {r['gfn']:#x} role {r['role']:#x} unsync {r['unsync']} "
                     f"unsync_children {r['unsync_children']}")
    for o in f["outstanding"]:
        lines.append(f"    left unsync: gfn {o['gfn']:#x} role {o['role']:#x} level "
                     f"{o['level']}, unsync since {seconds(o['unsync_ts'])} (tid "
                     f"{o['unsync_tid']}), {REACH_WORDS[o['reachable']]}")
    for e in f["events"]:
        extra = " ".join(f"{k}={v:#x}" if k in ("gfn", "role", "value") else f"{k}={v}"
                         for k, v in e.items() if k not in ("ts", "tid", "event"))
        lines.append(f"      {seconds(e['ts'])} tid {e['tid']:<7} {e['event']:<20} {extra}")
    return lines


def evidence_line(by: dict) -> str:
    """Windows by the evidence that decided them (window.EVIDENCE)."""
    return (f"evidence: {by.get('exact', 0)} exact (KVM's own root state), "
            f"{by.get('inferred', 0)} inferred (the event stream), {by.get('none', 0)} none")


def render(result: AnalysisResult, max_findings: int = HUMAN_FINDINGS) -> str:
    d = result.to_dict()
    w = d["windows"]
    lines = [f"verdict: {d['verdict'].upper()}  ({w['total']} flush windows, {w['meaningful']} "
             f"meaningful; {w['violation']} violation, {w['suspect']} suspect, {w['ok']} ok, "
             f"{w['inconclusive']} inconclusive, {w['open']} open; lost events "
             f"{d['lost_events']})",
             evidence_line(d.get("evidence", {})),
             f"pattern: {d['pattern']}: {d['pattern_kernels']}"]
    if w["total"] and not w["meaningful"]:
        lines.append("note: no window had anything unsync when its flush was serviced, so none "
                     "tested the kernel")
    if d.get("windows_by_path"):
        lines.append("flush paths: " + ", ".join(
            f"{path} {c['total']} ({c['meaningful']} meaningful, {c['ok']} ok)"
            for path, c in d["windows_by_path"].items()))
    for vm in d["vms"]:
        lines += [""] + _vm_lines(vm)
    findings = d["findings"][:max_findings]
    if findings:
        shown = len(findings)
        more = d["findings_total"] - shown
        lines += ["", f"findings ({d['findings_total']}"
                  + (f", first {shown} shown; --json lists up to 100)" if more else ")")]
    for f in findings:
        first, *rest = finding_lines(f)
        lines += ["- " + first] + rest
    lines += [f"note: {n}" for n in d["notes"]]
    return "\n".join(lines)


def _vm_lines(vm: dict) -> list[str]:
    trace = f" ({vm['trace']})" if vm.get("trace") else ""
    lines = [f"VM tgid {vm['tgid']}{trace}: {vm['verdict']}",
             f"  {'vCPU':<10}{'total':>7}{'meaningful':>11}{'ok':>6}{'viol':>6}"
             f"{'susp':>6}{'inconc':>8}{'open':>6}  flush->sync mean / max"]
    for row in vm["vcpus"]:
        c = row["windows"]
        label = str(row["vcpu"]) if row["vcpu"] is not None else f"tid {row['tids'][0]}"
        lat = row["latency_ns"]
        lines.append(f"  {label:<10}{c['total']:>7}{c['meaningful']:>11}{c['ok']:>6}"
                     f"{c['violation']:>6}{c['suspect']:>6}{c['inconclusive']:>8}"
                     f"{c['open']:>6}  {format_ns(lat['mean'])} / {format_ns(lat['max'])}")
    return lines
