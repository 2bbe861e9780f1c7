"""The fleet report: a verdict per host (worst first), kernel patterns by release, and the
JSON with every per-(host, VM) row.  Every engine's rows render the same.

May import: the contract, the model's result types (``analysis.fleet.summarize``).
"""
from __future__ import annotations

import json
from typing import Any

from kvmtrace.analysis.fleet import summarize
from kvmtrace.analysis.window import GENERATIONS

HOSTS_SHOWN = 50
FINDINGS_SHOWN = 5


def fleet_dict(rows: list[dict], run: dict[str, Any]) -> dict:
    """``--json``: the summary, how the run went, and the rows under ``rows`` (findings and
    notes decoded from their JSON text)."""
    out = summarize(rows)
    out["run"] = run
    out["rows"] = [{**r, "vcpus": json.loads(r["vcpus"]), "findings": json.loads(r["findings"]),
                    "notes": json.loads(r["notes"])} for r in rows]
    return out


def _windows(w: dict) -> str:
    return (f"{w['total']:>8}{w['meaningful']:>11}{w['violation']:>6}{w['suspect']:>6}"
            f"{w['ok']:>8}{w['inconclusive']:>8}{w['open']:>6}")


def render(rows: list[dict], run: dict[str, Any], hosts_shown: int = HOSTS_SHOWN) -> str:
    s = summarize(rows)
    hv = s["host_verdicts"]
    lines = [f"fleet: {s['verdict'].upper()}  ({len(s['hosts'])} hosts, {s['vms']} VMs, "
             f"{s['events']:,} events; hosts: "
             + ", ".join(f"{hv.get(v, 0)} {v}" for v in
                         ("violation", "suspect", "inconclusive", "no-flushes", "ok")) + ")",
             f"engine {run['engine']}: {run['partitions']} partitions, {run['parts']} parts, "
             f"{run['elapsed_s']:.1f} s ({run['events_per_s']:,.0f} events/s)", "",
             f"{'host':<24}{'verdict':<14}{'VMs':>5}{'windows':>8}{'meaningful':>11}{'viol':>6}"
             f"{'susp':>6}{'ok':>8}{'inconc':>8}{'open':>6}{'lost':>8}  kernel"]
    for h in s["hosts"][:hosts_shown]:
        lines.append(f"{h['host'][:23]:<24}{h['verdict']:<14}{h['vms']:>5}{_windows(h['windows'])}"
                     f"{h['lost_events']:>8}  {','.join(h['kernels']) or '?'}")
    if len(s["hosts"]) > hosts_shown:
        lines.append(f"... {len(s['hosts']) - hosts_shown} more hosts (--json lists all)")
    lines += ["", "kernel patterns:"]
    for k in s["kernels"]:
        patterns = ", ".join(f"{p} {n} VMs" for p, n in k["patterns"].items())
        lines.append(f"  {k['kernel']:<28} {k['hosts']} hosts, {k['vms']} VMs: {patterns}")
        for p in k["patterns"]:
            if p in GENERATIONS and p != "unknown":
                lines.append(f"    {p}: {GENERATIONS[p]}")
    shown = _first_findings(rows)
    if shown:
        lines += ["", "first findings of the worst hosts:"] + shown
    return "\n".join(lines)


def _first_findings(rows: list[dict]) -> list[str]:
    from kvmtrace.outputs.text import finding_lines
    worst = [r for r in rows if r["verdict"] in ("violation", "suspect")]
    worst.sort(key=lambda r: (r["verdict"] != "violation", r["host"], r["vm"]))
    lines = []
    for r in worst:
        for f in json.loads(r["findings"]):
            if f["verdict"] != r["verdict"]:
                continue
            first, *_ = finding_lines(f)
            lines.append(f"- {r['host']}: {first}")
            break
        if len(lines) >= FINDINGS_SHOWN:
            break
    return lines
