"""The Learn page's toy: the exact certificate holds under brute force, and Theorem 2's worst case breaks it."""

from __future__ import annotations

import random

import pytest

from certcore.math.toy import label_counts, label_probabilities
from certcore.views.lesson import ablation_mosaic, certify_toy, lookup_classifier, tightness


def _worlds(count: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        classes = rng.randint(2, 4)
        image = tuple(rng.randint(0, 1) for _ in range(9))
        yield image, rng.randint(1, 4), rng.randint(1, classes - 1), classes, rng.randrange(1000), rng.random()


@pytest.mark.parametrize("seed", [0, 1])
def test_certificate_holds_and_worst_case_breaks_right_after(seed):
    broken = 0
    for image, e, k, classes, clf_seed, favourite in _worlds(15, seed):
        f = lookup_classifier(classes, clf_seed, favourite)
        cert = certify_toy(f, image, e, k, classes, label=0)
        assert cert.attack_within is None  # Theorem 1: no change of <= r pixels breaks it (brute force)
        worst = tightness(f, cert, classes)
        if worst is None:
            continue
        assert worst.before == tuple(label_probabilities(f, image, e, classes))  # same probabilities at x
        assert worst.pixels <= cert.radius + 1 + (k != 1)
        if k == 1 and 9 - cert.radius - 2 >= e - 1:  # Theorem 2's assumption; exact bounds satisfy the others
            assert worst.label_out and worst.pixels == cert.radius + 1
        broken += worst.label_out
    assert broken >= 5


def test_certify_toy_counts_every_ablation():
    f = lookup_classifier(3, 1, 0.75)
    image = (1, 0, 1, 0, 1, 0, 1, 1, 0)
    cert = certify_toy(f, image, 2, 1, 3, label=0)
    assert sum(cert.counts) == 36 and list(cert.counts) == label_counts(f, image, 2, 3)
    assert cert.checked == 9 + 36  # images with 1 or 2 changed pixels when r = 1
    assert ablation_mosaic(f, image, 2).shape == (3 * 36 + 2 * 4, 12 * 36 + 11 * 4, 3)  # 36 tiles of 36 px, 12 a row
