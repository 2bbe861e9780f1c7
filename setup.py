"""Build hook: the optional compiled scanner of the text importer.

Everything else is in pyproject.toml.  The extension is ``optional``: without a C compiler
(or Python headers) the install still succeeds and the importer runs its pure-Python path,
which gives identical results (tests/test_fastscan.py), only slower.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("kvmtrace.sources.text._fastscan",
                             ["kvmtrace/sources/text/_fastscan.c"],
                             extra_compile_args=["-O2"], optional=True)])
