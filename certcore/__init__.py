"""certcore: almost tight l0-norm certified robustness of top-k predictions (Jia et al., ICLR 2022).

The package is split by layer, each importing only the layers before it (tests/test_layers.py checks this):

* ``certcore.math``: counts -> bounds -> radius, input checks, the toy model of the lesson (numpy/scipy, no torch);
* ``certcore.engine``: ablation, sampling a classifier, ``certify()`` and its ``Certificate`` (torch);
* ``certcore.models``: architectures, checkpoints, data sets and training;
* ``certcore.evaluation``: certified accuracy over a test set, results files, summaries, the paper's tables;
* ``certcore.views``: what the app's pages compute and draw.

The cheap half (math, results files, the paper's tables) needs no torch and is imported eagerly. The torch-backed
names are loaded on first use (PEP 562): ``from certcore import certify`` works, while ``import certcore`` alone
stays light.
"""

from importlib import import_module
from typing import Any

from certcore.evaluation.paper import PAPER_ROWS, PaperRow, paper_rows, paper_table_markdown
from certcore.evaluation.results import (
    IncompleteLineWarning,
    ResultsError,
    accuracy_table,
    certified_accuracy,
    describe_run,
    list_result_files,
    read_results,
)
from certcore.math.anytime import anytime_bounds
from certcore.math.bounds import clopper_pearson_lower, clopper_pearson_upper, rounded_bounds, simuem_bounds
from certcore.math.radius import (
    BoundCurves,
    bound_curves,
    certified_radius,
    certify_counts,
    levine_feizi_radius,
    radius_limit,
)
from certcore.version import __version__

_LAZY = {
    "certcore.engine.ablation": ("ablate", "ablated_previews", "draw_keep_masks", "encode_ablated"),
    "certcore.engine.sampling": ("SamplingCancelled", "SamplingResult", "sample_counts"),
    "certcore.engine.queue": ("Job", "JobStatus", "SamplingQueue", "shared_queue"),
    "certcore.engine.certificate": ("Certificate", "certificate_from_counts", "certify"),
    "certcore.models.architectures": ("build_model", "init_from_clean_cifar"),
    "certcore.models.checkpoints": (
        "CheckpointError",
        "CheckpointInfo",
        "CheckpointWarning",
        "checkpoint_sha256",
        "list_checkpoints",
        "load_checkpoint",
        "save_checkpoint",
    ),
    "certcore.models.data": ("Sample", "bundled_samples", "class_names", "evaluation_indices", "load_uploaded_image"),
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
    "__version__",
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
