"""Importers of kernel trace text: ftrace (``/sys/kernel/tracing/trace``, ``trace_pipe``),
``trace-cmd report`` and ``perf script``, into schema events.

- text.py      the streaming reader (``TextReader``: blocks -> schema chunks, skipped-line
               tally), reached through ``kvmtrace.sources.stream.text_stream``
- decode.py    one line -> rows (every form), and the block scan that the compiled
               ``_fastscan.c`` replaces for the common forms
- lines.py     line shapes; payloads.py, sp_text.py: per-event payload decoders
- vms.py       which VM (tgid) each thread belongs to

May import: the contract and ``kvmtrace.sources.frame`` / ``native``.
"""
