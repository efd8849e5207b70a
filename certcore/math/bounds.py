"""Label-probability bounds from sampled label counts: Clopper-Pearson, SimuEM (Eq. 8) and Eq. 4 rounding.

numpy/scipy only. Everything here takes the label counts n_1..n_c of n ablated samples and returns float bounds.
``label_bounds`` picks SimuEM (n fixed in advance) or the anytime-valid bounds of ``certcore.math.anytime``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from math import comb, frexp, ulp

import numpy as np
from scipy.stats import beta

from certcore.math.anytime import _anytime_bounds_unchecked
from certcore.math.validation import check_alpha, check_bounds, check_counts, check_d_e, check_probability


def clopper_pearson_lower(counts: np.ndarray, n: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bounds ``B(level; n_j, n - n_j + 1)``; exactly 0 where ``n_j = 0``."""
    counts = np.asarray(counts, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        q = beta.ppf(level, np.maximum(counts, 1), n - counts + 1)
    return np.where(counts == 0, 0.0, q)


def clopper_pearson_upper(counts: np.ndarray, n: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bounds ``B(1 - level; n_j + 1, n - n_j)``; exactly 1 where ``n_j = n``."""
    counts = np.asarray(counts, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        q = beta.ppf(1.0 - level, counts + 1, np.maximum(n - counts, 1))
    return np.where(counts == n, 1.0, q)


def simuem_bounds(counts: Sequence[int] | np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """SimuEM bounds of Eq. 8 (Jia et al. 2020): a lower and an upper bound for every one of the c labels.

    Each bound is a one-sided Clopper-Pearson bound at level ``alpha / c``. For any label l fixed before sampling,
    the lower bound of l together with the upper bounds of all other labels hold simultaneously with probability
    at least ``1 - alpha`` (union bound over c events of probability alpha/c each).

    >>> lo, up = simuem_bounds([10, 0], alpha=0.1)
    >>> float(lo[1]), float(up[0])
    (0.0, 1.0)
    """
    return _simuem_bounds_unchecked(check_counts(counts), check_alpha(alpha))


def _simuem_bounds_unchecked(n_j: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``simuem_bounds`` for counts and alpha already checked (``check_counts``, ``check_alpha``)."""
    n, c = int(n_j.sum()), len(n_j)
    level = alpha / c
    return clopper_pearson_lower(n_j, n, level), clopper_pearson_upper(n_j, n, level)


def label_bounds(counts: Sequence[int] | np.ndarray, alpha: float, bounds: str = "simuem"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of every label: ``simuem_bounds`` (``bounds="simuem"``, valid at the n fixed before
    sampling) or ``anytime_bounds`` (``bounds="anytime"``, valid whenever sampling stops). Same shape and meaning.

    The price of stopping whenever: a lower bound from the same 100 samples, fixed-n against anytime

    >>> [round(float(label_bounds([0, 0, 0, 80, 20], 0.01, b)[0][3]), 3) for b in ("simuem", "anytime")]
    [0.664, 0.605]
    """
    return _label_bounds_unchecked(check_counts(counts), check_alpha(alpha), check_bounds(bounds))


def _label_bounds_unchecked(n_j: np.ndarray, alpha: float, bounds: str) -> tuple[np.ndarray, np.ndarray]:
    """``label_bounds`` for checked arguments."""
    return (_anytime_bounds_unchecked if bounds == "anytime" else _simuem_bounds_unchecked)(n_j, alpha)


def grid_size(d: int, e: int) -> int:
    """C(d, e): the number of equally likely ablations; every label probability is a multiple of 1/C(d, e)."""
    check_d_e(d, e)
    return comb(d, e)


def round_lower_to_grid(p: float | Fraction, grid: int) -> int:
    """Eq. 4 for a lower bound: ``ceil(p * C(d,e))``, computed exactly from the float's binary value."""
    q = Fraction(p)
    return -((-q.numerator * grid) // q.denominator)


def round_upper_to_grid(p: float | Fraction, grid: int) -> int:
    """Eq. 4 for an upper bound: ``floor(p * C(d,e))``, computed exactly from the float's binary value."""
    q = Fraction(p)
    return (q.numerator * grid) // q.denominator


def rounding_keeps_float(p: float, grid: int) -> bool:
    """True when Eq. 4 cannot change the float ``p``: rounded to the 1/grid grid (up or down) and back to the
    nearest float, it is ``p`` again.

    Holds for p = 0 (on the grid) and whenever grid * ulp(p) >= 8: the rounded value lies within 1/grid <= ulp(p)/8
    of p, less than half the distance to either float neighbour of p (ulp(p) above, at least ulp(p)/2 below), so
    rounding to the nearest float gives back p. Decided from bit lengths, without big-integer arithmetic.

    >>> rounding_keeps_float(0.3, grid_size(1024, 50)), rounding_keeps_float(0.3, 10)
    (True, False)
    """
    return p == 0.0 or grid.bit_length() - 1 + frexp(ulp(p))[1] - 1 >= 3


def _float_on_grid(p: float | Fraction, grid: int, to_grid: Callable[[Fraction, int], int], name: str) -> float:
    """``p`` rounded to the grid by ``to_grid`` (Eq. 4), as the nearest float; exact big-integer rounding only
    where ``rounding_keeps_float`` cannot vouch for the float itself."""
    if isinstance(p, float) and 0.0 <= p <= 1.0 and rounding_keeps_float(p, grid):
        return float(p)
    return float(Fraction(to_grid(check_probability(p, name), grid), grid))


def rounded_bounds(
    lower: Sequence[float] | np.ndarray, upper: Sequence[float] | np.ndarray, d: int, e: int
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4 applied to every label: lower bounds rounded up and upper bounds rounded down to multiples of 1/C(d,e).

    Returned as floats for display (each the float nearest the exact rounded value); the exact integers behind
    them are what ``certified_radius`` uses.
    """
    return _rounded_bounds_unchecked(lower, upper, grid_size(d, e))


def _rounded_bounds_unchecked(
    lower: Sequence[float | Fraction] | np.ndarray, upper: Sequence[float | Fraction] | np.ndarray, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """``rounded_bounds`` for a ``grid`` = C(d, e) of a valid d, e (each bound is still checked, cheaply, as it is
    rounded: floats in range pass without conversion)."""
    lo = [_float_on_grid(p, grid, round_lower_to_grid, "lower") for p in lower]
    up = [_float_on_grid(p, grid, round_upper_to_grid, "upper") for p in upper]
    return np.array(lo, dtype=float), np.array(up, dtype=float)
