"""What-if sweeps: each point is a certification of the (scaled) counts; the paper's monotone trends hold."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import certcore.views.sweeps
from certcore import certify_counts
from certcore.math.sample_size import smallest_certifying_n
from certcore.views.sweeps import (
    PAPER_LIKE_COUNTS,
    default_grids,
    example_counts,
    radius_vs_alpha,
    radius_vs_e,
    radius_vs_k,
    radius_vs_n,
    scale_counts,
)

COUNTS = list(PAPER_LIKE_COUNTS)


def test_docstring_examples():
    result = doctest.testmod(certcore.views.sweeps)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("n", [1, 7, 1000, 123_457])
def test_scale_counts_sums_to_n_and_keeps_frequencies(n):
    scaled = scale_counts(COUNTS, n)
    assert scaled.sum() == n and (scaled >= 0).all()
    assert np.all(np.abs(scaled - np.array(COUNTS) * n / sum(COUNTS)) < 1)  # largest remainder: within one


def test_every_point_is_a_certification():
    assert radius_vs_k(COUNTS, 0, 1024, 50, 0.001, [1, 2, 3]).radii == [8, 13, 15]  # test_radius's known values
    e_sweep = radius_vs_e(COUNTS, 0, 1024, 3, 0.001, [25, 50, 100])
    assert e_sweep.radii == [certify_counts(COUNTS, 0, 1024, e, 3, 0.001) for e in (25, 50, 100)]
    n_sweep = radius_vs_n(COUNTS, 0, 1024, 50, 3, 0.001, [1000, sum(COUNTS)])
    assert n_sweep.radii == [certify_counts(scale_counts(COUNTS, 1000), 0, 1024, 50, 3, 0.001), 15]


ALL_SWEEPS = {  # name: (the sweep on ``values`` with ``bounds``, one point of it by certify_counts)
    "k": (lambda c, vs, b: radius_vs_k(c, 0, 1024, 50, 0.001, vs, b),
          lambda c, v, b: certify_counts(c, 0, 1024, 50, v, 0.001, b)),
    "e": (lambda c, vs, b: radius_vs_e(c, 0, 1024, 1, 0.001, vs, b),
          lambda c, v, b: certify_counts(c, 0, 1024, v, 1, 0.001, b)),
    "n": (lambda c, vs, b: radius_vs_n(c, 0, 1024, 50, 1, 0.001, vs, b),
          lambda c, v, b: certify_counts(scale_counts(c, v), 0, 1024, 50, 1, 0.001, b)),
    "alpha": (lambda c, vs, b: radius_vs_alpha(c, 0, 1024, 50, 1, vs, b),
              lambda c, v, b: certify_counts(c, 0, 1024, 50, 1, v, b)),
}
SWEEP_VALUES = {"k": [1, 2], "e": [10, 25, 50, 100], "n": [100, 1000, 10_000], "alpha": [0.1, 0.01, 0.001]}


@pytest.mark.parametrize("name", list(ALL_SWEEPS))
@pytest.mark.parametrize(("bounds", "other"), [("simuem", "anytime"), ("anytime", "simuem")])
def test_every_sweep_honours_bounds(name, bounds, other):
    """Each point is ``certify_counts`` with the sweep's ``bounds``; on these 1,000 samples the two kinds of bounds
    differ by a pixel somewhere in every sweep, so a sweep that ignored ``bounds`` fails one of the two cases."""
    counts, values = [800, 100, 100], SWEEP_VALUES[name]
    sweep, point = ALL_SWEEPS[name]
    radii = sweep(counts, values, bounds).radii
    assert radii == [point(counts, v, bounds) for v in values]
    assert radii != [point(counts, v, other) for v in values]


def test_sweeps_default_to_simuem():
    c = [800, 100, 100]
    assert radius_vs_k(c, 0, 1024, 50, 0.001, [1, 2]) == radius_vs_k(c, 0, 1024, 50, 0.001, [1, 2], "simuem")
    assert radius_vs_e(c, 0, 1024, 1, 0.001, [10, 50]) == radius_vs_e(c, 0, 1024, 1, 0.001, [10, 50], "simuem")
    assert radius_vs_n(c, 0, 1024, 50, 1, 0.001, [100]) == radius_vs_n(c, 0, 1024, 50, 1, 0.001, [100], "simuem")
    assert radius_vs_alpha(c, 0, 1024, 50, 1, [0.1]) == radius_vs_alpha(c, 0, 1024, 50, 1, [0.1], "simuem")


@pytest.mark.parametrize("name", list(ALL_SWEEPS))
def test_every_sweep_refuses_a_bad_bounds_value(name):
    with pytest.raises(ValueError, match="bounds must be one of 'simuem', 'anytime', got 'fixed'"):
        ALL_SWEEPS[name][0](COUNTS, SWEEP_VALUES[name], "fixed")


def test_trends_of_the_papers_figures():
    """k up: radius up (Fig. 1); e up: radius down (Fig. 2); alpha down: radius down (Fig. 4)."""
    ks = radius_vs_k(COUNTS, 0, 1024, 50, 0.001, range(1, 10)).radii
    es = radius_vs_e(COUNTS, 0, 1024, 3, 0.001, [10, 25, 50, 100, 200]).radii
    alphas = radius_vs_alpha(COUNTS, 0, 1024, 50, 3, [0.1, 0.01, 0.001, 1e-6]).radii
    assert ks == sorted(ks) and es == sorted(es, reverse=True) and alphas == sorted(alphas, reverse=True)
    assert es[0] > es[-1]


@pytest.mark.parametrize(("c", "d", "e", "k", "alpha"), [(10, 1024, 50, 1, 0.001), (10, 1024, 50, 3, 1e-6),
                                                         (1000, 50176, 1000, 1, 0.001), (3, 9, 2, 1, 0.05)])
def test_smallest_certifying_n_is_the_boundary(c, d, e, k, alpha):
    n = smallest_certifying_n(c, d, e, k, alpha)
    assert certify_counts([n] + [0] * (c - 1), 0, d, e, k, alpha) >= 0
    assert n == 1 or certify_counts([n - 1] + [0] * (c - 1), 0, d, e, k, alpha) < 0


def test_smallest_certifying_n_trivial_k():
    assert smallest_certifying_n(10, 1024, 50, 10, 0.001) is None


def test_default_grids_contain_the_current_values():
    grid = default_grids(50176, 1000, 100_000, 1000, k=20, alpha=0.005)
    assert 1000 in grid["e"] and 100_000 in grid["n"] and grid["k"] == [*range(1, 11), 20]
    assert 0.005 in grid["alpha"] and grid["alpha"] == sorted(grid["alpha"])
    assert default_grids(1024, 50, 500, 3, k=2)["k"] == [1, 2]


def test_example_counts():
    assert example_counts(10).tolist() == COUNTS
    counts = example_counts(1000, n=5000)
    assert counts.sum() == 5000 and list(counts) == sorted(counts, reverse=True)
