"""Randomized ablation: exact-e masks, uniform keep frequencies, the 2C-channel encoding and the previews."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2

from certcore.engine.ablation import ablate, ablated_previews, draw_keep_masks, encode_ablated

H, W, E = 8, 8, 10
D = H * W


def keep_uniformity_pvalue(keep: torch.Tensor, e: int) -> float:
    """p-value of "every pixel is kept with probability e/d" from masks (draws, H, W), by a Pearson chi-square.

    Each mask keeps exactly e pixels, so the per-pixel keep counts are not multinomial: their covariance is
    p(1-p) d/(d-1) (I - J/d) per draw with p = e/d, and Pearson's statistic is (d-e)/(d-1) times a chi-square
    with d-1 degrees of freedom. Rescaling by (d-1)/(d-e) gives the exact-size test.
    """
    draws, d = keep.shape[0], keep[0].numel()
    observed = keep.reshape(draws, d).sum(dim=0).double()
    expected = draws * e / d
    statistic = float(((observed - expected) ** 2 / expected).sum()) * (d - 1) / (d - e)
    return float(chi2.sf(statistic, d - 1))


def test_every_mask_keeps_exactly_e_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    for e in (1, 50, 1023, 1024):
        keep = draw_keep_masks(200, 32, 32, e, g)
        assert keep.shape == (200, 32, 32) and keep.dtype == torch.bool
        assert (keep.flatten(1).sum(dim=1) == e).all()


@pytest.mark.parametrize("e", [0, D + 1, -3])
def test_e_outside_1_to_d_is_refused(e: int) -> None:
    with pytest.raises(ValueError, match=r"e must be an integer in \[1, d=64\]"):
        draw_keep_masks(4, H, W, e, torch.Generator())


def test_keep_frequencies_are_uniform_over_pixels() -> None:
    keep = draw_keep_masks(40_000, H, W, E, torch.Generator().manual_seed(1))
    assert keep_uniformity_pvalue(keep, E) > 0.001


def test_uniformity_test_catches_a_slightly_biased_sampler() -> None:
    """Power check: the same test on masks that favour pixel 0 a little (its key shifted by +0.02) fails."""
    g = torch.Generator().manual_seed(1)
    keys = torch.rand(40_000, D, generator=g)
    keys[:, 0] += 0.02
    keep = torch.zeros(40_000, D, dtype=torch.bool).scatter_(1, keys.topk(E, dim=1).indices, True)
    assert keep_uniformity_pvalue(keep.view(-1, H, W), E) < 1e-6


def test_encoding_carries_x_and_1_minus_x_on_kept_pixels_and_zeros_elsewhere() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.rand(4, 3, H, W, generator=g)
    images[0, :, 0, 0] = 0.0  # a black and a white kept pixel must still look kept
    images[0, :, 0, 1] = 1.0
    keep = draw_keep_masks(4, H, W, E, g)
    keep[0, 0, :2] = True
    encoded = encode_ablated(images, keep)
    assert encoded.shape == (4, 6, H, W)
    m = keep.unsqueeze(1)
    assert torch.equal(encoded[:, :3], torch.where(m, images, 0.0))
    assert torch.equal(encoded[:, 3:], torch.where(m, 1.0 - images, 0.0))
    channel_sums = encoded[:, :3] + encoded[:, 3:]
    assert torch.allclose(channel_sums[m.expand(-1, 3, -1, -1)], torch.tensor(1.0))
    assert (encoded.abs().sum(dim=1)[~keep] == 0).all()


def test_one_image_broadcasts_against_a_batch_of_masks() -> None:
    """sample_counts encodes its single image (1, C, H, W) against a whole batch of masks at once."""
    image = torch.rand(1, 3, H, W)
    keep = draw_keep_masks(6, H, W, E, torch.Generator().manual_seed(5))
    assert torch.equal(encode_ablated(image, keep), encode_ablated(image.expand(6, -1, -1, -1), keep))


def test_ablate_is_encode_of_masks_from_the_same_generator_stream() -> None:
    images = torch.rand(5, 3, H, W)
    encoded = ablate(images, E, torch.Generator().manual_seed(3))
    expected = encode_ablated(images, draw_keep_masks(5, H, W, E, torch.Generator().manual_seed(3)))
    assert torch.equal(encoded, expected)


def test_previews_show_e_true_pixels_and_the_fill_colour_elsewhere() -> None:
    image = torch.rand(3, H, W) * 0.4  # never equal to the 0.5 grey fill
    previews = ablated_previews(image, E, count=6, seed=4)
    assert previews.shape == (6, H, W, 3)
    shows_image = (previews == image.permute(1, 2, 0)).all(dim=-1)
    shows_fill = (previews == 0.5).all(dim=-1)
    assert (shows_image.flatten(1).sum(dim=1) == E).all()
    assert torch.equal(shows_fill, ~shows_image)
    assert torch.equal(previews, ablated_previews(image, E, count=6, seed=4))
    assert not torch.equal(previews, ablated_previews(image, E, count=6, seed=5))
