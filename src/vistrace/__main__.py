"""`python -m vistrace`: the command line, as `python -m vistrace.cli` runs it (the package's top
layer holds both, so neither imports the other)."""

import runpy

runpy.run_module("vistrace.cli", run_name="__main__", alter_sys=True)
