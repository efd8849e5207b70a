"""Certified l0 radius of top-k predictions under randomized ablation (Theorem 1 / Eq. 6), exact.

numpy/scipy/integers only. Notation of the paper: d pixels, e kept per ablation, N = C(d, e) equally likely
ablations, M_r = C(d - r, e) of them avoid a fixed set of r perturbed pixels, D(r) = 1 - M_r / N.

Exactness: every label probability is a multiple of 1/N (Eq. 4), and N has ~2,100 digits at ImageNet size, so
floats can neither represent the rounding nor decide a boundary case. Here the bounds are turned into integers
L = ceil(p_l * N) and U_j = floor(p_j * N) from the exact binary value of each float, and Eq. 6 becomes a
comparison of integers (see ``certified_radius``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from certcore.math.bounds import (
    _label_bounds_unchecked,
    clopper_pearson_lower,
    round_lower_to_grid,
    round_upper_to_grid,
)
from certcore.math.validation import (
    check_alpha,
    check_bounds,
    check_counts,
    check_d_e,
    check_int,
    check_k,
    check_label,
    check_probability,
)

Bound = float | Fraction


@lru_cache(maxsize=64)
def _grid(d: int, e: int) -> int:
    """C(d, e) for a checked d, e; cached (it has ~2,100 digits at ImageNet size)."""
    return math.comb(d, e)


def _log_comb(n: int, e: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(e + 1) - math.lgamma(n - e + 1)


def _largest_r_with_m_at_least(d: int, e: int, need: int) -> int:
    """The largest r in [0, d - e] with M_r = C(d - r, e) >= need, or -1 if there is none.

    M_r is strictly decreasing in r on [0, d - e], so the r satisfying the condition form an initial segment and
    a binary search finds its end. The search runs on log-gamma floats (cheap); the answer is then checked and,
    if float rounding put it off by some steps, moved with the exact recurrences
    C(m - 1, e) = C(m, e) (m - e) / m and C(m + 1, e) = C(m, e) (m + 1) / (m + 1 - e), so the result is exact.
    """
    if _grid(d, e) < need:
        return -1
    log_need = math.log(need)
    lo, hi = 0, d - e
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _log_comb(d - mid, e) >= log_need:
            lo = mid
        else:
            hi = mid - 1
    r, m = lo, math.comb(d - lo, e)
    while m < need:
        m = m * (d - r + 1) // (d - r + 1 - e)
        r -= 1
    while r < d - e:
        smaller = m * (d - r - e) // (d - r)
        if smaller < need:
            break
        r, m = r + 1, smaller
    return r


def _check_uppers(p_uppers: Sequence[Bound] | np.ndarray) -> list[Bound]:
    values = list(p_uppers)
    for p in values:
        if not (isinstance(p, float) and 0.0 <= p <= 1.0):  # floats in range pass without the slower check
            check_probability(p, "p_uppers")
    return values


def _upsilon_sums(lower: int, top_uppers: list[int], grid: int) -> list[int]:
    """Integer numerators of p'_{Upsilon_t}, t = 1..k: partial sums of the k largest rounded uppers, smallest
    first, each capped at 1 - p_l' (the paper's estimate below Eq. 8)."""
    sums, total = [], 0
    for u in sorted(top_uppers):
        total += u
        sums.append(min(total, grid - lower))
    return sums


def _checked_bounds(
    p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int
) -> tuple[Fraction, list[Bound], int, int, int]:
    """The arguments of Theorem 1, checked once where they enter: (p_lower, p_uppers, d, e, k)."""
    d, e = check_d_e(d, e)
    k = check_k(k)
    return check_probability(p_lower, "p_lower"), _check_uppers(p_uppers), d, e, k


def _rounded_inputs(
    p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int
) -> tuple[int, int, list[int]] | None:
    """(N, L, Upsilon sums) after Eq. 4 for checked arguments, or None when fewer than k other labels exist."""
    if len(p_uppers) < k:
        return None
    grid = _grid(d, e)
    lower = round_lower_to_grid(p_lower, grid)
    top = [round_upper_to_grid(p, grid) for p in heapq.nlargest(k, p_uppers)]
    return grid, lower, _upsilon_sums(lower, top, grid)


def certified_radius(p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int) -> int:
    """Theorem 1 (Eq. 6): the largest r such that label l is certainly in the top-k for every ``||delta||_0 <= r``.

    ``p_lower`` bounds the probability of l from below, ``p_uppers`` bound every other label's from above (Eq. 3).
    Both are rounded to multiples of 1/C(d, e) (Eq. 4): L = ceil(p_l N), U_j = floor(p_j N). With S_t the sum of the
    t smallest of the k largest U_j, capped at N - L, and M_r = C(d - r, e), Eq. 6 multiplied by t N reads

        exists t in 1..k:  t (L - N + M_r) > S_t + N - M_r   <=>   (t + 1) M_r > S_t + (t + 1) N - t L,

    i.e. M_r >= need := min_t floor((S_t + (t + 1) N - t L) / (t + 1)) + 1, all in integers.

    Monotonicity (why binary search is valid): D(r) = 1 - M_r / N grows with r, so the left side p_l' - D(r)
    shrinks and every term (p'_{Upsilon_t} + D(r)) / t grows, hence so does their minimum; once Eq. 6 fails it
    fails for every larger r. Equivalently the condition is M_r >= need with M_r strictly decreasing.

    Returns -1 when Eq. 6 fails already at r = 0 (l is not certified in the top-k), and d when fewer than k other
    labels exist (l is trivially in the top-k). The search range is [0, d - e]: beyond it M_r = 0 and D(r) = 1.

    >>> certified_radius(0.9, [0.05, 0.03], d=1024, e=50, k=1)
    10
    >>> certified_radius(0.4, [0.5], d=1024, e=50, k=1)
    -1
    """
    return _certified_radius_unchecked(*_checked_bounds(p_lower, p_uppers, d, e, k))


def _certified_radius_unchecked(p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int) -> int:
    """``certified_radius`` for arguments already checked (``_checked_bounds`` or the caller's own checks)."""
    rounded = _rounded_inputs(p_lower, p_uppers, d, e, k)
    if rounded is None:
        return int(d)
    grid, lower, sums = rounded
    need = min((s + (t + 1) * grid - t * lower) // (t + 1) + 1 for t, s in enumerate(sums, start=1))
    return _largest_r_with_m_at_least(d, e, need)


def certify_counts(counts: Sequence[int] | np.ndarray, label: int, d: int, e: int, k: int, alpha: float,
                   bounds: str = "simuem") -> int:
    """Certified radius of ``label`` in the top-k from sampled label counts: label bounds, then Theorem 1.

    ``bounds`` names the bounds (``label_bounds``): ``"simuem"`` (the default, Eq. 8 of the paper) holds only
    for a sample size n fixed before sampling; ``"anytime"`` (a confidence sequence, ``certcore.math.anytime``)
    holds whenever sampling stops, e.g. for counts whose n was decided while watching them. The same radius as
    ``certificate_from_counts(..., bounds=bounds)`` gives ``label``.

    >>> certify_counts([80000, 9000, 5000, 3000, 1000, 800, 600, 400, 150, 50], 0, d=1024, e=50, k=3, alpha=0.001)
    15
    >>> [certify_counts([800, 100, 100], 0, d=1024, e=50, k=1, alpha=0.001, bounds=b) for b in ("simuem", "anytime")]
    [7, 6]
    """
    n_j = check_counts(counts)
    label = check_label(label, len(n_j))
    alpha = check_alpha(alpha)
    d, e = check_d_e(d, e)
    return _certify_counts_unchecked(n_j, label, d, e, check_k(k), alpha, check_bounds(bounds))


def _certify_counts_unchecked(n_j: np.ndarray, label: int, d: int, e: int, k: int, alpha: float,
                              bounds: str = "simuem") -> int:
    """``certify_counts`` for checked arguments (``n_j`` an int64 array from ``check_counts``)."""
    lower, upper = _label_bounds_unchecked(n_j, alpha, bounds)
    return _certified_radius_unchecked(float(lower[label]), np.delete(upper, label), d, e, k)


def unrounded_top1_radius(p_lower: Bound, p_upper: Bound, d: int, e: int) -> int:
    """Levine & Feizi's top-1 condition on given bounds, without Eq. 4: the largest r with
    ``p_lower - p_upper > 2 D(r)``, or -1. (The paper's comparison in Section 2.2.)"""
    d, e = check_d_e(d, e)
    return _unrounded_top1_radius_unchecked(check_probability(p_lower, "p_lower"),
                                            check_probability(p_upper, "p_upper"), d, e)


def _unrounded_top1_radius_unchecked(p_lower: Fraction, p_upper: Fraction, d: int, e: int) -> int:
    """``unrounded_top1_radius`` for checked arguments (exact Fractions)."""
    gap = p_lower - p_upper
    grid = _grid(d, e)
    # gap > 2 (N - M) / N  <=>  M > N (1 - gap / 2)
    threshold = grid * (1 - gap / 2)
    return _largest_r_with_m_at_least(d, e, math.floor(threshold) + 1)


def levine_feizi_radius(counts: Sequence[int] | np.ndarray, label: int, d: int, e: int, alpha: float) -> int:
    """Levine & Feizi's top-1 radius as Jia et al. describe it: the label's one-sided Clopper-Pearson lower bound
    at level alpha (not alpha/c), the runner-up's upper bound taken as 1 minus it, and no Eq. 4 rounding."""
    n_j = check_counts(counts)
    label = check_label(label, len(n_j))
    alpha = check_alpha(alpha)
    d, e = check_d_e(d, e)
    return _levine_feizi_radius_unchecked(n_j, label, d, e, alpha)


def _levine_feizi_radius_unchecked(n_j: np.ndarray, label: int, d: int, e: int, alpha: float) -> int:
    """``levine_feizi_radius`` for checked arguments."""
    p = Fraction(float(clopper_pearson_lower(n_j[label : label + 1], int(n_j.sum()), alpha)[0]))
    return _unrounded_top1_radius_unchecked(p, 1 - p, d, e)


def radius_limit(p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int) -> int | None:
    """Theorem 2 as a number: no certificate from these bounds can exceed ``r_l + 1(k != 1)``.

    When its three assumptions hold — C(d - r_l - 2, e - 1) >= 1, p_l' + sum_{Upsilon_k} p'_j <= 1 and
    p_l' + sum_{j != l} p'_j >= 1 — then for every perturbation of more than ``r_l + 1(k != 1)`` pixels some base
    classifier consistent with the bounds pushes l out of the top-k (or ties). Returns that number (r_l for k = 1,
    r_l + 1 for k > 1), or None when an assumption fails, l is not certified, or l is trivially in the top-k.
    """
    checked = _checked_bounds(p_lower, p_uppers, d, e, k)
    return _radius_limit_unchecked(*checked, radius=_certified_radius_unchecked(*checked))


def _radius_limit_unchecked(
    p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int, *, radius: int
) -> int | None:
    """``radius_limit`` for checked arguments whose certified radius is ``radius``."""
    r = radius
    if r < 0 or len(p_uppers) < k:
        return None
    grid = _grid(d, e)
    lower = round_lower_to_grid(p_lower, grid)
    top = sum(round_upper_to_grid(p, grid) for p in heapq.nlargest(k, p_uppers))  # floor keeps the order
    holds = d - r - 2 >= e - 1 and lower + top <= grid and _total_reaches_grid(lower, p_lower, p_uppers, grid)
    return r + (k != 1) if holds else None


def _total_reaches_grid(lower: int, p_lower: Fraction, p_uppers: list[Bound], grid: int) -> bool:
    """Theorem 2's third assumption in integers, ``L + sum_j floor(p_j N) >= N``, exact.

    Rounding every one of (say) 999 bounds exactly is what makes this slow, and it only matters when the sum is
    within m/N of 1 (m bounds; each floor moves its bound by less than 1/N). So with float bounds and N >= 2^60,
    s = fsum(p_l, p_j) (within err = (m + 2) 2^-52 of the exact sum T) decides when |s - 1| >= tol = 4 err:
    s >= 1 + tol gives T N - m > N, a sum above N; s <= 1 - tol gives T N + 1 < N, a sum below N. Otherwise
    (or with Fraction bounds, or a coarse grid) every bound is rounded exactly.
    """
    tol = (len(p_uppers) + 2) * 2.0**-50
    if grid.bit_length() > 60 and all(isinstance(p, float) for p in p_uppers):
        s = math.fsum([float(p_lower), *p_uppers])
        if s >= 1 + tol:
            return True
        if s <= 1 - tol:
            return False
    return lower + sum(round_upper_to_grid(p, grid) for p in p_uppers) >= grid


@dataclass(frozen=True)
class BoundCurves:
    """Both sides of Eq. 6 over r = 0..r_max, as floats for plotting.

    ``lhs[r] = p_l' - D(r)``; ``terms[t-1][r] = (p'_{Upsilon_t} + D(r)) / t``; ``rhs[r] = min_t terms[t-1][r]``.
    The certified radius is the last r where ``lhs > rhs`` (the curves are exact values rounded to float).
    """

    r: np.ndarray
    damage: np.ndarray
    lhs: np.ndarray
    rhs: np.ndarray
    terms: np.ndarray


def bound_curves(
    p_lower: Bound, p_uppers: Sequence[Bound] | np.ndarray, d: int, e: int, k: int, r_max: int
) -> BoundCurves:
    """The left side, right side and each t-term of Eq. 6 for r = 0..r_max (what the app plots)."""
    p_lower, p_uppers, d, e, k = _checked_bounds(p_lower, p_uppers, d, e, k)
    rounded = _rounded_inputs(p_lower, p_uppers, d, e, k)
    if rounded is None:
        raise ValueError(f"k must be at most the number of other labels ({len(p_uppers)}), got {k}")
    grid, lower, sums = rounded
    r_max = check_int(r_max, "r_max", 0, d)
    m_values, m = [], grid
    for r in range(r_max + 1):
        m_values.append(m)
        m = m * (d - r - e) // (d - r) if r < d - e else 0
    damage = np.array([(grid - m) / grid for m in m_values])
    lhs = np.array([(lower - grid + m) / grid for m in m_values])
    terms = np.array([[(s + grid - m) / (t * grid) for m in m_values] for t, s in enumerate(sums, start=1)])
    return BoundCurves(r=np.arange(r_max + 1), damage=damage, lhs=lhs, rhs=terms.min(axis=0), terms=terms)
