"""Attention knockout: pathways, windows, the sweep (naive and fast), the fast re-run and its
attention bodies, the answer scores, and the answer probability by layer."""
