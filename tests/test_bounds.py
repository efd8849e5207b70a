"""SimuEM bounds (Eq. 8) and Eq. 4 rounding."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from scipy.stats import binomtest

from certcore import rounded_bounds, simuem_bounds


def test_edge_cases_are_exact():
    lower, upper = simuem_bounds([100, 0, 0], 0.001)
    assert lower[1] == 0.0 and lower[2] == 0.0
    assert upper[0] == 1.0
    assert 0.0 < lower[0] < 1.0 and 0.0 < upper[1] < 1.0


def test_matches_clopper_pearson_at_alpha_over_c():
    """Each SimuEM bound is the one-sided Clopper-Pearson bound at level alpha/c (scipy's exact CI at 1-2*alpha/c)."""
    counts = np.array([700, 200, 80, 20])
    lower, upper = simuem_bounds(counts, 0.01)
    for j, n_j in enumerate(counts):
        ci = binomtest(int(n_j), int(counts.sum())).proportion_ci(confidence_level=1 - 2 * 0.01 / 4, method="exact")
        assert lower[j] == pytest.approx(ci.low, rel=1e-9)
        assert upper[j] == pytest.approx(ci.high, rel=1e-9)


def test_bounds_bracket_the_empirical_frequency():
    counts = np.array([500, 300, 150, 50])
    lower, upper = simuem_bounds(counts, 0.001)
    freq = counts / counts.sum()
    assert np.all(lower < freq) and np.all(freq < upper)


def test_rounding_moves_bounds_inward_by_less_than_one_grid_step():
    d, e = 12, 3
    grid = comb(d, e)
    lower, upper = simuem_bounds([60, 30, 10], 0.01)
    lo_r, up_r = rounded_bounds(lower, upper, d, e)
    assert np.all(lo_r >= lower) and np.all(lo_r - lower < 1 / grid)
    assert np.all(up_r <= upper) and np.all(upper - up_r < 1 / grid)
    assert np.allclose(lo_r * grid, np.round(lo_r * grid)) and np.allclose(up_r * grid, np.round(up_r * grid))


def test_rounding_keeps_exact_grid_values():
    lo_r, up_r = rounded_bounds([0.25, 0.5], [0.25, 0.75], d=4, e=2)  # grid 1/6: 0.25 is not on it
    assert lo_r.tolist() == [2 / 6, 3 / 6]
    assert up_r.tolist() == [1 / 6, 4 / 6]
