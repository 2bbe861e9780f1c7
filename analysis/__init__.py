"""The shadow-MMU replay model (DESIGN §3): pure Python + numpy, no BCC, no live collector.

- shadow.py   one VM's shadow pages (struct kvm_mmu_page), unsync set, known SP tree
- vcpu.py     one vCPU through its host thread: root, walk, open flush window
- window.py   the flush window, its verdict and the kernel generation's flush pattern
- select.py   vectorised choice of the events the model must see one by one
- replay.py   Replayer: one handler method per event kind; feed(chunk) / finish()
- report.py   aggregation into the verdict, JSON object and human report
- stream.py   analyze_path(s): chunked replay of trace files
- generations.py  the kernel-generation fixture generator
"""
from .replay import Event, Replayer, replay_frame
from .report import AnalysisResult, render
from .stream import analyze_path, analyze_paths
from .window import FlushWindow

__all__ = ["Replayer", "replay_frame", "Event", "AnalysisResult", "render", "analyze_path",
           "analyze_paths", "FlushWindow"]
