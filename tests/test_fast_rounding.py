"""The float shortcuts around Eq. 4 give exactly what rounding every bound with big integers gives.

``rounded_bounds`` returns a float bound unchanged where ``rounding_keeps_float`` vouches for it, and
``radius_limit`` decides Theorem 2's sum assumption from an ``fsum`` away from the boundary. Both are compared
here against the plain exact computation: at the thresholds (bounds whose ulp times the grid is just at the
cut-off, powers of two, subnormals; sums exactly at, one ulp beside and one 1/N beside the boundary) and on
random inputs.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certcore.math.bounds import (
    grid_size,
    round_lower_to_grid,
    round_upper_to_grid,
    rounded_bounds,
    rounding_keeps_float,
)
from certcore.math.radius import _total_reaches_grid, certified_radius, radius_limit


def exact_on_grid(p: float, grid: int, up: bool) -> float:
    """Eq. 4 with big integers, then the nearest float (what rounded_bounds did for every bound)."""
    q = Fraction(p)
    units = -((-q.numerator * grid) // q.denominator) if up else (q.numerator * grid) // q.denominator
    return float(Fraction(units, grid))


def exact_total_reaches(p_lower: float, p_uppers: list[float], grid: int) -> bool:
    return round_lower_to_grid(p_lower, grid) + sum(round_upper_to_grid(p, grid) for p in p_uppers) >= grid


def exact_radius_limit(p_lower: float, p_uppers: list[float], d: int, e: int, k: int) -> int | None:
    """Theorem 2's limit with every bound rounded exactly (the code before the shortcut)."""
    r = certified_radius(p_lower, p_uppers, d, e, k)
    if r < 0 or len(p_uppers) < k:
        return None
    grid = grid_size(d, e)
    lower = round_lower_to_grid(p_lower, grid)
    uppers = sorted((round_upper_to_grid(p, grid) for p in p_uppers), reverse=True)
    holds = d - r - 2 >= e - 1 and lower + sum(uppers[:k]) <= grid and lower + sum(uppers) >= grid
    return r + (k != 1) if holds else None


def _threshold_cases() -> list[tuple[float, int]]:
    """(p, grid) pairs with grid * ulp(p) around the shortcut's cut-off of 8, on and off powers of two."""
    cases = []
    for p in (0.5, 0.3, 0.25 + 2**-54, 1.0, 2**-30, 3 * 2**-40, math.nextafter(0.5, 0), 5e-324, 1e-310, 0.0):
        log_ulp = math.frexp(math.ulp(p))[1] - 1 if p > 0 else -1074
        for shift in range(-6, 7):
            bits = max(1, 3 - log_ulp + shift)
            for grid in (2**bits - 1, 2**bits, 2**bits + 1, 3 * 2 ** (bits - 2) + 1 if bits > 2 else 3):
                cases.append((p, grid))
    return cases


@pytest.mark.parametrize(("p", "grid"), _threshold_cases())
def test_rounded_float_is_exact_at_the_cut_off(p, grid):
    assert rounded_bounds_on_grid(p, grid) == (exact_on_grid(p, grid, True), exact_on_grid(p, grid, False))
    if rounding_keeps_float(p, grid):
        assert exact_on_grid(p, grid, True) == p == exact_on_grid(p, grid, False)


def rounded_bounds_on_grid(p: float, grid: int) -> tuple[float, float]:
    """rounded_bounds for one bound on an arbitrary grid (through the module's private helper)."""
    from certcore.math.bounds import _float_on_grid

    return (_float_on_grid(p, grid, round_lower_to_grid, "lower"), _float_on_grid(p, grid, round_upper_to_grid,
                                                                                    "upper"))


def test_the_shortcut_is_taken_at_real_sizes():
    """Not a vacuous check: at CIFAR10 and ImageNet sizes ordinary bounds skip the big-integer rounding."""
    assert rounding_keeps_float(0.0123, grid_size(1024, 50))
    assert rounding_keeps_float(1e-30, grid_size(50176, 1000))
    assert not rounding_keeps_float(0.3, grid_size(10, 3))


@settings(max_examples=300, deadline=None)
@given(p=st.floats(0.0, 1.0), d=st.integers(2, 3000), data=st.data())
def test_rounded_bounds_match_exact_rounding(p, d, data):
    e = data.draw(st.integers(1, d))
    grid = grid_size(d, e)
    lo, up = rounded_bounds([p], [p], d, e)
    assert (float(lo[0]), float(up[0])) == (exact_on_grid(p, grid, True), exact_on_grid(p, grid, False))


GRID = 2**70  # bounds a / 2^70 with a of at most 53 significant bits are exact floats: exact sums around 1


def _bounds_summing_to(rng: random.Random, m: int, offset: int) -> list[float]:
    """m + 1 exact float bounds over GRID whose numerators sum to GRID + offset: m multiples of 2^18 summing to
    GRID - 2^40, and one small bound 2^40 + offset that carries the offset (all below 2^53 / 2^18 units)."""
    cuts = sorted(rng.randrange((GRID >> 18) - (1 << 22) + 1) for _ in range(m - 1))
    big = [(b - a) << 18 for a, b in zip([0, *cuts], [*cuts, (GRID >> 18) - (1 << 22)], strict=True)]
    numerators = [*big, (1 << 40) + offset]
    assert sum(numerators) == GRID + offset and all(0 <= x <= GRID for x in numerators)
    floats = [x / GRID for x in numerators]
    assert all(Fraction(f) == Fraction(x, GRID) for f, x in zip(floats, numerators, strict=True))
    rng.shuffle(floats)
    return floats


@pytest.mark.parametrize("m", [2, 10, 999])
def test_sum_assumption_exact_at_the_boundary(m, monkeypatch):
    """Bounds summing to exactly N + offset units: the answer is offset >= 0. Within the float shortcut's
    tolerance of 1 the bounds are rounded exactly; from the tolerance on the shortcut decides (no rounding)."""
    import certcore.math.radius

    rounded = []
    monkeypatch.setattr(certcore.math.radius, "round_upper_to_grid", lambda p, grid: rounded.append(p) or
                        round_upper_to_grid(p, grid))
    tol_units = (m + 1 + 2) << 20  # tol = (uppers + 2) 2^-50 of the sum, in units of 2^-70; m + 1 uppers
    for offset in [-2, -1, 0, 1, 2, *(sign * tol_units + step for sign in (-1, 1) for step in (-1, 0, 1, 2))]:
        bounds = _bounds_summing_to(random.Random(m * 1000 + offset), m + 1, offset)
        lower, uppers = bounds[0], bounds[1:]
        rounded.clear()
        got = _total_reaches_grid(round_lower_to_grid(lower, GRID), Fraction(lower), uppers, GRID)
        assert got == exact_total_reaches(lower, uppers, GRID) == (offset >= 0), offset
        if abs(offset) <= 2 or abs(offset) >= tol_units:  # between: the float sum rounds either way
            assert bool(rounded) == (abs(offset) <= 2), offset


@pytest.mark.parametrize("units", [-3, -1, 0, 1, 3])
def test_sum_assumption_exact_one_ulp_beside_one(units):
    """Off-grid floats whose float sum is 1 moved by a few ulps: decided exactly (by the big-integer path)."""
    grid = grid_size(50176, 1000)
    rng = random.Random(units)
    uppers = [rng.random() / 999 for _ in range(998)]
    lower = 0.37
    last = 1.0 - math.fsum([lower, *uppers])
    for _ in range(abs(units)):
        last = math.nextafter(last, 2.0 if units > 0 else -1.0)
    uppers.append(last)
    got = _total_reaches_grid(round_lower_to_grid(lower, grid), Fraction(lower), uppers, grid)
    assert got == exact_total_reaches(lower, uppers, grid)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 60), scale=st.floats(0.5, 1.5),
       size=st.sampled_from([(1024, 50), (50176, 1000), (300, 20), (40, 30)]), k=st.integers(1, 5))
def test_radius_limit_matches_exact_rounding(seed, m, scale, size, k):
    """Random bounds whose sum lies near 1 (scale): the limit equals the all-exact computation."""
    rng = random.Random(seed)
    raw = [rng.random() for _ in range(m + 1)]
    total = sum(raw)
    bounds = [min(1.0, scale * x / total) for x in raw]
    d, e = size
    assert radius_limit(bounds[0], bounds[1:], d, e, k) == exact_radius_limit(bounds[0], bounds[1:], d, e, k)
