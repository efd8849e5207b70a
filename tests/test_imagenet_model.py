"""The ImageNet base classifier: pretrained weight mapping, clean accuracy of the mapped network, the front end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from certcore.models.architectures import build_model
from certcore.models.data import bundled_samples
from certcore.models.imagenet import (
    PRETRAINED_TENSORS,
    ImageNetAblationClassifier,
    NormalizedConvolutionFill,
    clean_imagenet_classifier,
    efficientnet_lite0,
    pretrained_state_dict,
    pretrained_weights_path,
)


def test_every_pretrained_tensor_is_used_once_in_order() -> None:
    source = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    net = efficientnet_lite0()
    mapped = pretrained_state_dict(net)
    assert len(source) == len(mapped) == PRETRAINED_TENSORS == 296
    assert list(mapped) == list(net.state_dict())
    for (name, tensor), loaded in zip(source.items(), mapped.values(), strict=True):
        assert torch.equal(tensor, loaded), name
    net.load_state_dict(mapped, strict=True)


def test_a_weights_file_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    source = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    names = list(source)
    short = tmp_path / "short.pth"
    torch.save({k: source[k] for k in names[:-1]}, short)
    with pytest.raises(ValueError, match="expected 296 tensors"):
        pretrained_state_dict(efficientnet_lite0(), short)
    swapped = dict(source)
    swapped[names[0]], swapped[names[1]] = source[names[1]], source[names[0]]  # conv weight <-> bn weight
    path = tmp_path / "swapped.pth"
    torch.save({names[1] if k == names[0] else names[0] if k == names[1] else k: v for k, v in swapped.items()}, path)
    with pytest.raises(ValueError, match="does not fit"):
        pretrained_state_dict(efficientnet_lite0(), path)


def test_clean_network_is_accurate_on_the_bundled_samples() -> None:
    """A check of the mapping (a wrong mapping gives ~0.1%), not model selection."""
    samples = bundled_samples("imagenet")
    x = torch.stack([s.image for s in samples])
    y = torch.tensor([s.label for s in samples])
    with torch.inference_mode():
        top1 = (clean_imagenet_classifier()(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.80


def _encode(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    from certcore.engine.ablation import encode_ablated

    return encode_ablated(image, keep)


def test_front_end_fills_constant_images_with_their_colour_and_empty_ones_grey() -> None:
    fill = NormalizedConvolutionFill(112, 2.5)
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(2, 224, 224, generator=g) < 0.02
    colour = torch.tensor([0.2, 0.7, 0.9]).view(1, 3, 1, 1).expand(2, 3, 224, 224)
    out = fill(_encode(colour, keep))
    assert out.shape == (2, 3, 112, 112)
    # Only the EPS term pulls a value towards grey: by eps / (eps + local mask density), little on average.
    pull = (out - colour[:, :, :112, :112]) / (0.5 - colour[:, :, :112, :112])
    assert pull.min() >= -1e-5 and pull.max() < 1 and pull.mean() < 0.1
    empty = fill(_encode(colour, torch.zeros(1, 224, 224, dtype=torch.bool)))
    assert torch.allclose(empty, torch.full_like(empty, 0.5))


def test_front_end_keeps_the_kept_pixels_information() -> None:
    """A fully kept image comes out as its own blurred, downsampled version (no grey pull, no clipping)."""
    fill = NormalizedConvolutionFill(112, 2.5)
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    image[:, :, :, 112:] = 1.0  # right half white, left half noise
    out = fill(_encode(image, torch.ones(1, 224, 224, dtype=torch.bool)))
    assert out[..., 70:].min() > 0.99
    assert abs(out[..., :40].mean().item() - 0.5) < 0.02


def test_build_model_knows_the_imagenet_arch() -> None:
    model = build_model("effnetlite0", 1000)
    assert isinstance(model, ImageNetAblationClassifier)
    with torch.inference_mode():
        assert model.eval()(torch.zeros(2, 6, 224, 224)).shape == (2, 1000)
    with pytest.raises(ValueError, match="num_classes=1000"):
        build_model("effnetlite0", 10)
    with pytest.raises(ValueError, match="effnetlite0"):
        build_model("effnetlite1", 1000)
