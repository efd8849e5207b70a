"""Ground truth: tiny worlds enumerated exactly.

Soundness: with exact label probabilities (or valid looser bounds), no perturbation of at most r_l pixels may push
l out of the exact smoothed top-k. Tightness (k = 1, Theorem 2): a base classifier with the same label
probabilities at x exists whose smoothed top-1 at some x + delta with r_l + 1 changed pixels no longer strictly
holds l — we build it explicitly, following the proof's regions A (ablations only from x), C (shared) and B.
"""

from __future__ import annotations

import random
from fractions import Fraction
from math import comb

from certcore import certified_radius
from certcore.math.toy import LookupClassifier, ablations, find_attack, in_top_k, label_counts, label_probabilities


def _random_world(rng: random.Random):
    d = rng.randint(3, 7)
    alphabet = list(range(3 if d <= 5 else 2))
    e = rng.randint(1, max(1, d // 2))
    num_classes = rng.randint(2, 5)
    k = rng.randint(1, min(3, num_classes - 1))
    image = tuple(rng.choice(alphabet) for _ in range(d))
    f = LookupClassifier(
        num_classes, seed=rng.randrange(1 << 30), favourite=rng.choice([0.0, 0.5, 0.7, 0.9]), structure=0.6
    )
    return d, e, k, num_classes, alphabet, image, f


def test_certified_radius_is_sound_on_exhaustive_tiny_worlds():
    rng = random.Random(2022)
    cases = certified_positive = 0
    for _ in range(600):
        d, e, k, c, alphabet, image, f = _random_world(rng)
        probs = label_probabilities(f, image, e, c)
        order = sorted(range(c), key=lambda j: -probs[j])
        label = order[rng.randrange(min(k, c))]  # a label in the smoothed top-k
        slack = rng.choice([0, 0, Fraction(1, 50)])  # exact bounds, or valid looser ones
        p_lower = max(Fraction(0), probs[label] - slack)
        p_uppers = [min(Fraction(1), p + slack) for j, p in enumerate(probs) if j != label]
        r = certified_radius(p_lower, p_uppers, d, e, k)
        cases += 1
        if r < 0:
            continue
        assert in_top_k(probs, label, k)
        certified_positive += r > 0
        attack = find_attack(f, image, e, c, label, k, min(r, d), alphabet)
        assert attack is None, f"radius {r} violated: d={d} e={e} k={k} x={image} -> {attack}"
    assert cases == 600 and certified_positive >= 100, certified_positive  # the test must exercise r > 0 often


def _worst_case_classifier(image, perturbed, e, label, runner_up, counts):
    """Theorem 2's construction for k = 1: same label counts at ``image``; l placed on ablations that see a
    perturbed pixel first (region A), the runner-up on the shared ones (C) and on everything only x + delta has (B)."""
    changed = {i for i, (a, b) in enumerate(zip(image, perturbed, strict=True)) if a != b}
    region_a, region_c = [], []
    for a in ablations(image, e):
        (region_a if any(a[i] is not None for i in changed) else region_c).append(a)
    order = {label: region_a + region_c, runner_up: region_c + region_a}
    table: dict = {}
    for j in [label, runner_up] + [j for j in range(len(counts)) if j not in (label, runner_up)]:
        free = [a for a in order.get(j, region_a + region_c) if a not in table]
        for a in free[: counts[j]]:
            table[a] = j
    return lambda a: table.get(a, runner_up)  # region B (never seen from x) goes to the runner-up


def test_radius_is_tight_for_top1_on_exhaustive_tiny_worlds():
    rng = random.Random(7)
    checked = 0
    for _ in range(400):
        d, e, _, c, alphabet, image, f = _random_world(rng)
        counts = label_counts(f, image, e, c)
        grid = comb(d, e)
        label = max(range(c), key=lambda j: counts[j])
        runner_up = max((j for j in range(c) if j != label), key=lambda j: counts[j])
        p_uppers = [Fraction(n, grid) for j, n in enumerate(counts) if j != label]
        r = certified_radius(Fraction(counts[label], grid), p_uppers, d, e, 1)
        if r < 0 or d - r - 2 < e - 1:  # Theorem 2's first assumption; the other two hold for exact probabilities
            continue
        perturbed = tuple((v + 1) % len(alphabet) if i <= r else v for i, v in enumerate(image))  # r + 1 pixels
        worst = _worst_case_classifier(image, perturbed, e, label, runner_up, counts)
        assert label_counts(worst, image, e, c) == counts  # consistent with the same bounds at x
        assert not in_top_k(label_probabilities(worst, perturbed, e, c), label, 1)
        checked += 1
    assert checked >= 100, checked
