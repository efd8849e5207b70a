"""Theorem 1 / Eq. 6 radius: known values, agreement with a plain Fraction transcription, monotonicity properties."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certcore import (
    bound_curves,
    certified_radius,
    certify_counts,
    levine_feizi_radius,
    radius_limit,
    simuem_bounds,
)
from certcore.engine.certificate import certificate_from_counts
from certcore.math.radius import unrounded_top1_radius
from tests.eq6_reference import reference_radius

PAPER_LIKE_COUNTS = [80000, 9000, 5000, 3000, 1000, 800, 600, 400, 150, 50]


@pytest.mark.parametrize(("k", "expected"), [(1, 8), (2, 13), (3, 15)])
def test_known_values_from_an_independent_implementation(k, expected):
    assert certify_counts(PAPER_LIKE_COUNTS, 0, d=1024, e=50, k=k, alpha=0.001) == expected


ANYTIME_CASES = [  # (counts, label, d, e, k): CIFAR10-, ImageNet- and toy-sized, small n and large
    (PAPER_LIKE_COUNTS, 0, 1024, 50, 3),
    ([800, 100, 100], 0, 1024, 50, 1),
    ([90, 5, 5], 0, 1024, 50, 1),
    ([900, 60, 40], 0, 1024, 20, 1),
    ([40, 35, 25], 1, 1024, 50, 2),
    ([700, 200] + [1] * 998, 1, 50176, 1000, 3),
    ([30, 0, 0], 0, 9, 2, 1),
]


@pytest.mark.parametrize(("counts", "label", "d", "e", "k"), ANYTIME_CASES)
def test_anytime_bounds_give_the_certificates_radius_never_above_simuem(counts, label, d, e, k):
    anytime = certify_counts(counts, label, d, e, k, 0.001, bounds="anytime")
    certificate = certificate_from_counts(counts, d=d, e=e, k=k, alpha=0.001, label=label, bounds="anytime")
    assert anytime == certificate.radius_of(label)
    assert anytime <= certify_counts(counts, label, d, e, k, 0.001)
    assert certify_counts(counts, label, d, e, k, 0.001) == certify_counts(counts, label, d, e, k, 0.001, "simuem")


def test_anytime_bounds_are_used_not_ignored():
    """Wider anytime bounds cost a pixel on some of the cases (else the test above could not tell them apart)."""
    smaller = [certify_counts(c, j, d, e, k, 0.001, "anytime") < certify_counts(c, j, d, e, k, 0.001)
               for c, j, d, e, k in ANYTIME_CASES]
    assert 0 < sum(smaller) < len(smaller)


def test_a_bad_bounds_value_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="^bounds must be one of 'simuem', 'anytime', got 'SimuEM'$"):
        certify_counts(PAPER_LIKE_COUNTS, 0, 1024, 50, 3, 0.001, bounds="SimuEM")


def test_not_certified_and_trivial_cases():
    assert certified_radius(0.3, [0.6, 0.1], d=1024, e=50, k=1) == -1
    assert certified_radius(0.3, [0.6, 0.1], d=1024, e=50, k=3) == 1024  # only 2 other labels: trivially top-3
    # perfect bounds, k = 1: certified while D(r) < 1/2, i.e. C(10 - r, 3) > 60: C(9, 3) = 84, C(8, 3) = 56
    assert certified_radius(1.0, [0.0], d=10, e=3, k=1) == 1


def test_boundary_is_exact_at_imagenet_size():
    """A lower bound one grid step either side of the exact Eq. 6 boundary must flip the answer at r."""
    d, e, k, r = 50176, 1000, 1, 7
    from math import comb

    n, m = comb(d, e), comb(d - r, e)
    upper = Fraction(1, 10)
    # Eq. 6, k = 1, in integers: L - N + M > U + N - M  <=>  L > U + 2(N - M). Smallest certifying L:
    u = (upper.numerator * n) // upper.denominator
    l_min = u + 2 * (n - m) + 1
    assert certified_radius(Fraction(l_min, n), [upper], d, e, k) >= r
    assert certified_radius(Fraction(l_min - 1, n), [upper], d, e, k) == r - 1


@settings(max_examples=300, deadline=None)
@given(
    d=st.integers(2, 80),
    data=st.data(),
)
def test_matches_plain_fraction_transcription(d, data):
    e = data.draw(st.integers(1, d), label="e")
    k = data.draw(st.integers(1, 4), label="k")
    p_lower = data.draw(st.floats(0, 1), label="p_lower")
    p_uppers = data.draw(st.lists(st.floats(0, 1), min_size=0, max_size=6), label="p_uppers")
    assert certified_radius(p_lower, p_uppers, d, e, k) == reference_radius(p_lower, p_uppers, d, e, k)


@pytest.mark.parametrize("seed", range(5))
def test_matches_plain_fraction_transcription_at_imagenet_size(seed):
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(100_000, rng.dirichlet(np.full(1000, 0.02)))
    label = int(counts.argmax())
    lower, upper = simuem_bounds(counts, 0.001)
    others = np.delete(upper, label)
    for k in (1, 3, 10):
        assert certified_radius(lower[label], others, 50176, 1000, k) == reference_radius(
            lower[label], others, 50176, 1000, k
        )


counts_strategy = st.lists(st.integers(0, 3000), min_size=3, max_size=8).filter(lambda c: sum(c) > 0)


@settings(max_examples=150, deadline=None)
@given(counts=counts_strategy, data=st.data())
def test_radius_never_increases_when_alpha_shrinks(counts, data):
    label = data.draw(st.integers(0, len(counts) - 1))
    k = data.draw(st.integers(1, len(counts) - 1))
    a_small, a_big = sorted(data.draw(st.lists(st.floats(1e-8, 0.5), min_size=2, max_size=2)))
    assert certify_counts(counts, label, 200, 10, k, a_small) <= certify_counts(counts, label, 200, 10, k, a_big)


@settings(max_examples=150, deadline=None)
@given(counts=counts_strategy, data=st.data())
def test_radius_never_decreases_when_k_grows(counts, data):
    label = data.draw(st.integers(0, len(counts) - 1))
    radii = [certify_counts(counts, label, 200, 10, k, 0.01) for k in range(1, len(counts) + 1)]
    assert radii == sorted(radii)


@settings(max_examples=150, deadline=None)
@given(counts=counts_strategy, data=st.data())
def test_radius_never_decreases_when_label_gains_count_from_another(counts, data):
    label = data.draw(st.integers(0, len(counts) - 1))
    donors = [j for j, c in enumerate(counts) if j != label and c > 0]
    if not donors:
        return
    donor = data.draw(st.sampled_from(donors))
    moved = data.draw(st.integers(1, counts[donor]))
    richer = list(counts)
    richer[label] += moved
    richer[donor] -= moved
    k = data.draw(st.integers(1, len(counts) - 1))
    assert certify_counts(richer, label, 200, 10, k, 0.01) >= certify_counts(counts, label, 200, 10, k, 0.01)


@settings(max_examples=300, deadline=None)
@given(p_lower=st.floats(0, 1), p_upper=st.floats(0, 1), d=st.integers(2, 3000), data=st.data())
def test_top1_radius_is_never_below_levine_feizi_on_the_same_bounds(p_lower, p_upper, d, data):
    e = data.draw(st.integers(1, min(d, 100)))
    assert certified_radius(p_lower, [p_upper], d, e, 1) >= unrounded_top1_radius(p_lower, p_upper, d, e)


def test_levine_feizi_radius_on_counts():
    # Clopper-Pearson at alpha (no /c), runner-up = 1 - lower, no rounding: smaller than ours here.
    assert levine_feizi_radius(PAPER_LIKE_COUNTS, 0, 1024, 50, 0.001) == 6
    assert levine_feizi_radius([400, 600], 0, 1024, 50, 0.001) == -1


def test_radius_limit_is_r_or_r_plus_one():
    lower, upper = simuem_bounds(PAPER_LIKE_COUNTS, 0.001)
    others = np.delete(upper, 0)
    assert radius_limit(lower[0], others, 1024, 50, 1) == 8
    assert radius_limit(lower[0], others, 1024, 50, 3) == 16
    # Assumption 3 fails: bounds that do not add up to 1 leave room the theorem cannot use.
    assert radius_limit(0.5, [0.1, 0.1], 1024, 50, 1) is None
    assert radius_limit(0.3, [0.6], 1024, 50, 1) is None  # not certified


def test_bound_curves_agree_with_the_radius():
    lower, upper = simuem_bounds(PAPER_LIKE_COUNTS, 0.001)
    others = np.delete(upper, 0)
    curves = bound_curves(lower[0], others, 1024, 50, 3, 40)
    assert curves.terms.shape == (3, 41)
    assert np.all(np.diff(curves.lhs) < 0) and np.all(np.diff(curves.rhs) >= 0)
    holds = curves.lhs > curves.rhs
    assert holds[:16].all() and not holds[16:].any()  # radius 15
    assert curves.damage[0] == 0.0


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: certified_radius(0.5, [0.1], 10, 0, 1), "e"),
        (lambda: certified_radius(0.5, [0.1], 10, 11, 1), "e"),
        (lambda: certified_radius(0.5, [0.1], 0, 1, 1), "d"),
        (lambda: certified_radius(0.5, [0.1], 10, 3, 0), "k"),
        (lambda: certified_radius(1.5, [0.1], 10, 3, 1), "p_lower"),
        (lambda: certified_radius(float("nan"), [0.1], 10, 3, 1), "p_lower"),
        (lambda: certified_radius(0.5, [-0.1], 10, 3, 1), "p_uppers"),
        (lambda: certified_radius(0.5, [float("nan")], 10, 3, 1), "p_uppers"),
        (lambda: certified_radius(0.5, [0.1], 10.5, 3, 1), "d"),
        (lambda: certify_counts([5, -1, 3], 0, 10, 3, 1, 0.01), "counts"),
        (lambda: certify_counts([0, 0, 0], 0, 10, 3, 1, 0.01), "counts"),
        (lambda: certify_counts([1.5, 2, 3], 0, 10, 3, 1, 0.01), "counts"),
        (lambda: certify_counts([5, 1, 3], 3, 10, 3, 1, 0.01), "label"),
        (lambda: certify_counts([5, 1, 3], 0, 10, 3, 1, 0.0), "alpha"),
        (lambda: certify_counts([5, 1, 3], 0, 10, 3, 1, 1.0), "alpha"),
        (lambda: simuem_bounds([5], 0.1), "counts"),
        (lambda: simuem_bounds([[5, 1]], 0.1), "counts"),
        (lambda: bound_curves(0.5, [0.1], 10, 3, 2, 5), "k"),
        (lambda: bound_curves(0.5, [0.1], 10, 3, 1, -1), "r_max"),
    ],
)
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()
