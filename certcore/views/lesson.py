"""The Learn page's toy: a 3x3 binary image where randomized ablation is enumerated exactly (``certcore.math.toy``).

With d = 9 pixels there are only C(9, e) ablations, so the smoothed classifier's label probabilities are exact
fractions: the bounds of Eq. 3 can be the probabilities themselves (no sampling, no alpha), Theorem 1 gives the
radius, and a brute-force search over every perturbation of up to r + 1 pixels checks it. Theorem 2 is shown by
building, for one perturbation of r + 1 pixels, a base classifier with exactly the same label probabilities at
the image that loses the label there (the regions A, B, C of the paper's proof).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from certcore.math.radius import certified_radius, radius_limit
from certcore.math.toy import (
    Ablated,
    BaseClassifier,
    LookupClassifier,
    Pixels,
    ablations,
    find_attack,
    in_top_k,
    label_counts,
    label_probabilities,
    perturbations,
)
from certcore.views.figures import mosaic

SIDE = 3
ALPHABET = (0, 1)
LABEL_COLOURS = ("#d1495b", "#00798c", "#edae49", "#66a182", "#8d99ae")
COLOUR_NAMES = ("red", "teal", "yellow", "green", "grey")


@dataclass(frozen=True)
class ToyCertificate:
    """Everything the Learn page shows about one toy world.

    ``counts[j]`` of the C(9, e) ablations go to label j (exact probability counts[j] / C(9, e)). ``radius`` is
    Theorem 1 on the exact probabilities; ``attack_within`` is a perturbation of at most ``radius`` pixels that
    breaks it (always None: the certificate holds); ``attack_next`` one of at most radius + 1 pixels that pushes
    the label out of the exact top-k for this base classifier (often None: the certificate is about every
    classifier with these probabilities, this one may be harmless). ``checked`` counts the images tried.
    """

    image: Pixels
    e: int
    k: int
    label: int
    counts: tuple[int, ...]
    radius: int
    limit: int | None
    attack_within: Pixels | None
    attack_next: Pixels | None
    checked: int


def certify_toy(f: BaseClassifier, image: Pixels, e: int, k: int, num_classes: int, label: int) -> ToyCertificate:
    """Exact certificate of ``label`` at ``image`` and the brute-force check of it up to radius + 1 pixels."""
    probabilities = label_probabilities(f, image, e, num_classes)
    others = [p for j, p in enumerate(probabilities) if j != label]
    d = len(image)
    radius = certified_radius(probabilities[label], others, d, e, k)
    limit = radius_limit(probabilities[label], others, d, e, k)
    reach = min(d, max(radius, 0))
    within = find_attack(f, image, e, num_classes, label, k, reach, ALPHABET) if radius > 0 else None
    beyond = find_attack(f, image, e, num_classes, label, k, min(d, reach + 1), ALPHABET) if radius >= 0 else None
    checked = sum(1 for _ in perturbations(image, min(d, reach + 1), ALPHABET)) if radius >= 0 else 0
    return ToyCertificate(image, e, k, label, tuple(label_counts(f, image, e, num_classes)), radius, limit, within,
                          beyond, checked)


def lookup_classifier(num_classes: int, seed: int, favourite: float) -> LookupClassifier:
    """A random base classifier (a lookup table) that gives label 0 to a share ``favourite`` of ablations."""
    return LookupClassifier(num_classes, seed=seed, favourite=favourite, structure=0.5)


def worst_case_classifier(
    f: BaseClassifier, image: Pixels, perturbed: Pixels, e: int, k: int, num_classes: int, label: int
) -> BaseClassifier:
    """A base classifier with the same label counts as ``f`` at ``image`` that does its worst at ``perturbed``.

    Following the proof of Theorem 2: A = ablations of the image that keep a changed pixel, C = those that keep
    none (shared with the perturbed image), B = ablations of the perturbed image that keep a changed pixel.
    ``label`` is put on A first, so little of it survives the change; the k strongest other labels are put on C
    first and share all of B, so they all gain. At ``image`` nothing changed: B is never seen from there.
    """
    counts = label_counts(f, image, e, num_classes)
    changed = {i for i, (a, b) in enumerate(zip(image, perturbed, strict=True)) if a != b}
    region_a, region_c = [], []
    for a in ablations(image, e):
        (region_a if any(a[i] is not None for i in changed) else region_c).append(a)
    rivals = sorted((j for j in range(num_classes) if j != label), key=lambda j: -counts[j])[:k]
    table: dict[Ablated, int] = {}
    for j in [label, *rivals, *(j for j in range(num_classes) if j != label and j not in rivals)]:
        order = region_a + region_c if j == label or j not in rivals else region_c + region_a
        for a in [a for a in order if a not in table][: counts[j]]:
            table[a] = j
    region_b = [a for a in ablations(perturbed, e) if any(a[i] is not None for i in changed)]
    at_perturbed = {j: sum(1 for a in region_c if table.get(a) == j) for j in rivals}
    for a in region_b:  # water-filling: each ablation of B goes to the currently weakest rival
        weakest = min(rivals, key=lambda j: at_perturbed[j])
        table[a] = weakest
        at_perturbed[weakest] += 1
    fallback = rivals[0]
    return lambda a: table.get(a, fallback)


@dataclass(frozen=True)
class Tightness:
    """Theorem 2 made concrete: a perturbation of ``pixels`` pixels and the worst-case classifier's exact
    label probabilities before (same as the toy classifier's) and after it."""

    perturbed: Pixels
    pixels: int
    before: tuple[Fraction, ...]
    after: tuple[Fraction, ...]
    label_out: bool


def tightness(f: BaseClassifier, cert: ToyCertificate, num_classes: int) -> Tightness | None:
    """Change the first r + 1 pixels (r + 2 for k > 1, Theorem 2's "almost") and build the worst case there.

    Returns the smallest of those two sizes at which the worst-case classifier loses the label, else the
    attempt at the larger size; None if the label is not certified or the image is too small for it.
    """
    d = len(cert.image)
    if cert.radius < 0:
        return None
    attempt = None
    for pixels in range(cert.radius + 1, cert.radius + 2 + (cert.k != 1)):
        if pixels > d:
            break
        perturbed = tuple((v + 1) % len(ALPHABET) if i < pixels else v for i, v in enumerate(cert.image))
        worst = worst_case_classifier(f, cert.image, perturbed, cert.e, cert.k, num_classes, cert.label)
        after = label_probabilities(worst, perturbed, cert.e, num_classes)
        attempt = Tightness(perturbed, pixels, tuple(label_probabilities(worst, cert.image, cert.e, num_classes)),
                            tuple(after), not in_top_k(after, cert.label, cert.k))
        if attempt.label_out:
            break
    return attempt


def toy_image(image: Pixels, scale: int = 30, grid: int = 2) -> np.ndarray:
    """A 3x3 binary image for display: black and white pixels separated by grey grid lines.

    >>> toy_image((0, 1, 0, 1, 0, 1, 0, 1, 0)).shape
    (98, 98, 3)
    """
    size = SIDE * scale + (SIDE + 1) * grid
    out = np.full((size, size, 3), 150, np.uint8)
    for i, v in enumerate(image):
        y, x = divmod(i, SIDE)
        top, left = grid + y * (scale + grid), grid + x * (scale + grid)
        out[top : top + scale, left : left + scale] = 255 * v
    return out


def ablation_mosaic(f: BaseClassifier, image: Pixels, e: int, scale: int = 10, per_row: int = 12) -> np.ndarray:
    """Every ablation of a 3x3 image as a tile (kept pixels black/white, ablated grey) framed in the colour of
    the label the base classifier gives it: the whole distribution the smoothed classifier votes over."""
    tiles = []
    for a in ablations(image, e):
        frame = [int(LABEL_COLOURS[f(a) % len(LABEL_COLOURS)][i : i + 2], 16) for i in (1, 3, 5)]
        grey = np.array([150 if v is None else 255 * v for v in a], np.uint8).reshape(SIDE, SIDE)
        tile = np.empty((SIDE * scale + 6, SIDE * scale + 6, 3), np.uint8)
        tile[:] = frame
        tile[3:-3, 3:-3] = np.repeat(np.repeat(grey, scale, 0), scale, 1)[..., None]
        tiles.append(tile)
    return mosaic(np.stack(tiles), columns=min(per_row, len(tiles)), gap=4)
