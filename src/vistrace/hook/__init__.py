"""The seam: one attention function registered with transformers, its per-run plan, `traced`."""

from vistrace.hook.plan import CaptureRecorder, Knockout, Plan, active_plan, use_plan
from vistrace.hook.seam import SEAM_NAME, register, seam_attention
from vistrace.hook.traced import UnreachedLayersError, traced

__all__ = [
    "SEAM_NAME",
    "CaptureRecorder",
    "Knockout",
    "Plan",
    "UnreachedLayersError",
    "active_plan",
    "register",
    "seam_attention",
    "traced",
    "use_plan",
]
