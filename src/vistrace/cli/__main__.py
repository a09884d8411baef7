"""`python -m vistrace.cli`: the command line."""

from vistrace.cli import main

main()
