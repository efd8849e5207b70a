"""certcore: almost tight l0-norm certified robustness of top-k predictions (Jia et al., ICLR 2022).

The cheap half (counts -> bounds -> radius) lives in ``bounds`` and ``radius`` and needs no torch; the expensive
half (ablation sampling with a base classifier) lives in ``ablation`` and ``sampling``.
"""

from certcore.bounds import clopper_pearson_lower, clopper_pearson_upper, rounded_bounds, simuem_bounds
from certcore.radius import (
    BoundCurves,
    bound_curves,
    certified_radius,
    certify_counts,
    levine_feizi_radius,
    radius_limit,
)

__version__ = "0.1.0"

__all__ = [
    "BoundCurves",
    "bound_curves",
    "certified_radius",
    "certify_counts",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "levine_feizi_radius",
    "radius_limit",
    "rounded_bounds",
    "simuem_bounds",
]
