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

The streaming reader (text.py, ``_vm_of``) applies these rules chunk by chunk.
"""
from __future__ import annotations

SINGLE_VM_TGID = 0     # the synthetic process of "all threads are one VM"
