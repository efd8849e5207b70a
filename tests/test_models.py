"""Base classifiers: shapes, normalisation, and the clean akamaster initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from certcore.engine.ablation import ablate, encode_ablated
from certcore.models.architectures import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncodingNormalize,
    build_model,
    clean_cifar_classifier,
    init_from_clean_cifar,
)


@pytest.mark.parametrize(("arch", "blocks"), [("resnet20", 3), ("resnet56", 9), ("resnet110", 18)])
def test_cifar_resnets_shapes(arch: str, blocks: int) -> None:
    model = build_model(arch, 10).eval()
    assert len(model.net.layer1) == len(model.net.layer3) == blocks
    x = ablate(torch.rand(2, 3, 32, 32), 50, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_resnet50_takes_six_channels() -> None:
    model = build_model("resnet50", 1000).eval()
    assert model.net.conv1.in_channels == 6
    with torch.no_grad():
        assert model(torch.rand(1, 6, 64, 64)).shape == (1, 1000)


def test_build_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet18", 10)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("resnet20", 10, in_channels=3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet20", 0)


def test_encoding_normalize_is_the_documented_affine_map() -> None:
    norm = EncodingNormalize(IMAGENET_MEAN, IMAGENET_STD)
    x = torch.rand(1, 3, 4, 4)
    keep = torch.rand(1, 4, 4) < 0.5
    out = norm(encode_ablated(x, keep))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    k = keep.float()
    torch.testing.assert_close(out[0, :3], (x[0] * k - mean) / std)
    torch.testing.assert_close(out[0, 3:], ((1 - x[0]) * k - (1 - mean)) / std)
    assert "mean" in dict(norm.named_buffers()) and "std" in dict(norm.named_buffers())


def test_clean_init_is_the_clean_classifier_on_kept_pixels(shared_data) -> None:
    model = build_model("resnet20", 10)
    init_from_clean_cifar(model, shared_data / "checkpoints" / "resnet20-12fca82f.th")
    w = model.net.conv1.weight
    assert w.shape == (16, 6, 3, 3) and torch.count_nonzero(w[:, 3:]) == 0
    with np.load(shared_data / "cifar10" / "cifar10_test_first1000_lossless.npz") as d:
        x = torch.from_numpy(d["x"][:200]).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(d["y"][:200]).long()
    with torch.no_grad():
        acc = (model.eval()(encode_ablated(x, torch.ones(200, 32, 32, dtype=torch.bool))).argmax(1) == y).float()
    assert acc.mean() > 0.85  # 91.5% on all 1,000 lossless images (data README)


def test_clean_classifier_equals_the_clean_init_on_unablated_images(shared_data) -> None:
    """The distillation teacher (RGB input) and the clean-initialised model (encoding, all pixels kept) agree."""
    path = shared_data / "checkpoints" / "resnet20-12fca82f.th"
    student = build_model("resnet20", 10)
    init_from_clean_cifar(student, path)
    teacher = clean_cifar_classifier("resnet20", path)
    assert not teacher.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            teacher(x), student.eval()(encode_ablated(x, torch.ones(4, 32, 32, dtype=torch.bool))), atol=1e-4, rtol=0
        )
    with pytest.raises(ValueError, match="weights do not fit"):
        clean_cifar_classifier("resnet56", path)


def test_clean_init_rejects_wrong_arch(shared_data) -> None:
    with pytest.raises(ValueError, match="conv1|size mismatch|Missing|Unexpected|CIFAR"):
        init_from_clean_cifar(build_model("resnet56", 10), shared_data / "checkpoints" / "resnet20-12fca82f.th")
    with pytest.raises(ValueError, match="CIFAR"):
        init_from_clean_cifar(build_model("resnet50", 10), shared_data / "checkpoints" / "resnet20-12fca82f.th")
