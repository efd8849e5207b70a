"""certcore: almost tight l0-norm certified robustness of top-k predictions (Jia et al., ICLR 2022).

The cheap half (counts -> bounds -> radius, result files, the paper's tables) needs no torch and is imported
eagerly. The expensive half (ablation sampling, models, checkpoints, data) imports torch, so its names are loaded
on first use (PEP 562): ``from certcore import load_checkpoint`` works, while ``import certcore`` alone stays light.
"""

from importlib import import_module
from typing import Any

from certcore.anytime import anytime_bounds
from certcore.bounds import clopper_pearson_lower, clopper_pearson_upper, rounded_bounds, simuem_bounds
from certcore.paper import PAPER_ROWS, PaperRow, paper_rows, paper_table_markdown
from certcore.radius import (
    BoundCurves,
    bound_curves,
    certified_radius,
    certify_counts,
    levine_feizi_radius,
    radius_limit,
)
from certcore.results import (
    IncompleteLineWarning,
    ResultsError,
    accuracy_table,
    certified_accuracy,
    describe_run,
    list_result_files,
    read_results,
)

__version__ = "0.1.0"

_LAZY = {
    "certcore.ablation": ("ablate", "ablated_previews", "draw_keep_masks", "encode_ablated"),
    "certcore.sampling": ("SamplingCancelled", "SamplingResult", "sample_counts"),
    # certify() itself: ``from certcore.certify import certify`` (the submodule of that name shadows it here)
    "certcore.certify": ("Certificate", "certificate_from_counts"),
    "certcore.models": ("build_model", "init_from_clean_cifar"),
    "certcore.checkpoints": (
        "CheckpointError",
        "CheckpointInfo",
        "CheckpointWarning",
        "checkpoint_sha256",
        "list_checkpoints",
        "load_checkpoint",
        "save_checkpoint",
    ),
    "certcore.data": ("Sample", "bundled_samples", "class_names", "evaluation_indices", "load_uploaded_image"),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """Load a torch-backed public name from its module on first use."""
    if name in _LAZY_NAMES:
        return getattr(import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'certcore' has no attribute {name!r}")


__all__ = [
    "PAPER_ROWS",
    "BoundCurves",
    "IncompleteLineWarning",
    "PaperRow",
    "ResultsError",
    "accuracy_table",
    "anytime_bounds",
    "bound_curves",
    "certified_accuracy",
    "certified_radius",
    "certify_counts",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "describe_run",
    "levine_feizi_radius",
    "list_result_files",
    "paper_rows",
    "paper_table_markdown",
    "radius_limit",
    "read_results",
    "rounded_bounds",
    "simuem_bounds",
    *_LAZY_NAMES,
]
