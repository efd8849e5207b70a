"""Randomized ablation (Levine & Feizi 2020): keep e of the d pixels, mark the rest as ablated.

Encoding (the one the randomized-ablation reference implementation feeds its models): an image with C channels
and values in [0, 1] becomes a tensor with 2C channels. A kept pixel carries (x, 1 - x) in its 2C channels, an
ablated pixel carries 0 in all 2C channels. For every kept pixel the two halves sum to 1 channel-wise, so no real
pixel value can look like an ablated one and the base classifier can always tell them apart. All channels of a
pixel are kept or ablated together, so d = H * W.
"""

from __future__ import annotations

import torch

NEUTRAL_GREY = (0.5, 0.5, 0.5)


def draw_keep_masks(
    batch: int, height: int, width: int, e: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean masks (batch, height, width), each keeping exactly ``e`` pixels chosen uniformly without replacement.

    All masks are drawn in one shot on ``device`` from ``generator`` (which must live on that device): the e
    largest of d i.i.d. uniform keys form a uniformly random e-subset.
    """
    d = height * width
    if not 1 <= e <= d:
        raise ValueError(f"e must be an integer in [1, d={d}] (pixels kept per ablation), got {e}")
    keys = torch.rand(batch, d, generator=generator, device=device)
    kept = keys.topk(e, dim=1, sorted=False).indices
    mask = torch.zeros(batch, d, dtype=torch.bool, device=device)
    mask.scatter_(1, kept, True)
    return mask.view(batch, height, width)


def encoded_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Shape (2C, H, W) of the encoding of an image of shape (C, H, W): what the base classifier takes."""
    channels, height, width = image_shape
    return 2 * channels, height, width


def encode_ablated(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Encode images (B, C, H, W) in [0, 1] under keep masks (B, H, W) as (B, 2C, H, W), see the module docstring."""
    m = keep.unsqueeze(1).to(images.dtype)
    return torch.cat((images * m, (1.0 - images) * m), dim=1)


def ablate(images: torch.Tensor, e: int, generator: torch.Generator) -> torch.Tensor:
    """Ablate each image of a batch (B, C, H, W) with its own random mask keeping ``e`` pixels; returns the encoding."""
    b, _, h, w = images.shape
    keep = draw_keep_masks(b, h, w, e, generator, images.device)
    return encode_ablated(images, keep)


def ablated_previews(
    image: torch.Tensor, e: int, count: int, seed: int, fill: tuple[float, float, float] = NEUTRAL_GREY
) -> torch.Tensor:
    """``count`` ablated copies of one image (C, H, W) as displayable RGB (count, H, W, C) in [0, 1].

    Kept pixels show their true colour, ablated pixels the neutral ``fill`` colour. This is what the base classifier
    sees, made visible (the classifier itself receives the 2C-channel encoding, never the fill colour).
    """
    c, h, w = image.shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    keep = draw_keep_masks(count, h, w, e, g).unsqueeze(1)
    background = torch.tensor(fill[:c], dtype=image.dtype).view(1, c, 1, 1)
    shown = torch.where(keep, image.cpu().unsqueeze(0), background)
    return shown.permute(0, 2, 3, 1).contiguous()
