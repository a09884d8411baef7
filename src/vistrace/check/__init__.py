"""`vistrace check`: the contracts with the installed transformers (`contracts`), then the seam's
invariants on the user's own model, with a synthetic image (`invariants`)."""

from vistrace.check.contracts import CheckResult, run_contracts, synthetic_image
from vistrace.check.invariants import (
    CHECKS,
    TOLERANCES,
    Check,
    Tolerance,
    format_results,
    run_checks,
    tolerance_for,
)

__all__ = [
    "CHECKS",
    "TOLERANCES",
    "Check",
    "CheckResult",
    "Tolerance",
    "format_results",
    "run_checks",
    "run_contracts",
    "synthetic_image",
    "tolerance_for",
]
