"""Base classifiers for randomized ablation: CIFAR ResNet-20/56/110 (He et al. 2016) and ImageNet ResNet-50.

Every model takes the 2C-channel ablation encoding of ``certcore.engine.ablation`` (6 channels for RGB) with values in
[0, 1] and normalises it itself (``EncodingNormalize``), so callers never normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms import v2

# The clean akamaster CIFAR checkpoints were trained with these (ImageNet) statistics, so the CIFAR models use
# them too: a model initialised from those weights then sees exactly the inputs it was trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_DEPTHS = {"resnet20": 20, "resnet56": 56, "resnet110": 110}
ARCHS = (*CIFAR_DEPTHS, "resnet50")
PRETRAINED_IMAGENET_ARCHS = ("effnetlite0",)  # certcore.models.imagenet: front end + EfficientNet-Lite0


class EncodingNormalize(nn.Module):
    """Normalise the encoding (x*m, (1-x)*m): the first C channels with (mean, std), the second C with (1-mean, std).

    The map is affine and bijective, so ablated pixels (0 in all 2C channels) stay distinguishable from kept ones.
    Mean and std are buffers, so they travel with the state dict.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("mean", torch.cat((m, 1.0 - m)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.cat((s, s)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """CIFAR BasicBlock with the parameter-free "option A" shortcut (subsample + zero-pad channels)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with 16/32/64 channels; parameter names match akamaster's checkpoints."""

    def __init__(self, n: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class AblationClassifier(nn.Module):
    """``normalize`` followed by ``net``: the complete base classifier on the ablation encoding."""

    def __init__(self, normalize: EncodingNormalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 6,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> nn.Module:
    """Build an untrained base classifier ``arch`` (resnet20/56/110 for CIFAR, resnet50 or effnetlite0 for ImageNet).

    ``in_channels`` is the width 2C of the ablation encoding; ``mean``/``std`` are the C per-channel statistics
    (effnetlite0 scales its input itself and takes RGB, 1000 classes only).
    """
    if arch in PRETRAINED_IMAGENET_ARCHS:
        from certcore.models.imagenet import NUM_CLASSES, build_imagenet_model  # imports timm only when needed

        if num_classes != NUM_CLASSES or in_channels != 6:
            raise ValueError(f"arch {arch} takes in_channels=6 and num_classes={NUM_CLASSES}, "
                             f"got {in_channels} and {num_classes}")
        return build_imagenet_model(arch)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join((*ARCHS, *PRETRAINED_IMAGENET_ARCHS))}; got {arch!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if len(mean) != len(std) or in_channels != 2 * len(mean):
        raise ValueError(
            f"in_channels must be 2 * len(mean) = {2 * len(mean)} (the ablation encoding), got {in_channels}"
        )
    if arch == "resnet50":
        net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    else:
        net = CifarResNet((CIFAR_DEPTHS[arch] - 2) // 6, num_classes, in_channels)
    return AblationClassifier(EncodingNormalize(mean, std), net)


def _clean_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a clean akamaster checkpoint, loaded safely (``weights_only``), ``module.`` prefix removed."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"path {str(path)!r} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"path {str(path)!r}: weights do not fit this model: {exc}") from exc


def init_from_clean_cifar(model: AblationClassifier, path: str | Path) -> None:
    """Initialise a CIFAR model from a clean akamaster checkpoint (3-channel input, ``module.`` key prefix).

    conv1 gets the clean weights on the first C encoding channels (the kept pixels x*m) and zeros on the other C,
    so the model starts out as the clean classifier applied to the image with ablated pixels set to 0.
    """
    state = _clean_state(path)
    net = model.net
    if not isinstance(net, CifarResNet):
        raise ValueError("model must be a CIFAR ResNet (resnet20/56/110) to take clean CIFAR weights")
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.shape[1] * 2 != net.conv1.weight.shape[1]:
        raise ValueError(f"path {str(path)!r}: conv1.weight does not fit a {net.conv1.weight.shape[1]}-channel input")
    state["conv1.weight"] = torch.cat((conv1, torch.zeros_like(conv1)), dim=1)
    _load_strict(net, state, path)


def clean_cifar_classifier(arch: str, path: str | Path) -> nn.Module:
    """The clean akamaster classifier itself, in eval mode: RGB images (B, 3, H, W) in [0, 1], *not* the ablation
    encoding, normalised inside with the ImageNet statistics those weights were trained with."""
    if arch not in CIFAR_DEPTHS:
        raise ValueError(f"arch must be one of {', '.join(CIFAR_DEPTHS)}; got {arch!r}")
    state = _clean_state(path)
    linear = state.get("linear.weight")
    if linear is None:
        raise ValueError(f"path {str(path)!r} holds no linear.weight (not a clean CIFAR ResNet)")
    net = CifarResNet((CIFAR_DEPTHS[arch] - 2) // 6, linear.shape[0], 3)
    _load_strict(net, state, path)
    return nn.Sequential(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), net).eval()
