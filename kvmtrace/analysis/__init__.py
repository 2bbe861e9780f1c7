"""The shadow-MMU replay model: the leaf layer.

May import: ``kvmtrace.schema`` (the event contract), numpy, and ``kvmtrace.factorize``
(which imports pandas for big chunks only).  Never files, importers, BCC, the live recorder, outputs or the CLI
(``tests/test_layers.py`` checks it).

- shadow.py     one VM's shadow pages (``struct kvm_mmu_page``), unsync set, known SP tree
- vcpu.py       one vCPU through its host thread (``struct kvm_vcpu``): root, walk, window
- window.py     the flush window, its verdict and the kernel generation's flush pattern
- selection.py  vectorised choice of the events the model must see one by one
- replay.py     Replayer: one handler method per event kind; feed(chunk) / finish()
- report.py     aggregation of closed windows into per-vCPU, per-VM and trace verdicts
"""
from kvmtrace.analysis.replay import Event, Replayer, replay_frame
from kvmtrace.analysis.report import AnalysisResult
from kvmtrace.analysis.window import FlushWindow

__all__ = ["Replayer", "replay_frame", "Event", "AnalysisResult", "FlushWindow"]
