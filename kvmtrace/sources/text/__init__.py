"""Importers of kernel trace text: ftrace (``/sys/kernel/tracing/trace``, ``trace_pipe``),
``trace-cmd report`` and ``perf script``, into schema events.

- text.py      the importer (``import_text``), reached through
               ``kvmtrace.sources.stream.text_stream``
- lines.py     line formats; payloads.py, sp_text.py: per-event payload decoders
- vms.py       which VM (tgid) each thread belongs to

May import: the contract and ``kvmtrace.sources.frame`` / ``native``.
"""
