"""Every checkpoint shipped in checkpoints/ loads safely and is as accurate as its metadata says.

The accuracy measured here is the trainer's own (``certcore.models.training.ablated_accuracy``: single ablations, 10 per
image, seed 20220425), recomputed from the file. On the first 200 of the 500 evaluation images it must reach the
``eval500_ablated`` claimed in the metadata minus 5 points (a subset of 200 images may differ from all 500 by a few
points, about 3.5 points standard error); on the 100 bundled test images (never in the evaluation set, so no
shared data is needed) it must reach the held-out ``val_ablated`` minus 10 points (about 5 points standard error).
Both are deterministic: a checkpoint that fails fails every time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from certcore.models import training as train
from certcore.models.checkpoints import list_checkpoints, load_checkpoint
from certcore.models.data import ImageSet, bundled_samples, cifar10_offline, class_names, evaluation_indices
from certcore.views.default_result import DEFAULT_NAME

SHIPPED = [  # the ImageNet checkpoint has its own checks (tests/test_imagenet_checkpoint.py)
    c for c in list_checkpoints(Path(__file__).resolve().parents[1] / "checkpoints")
    if c.metadata["dataset"] == "cifar10"
]
CPU = train.Dist(0, 1, torch.device("cpu"))


def bundled_cifar10() -> ImageSet:
    samples = bundled_samples("cifar10")
    images = torch.stack([(s.image * 255).round().to(torch.uint8) for s in samples])
    labels = torch.tensor([s.label for s in samples])
    return ImageSet(images, labels, class_names("cifar10"), "bundled")


def test_checkpoints_are_shipped() -> None:
    names = [c.name for c in SHIPPED]
    assert DEFAULT_NAME in names and "cifar10_resnet20_e50" in names


@pytest.mark.parametrize("info", SHIPPED, ids=[c.name for c in SHIPPED])
def test_accuracy_on_bundled_images_matches_the_metadata(info) -> None:
    model, meta = load_checkpoint(info.path, dataset="cifar10")
    claimed = meta["accuracies"]["val_ablated"]
    measured = train.ablated_accuracy(model, bundled_cifar10(), meta["e"], 10, CPU)
    assert measured >= claimed - 0.10, f"{info.name}: {measured:.3f} on the bundled images, metadata says {claimed}"


@pytest.mark.parametrize("info", SHIPPED, ids=[c.name for c in SHIPPED])
def test_accuracy_on_evaluation_images_matches_the_metadata(info, shared_data: Path) -> None:
    model, meta = load_checkpoint(info.path, dataset="cifar10")
    claimed = meta["accuracies"]["eval500_ablated"]
    test = cifar10_offline(shared_data, "test-lossless")
    first200 = test.subset(evaluation_indices()[:200], "evaluation[:200]")
    measured = train.ablated_accuracy(model, first200, meta["e"], 10, CPU)
    assert measured >= claimed - 0.05, f"{info.name}: {measured:.3f} on 200 evaluation images, metadata says {claimed}"
