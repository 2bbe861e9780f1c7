"""Which VM each host thread belongs to: a thread's TGID is the process of its VMM.

Sources, strongest first:
1. the trace itself - ftrace's ``(TGID)`` column (options/record-tgid), perf's ``pid/tid``;
2. ``--tgid-map TID=TGID`` from the user; a thread whose tid equals a mapped TGID is that
   process's main thread;
3. otherwise, when nothing at all names a TGID, all threads are assumed to be one VM with the
   synthetic tgid 0 (``vm_assignment = "single-vm-assumed"``, said in the notes).

Threads left unassigned once some TGIDs are known (e.g. ``kvm-nx-lpage-recovery``, which is
a worker of the VMM process since 6.13, or a thread the map forgot) join the VM when exactly
one VM is known; with several VMs the import refuses and names them, because guessing would
attribute shadow-page events to the wrong VM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SINGLE_VM_TGID = 0


class VmAssignmentError(ValueError):
    """Threads cannot be attributed to a VM without guessing."""


@dataclass
class Assignment:
    tgid_of: dict[int, int]
    how: str                                  # TraceMeta.vm_assignment
    notes: list[str] = field(default_factory=list)


def _describe(tids: list[int], comms: dict[int, str], limit: int = 8) -> str:
    shown = ", ".join(f"{t} ({comms.get(t, '?')})" for t in tids[:limit])
    return shown + (f" and {len(tids) - limit} more" if len(tids) > limit else "")


def assign(tids: set[int], from_source: dict[int, int], tgid_map: dict[int, int] | None,
           comms: dict[int, str]) -> Assignment:
    """Map every thread in ``tids`` to a TGID (see the module docstring for the rules)."""
    tgid_of = {t: g for t, g in from_source.items() if t in tids}
    how = "tgid"
    if tgid_map:
        mapped_processes = set(tgid_map.values())
        used = False
        for t in tids:
            if t in tgid_of:
                continue
            if t in tgid_map:
                tgid_of[t] = tgid_map[t]
                used = True
            elif t in mapped_processes:
                tgid_of[t] = t
                used = True
        if used:
            how = "tgid-map"
    missing = sorted(t for t in tids if t not in tgid_of)
    if not missing:
        return Assignment(tgid_of, how)
    known = sorted(set(tgid_of.values()))
    if not known:
        for t in missing:
            tgid_of[t] = SINGLE_VM_TGID
        return Assignment(tgid_of, "single-vm-assumed", [
            f"the source has no TGID and no --tgid-map was given: all {len(missing)} threads "
            f"are assumed to belong to one VM (tgid {SINGLE_VM_TGID})"])
    if len(known) == 1:
        for t in missing:
            tgid_of[t] = known[0]
        return Assignment(tgid_of, how, [
            f"threads {_describe(missing, comms)} have no TGID: assigned to the only VM, "
            f"tgid {known[0]}"])
    raise VmAssignmentError(
        f"threads {_describe(missing, comms)} belong to none of the VMs "
        f"{', '.join(map(str, known))}; name them with --tgid-map TID=TGID")
