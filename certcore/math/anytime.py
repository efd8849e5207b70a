"""Anytime-valid label-probability bounds: a beta-binomial mixture confidence sequence for every label.

numpy/scipy only. Drop-in for ``simuem_bounds`` when the sample size is not fixed in advance (sampling may stop at
any moment, for any reason, e.g. when the radius looks good): the bounds hold simultaneously for every n.

Construction (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic
confidence sequences", Ann. Statist. 49(2), the conjugate beta-binomial mixture). For one label with probability p
and count S_n after n i.i.d. samples, and a prior Beta(a, b) fixed in advance,

    M_n(p) = B(a + S_n, b + n - S_n) / B(a, b) / (p^S_n (1 - p)^(n - S_n))

is the Bayes factor of the beta-binomial marginal likelihood against the true p: a nonnegative martingale with
M_0 = 1 under p. By Ville's inequality P(exists n: M_n(p) >= 1/level) <= level, so the sets
{q : M_n(q) < 1/level} contain p at every n at once with probability >= 1 - level. Each set is an interval
(``log M_n(q)`` is convex in q, minimal at S_n/n); its ends are the lower and upper bound. Both one-sided bounds of
a label miss only on that one event, so each holds uniformly over n at ``level``.

As in SimuEM (Eq. 8) every bound gets ``level = alpha / c``; for a label l fixed before sampling, l's lower bound and
the c - 1 other labels' upper bounds then hold together, at every n, with probability >= 1 - alpha (union bound), so
Theorem 1 applies unchanged whenever sampling stops. The price, in pixels of the certified radius against SimuEM at
the same fixed n, and the other constructions measured: bench/RESULTS.md ("Price of anytime-valid bounds").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import betaln

from certcore.math.validation import check_alpha, check_counts

PRIOR = (0.5, 0.5)  # Beta(1/2, 1/2), Jeffreys: the same regret, about log(n)/2, at every p (priced in bench/RESULTS.md)
_BISECTIONS = 64  # halvings of the bracket: far below the spacing of any two bounds that matter


def log_threshold(counts: np.ndarray, n: np.ndarray | int, level: float, prior: tuple[float, float]) -> np.ndarray:
    """``log B(a + S, b + n - S) - log B(a, b) + log(level)``: q is excluded exactly where
    ``S log q + (n - S) log(1 - q) <= log_threshold``, i.e. where ``M_n(q) >= 1/level``."""
    a, b = prior
    return betaln(a + counts, b + n - counts) - betaln(a, b) + np.log(level)


def _log_likelihood(q: np.ndarray, counts: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # empty brackets (S = 0 or n) are replaced by the caller
        return counts * np.log(q) + (n - counts) * np.log1p(-q)


def _excluded_end(lo: np.ndarray, hi: np.ndarray, counts, n, cut, excluded_at_lo: bool) -> np.ndarray:
    """Bisection on [lo, hi] (vectorised), where the log likelihood is monotone and crosses ``cut`` once; returns
    the bracket end that is still excluded (the conservative side), so float rounding can only loosen the bound."""
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        out = _log_likelihood(mid, counts, n) <= cut
        if excluded_at_lo:
            lo, hi = np.where(out, mid, lo), np.where(out, hi, mid)
        else:
            lo, hi = np.where(out, lo, mid), np.where(out, mid, hi)
    return lo if excluded_at_lo else hi


def mixture_lower(counts, n, level: float, prior: tuple[float, float] = PRIOR) -> np.ndarray:
    """Time-uniform lower bounds at ``level`` for counts ``S`` out of ``n`` (arrays broadcast); exactly 0 where S = 0,
    and ``exp(cut / n)`` in closed form where S = n."""
    counts, n = np.broadcast_arrays(np.asarray(counts, dtype=np.float64), np.asarray(n, dtype=np.float64))
    cut = log_threshold(counts, n, level, prior)
    safe = np.maximum(n, 1.0)
    lo = _excluded_end(np.zeros_like(counts), counts / safe, counts, n, cut, excluded_at_lo=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        full = np.nextafter(np.exp(cut / safe), 0.0)  # one step inward: the rounded root stays excluded
    return np.where(counts == 0, 0.0, np.where(counts == n, full, lo))


def mixture_upper(counts, n, level: float, prior: tuple[float, float] = PRIOR) -> np.ndarray:
    """Time-uniform upper bounds at ``level`` for counts ``S`` out of ``n`` (arrays broadcast); exactly 1 where S = n,
    and ``1 - exp(cut / n)`` in closed form where S = 0 (computed directly, so small bounds keep their precision)."""
    counts, n = np.broadcast_arrays(np.asarray(counts, dtype=np.float64), np.asarray(n, dtype=np.float64))
    cut = log_threshold(counts, n, level, prior)
    safe = np.maximum(n, 1.0)
    hi = _excluded_end(counts / safe, np.ones_like(counts), counts, n, cut, excluded_at_lo=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        empty = np.nextafter(-np.expm1(cut / safe), 1.0)
    return np.where(counts == n, 1.0, np.where(counts == 0, empty, hi))


def anytime_bounds(counts: Sequence[int] | np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Anytime-valid lower and upper bounds for every one of the c labels: the SimuEM recipe (Eq. 8) with each
    one-sided Clopper-Pearson bound replaced by the beta-binomial mixture confidence sequence at ``alpha / c``
    (Howard et al. 2021; see the module docstring), prior Beta(1/2, 1/2).

    For any label l fixed before sampling, with probability >= 1 - alpha, at every n at once, ``lower[l] <= p_l``
    and ``upper[j] >= p_j`` for all j != l: valid whenever sampling stops.

    Never tighter than ``simuem_bounds`` at the same counts: the lower bound is non-decreasing in the count (prior
    with a + b <= 1), so a lower bound above Clopper-Pearson's would reject, at that n alone, a q whose probability
    of so large a count exceeds alpha/c, against Markov's inequality for M_n(q); the upper bound likewise.

    No label seen in 1,000 samples: its upper bound, at every n, against SimuEM's at this n only

    >>> round(float(anytime_bounds([0, 1000], alpha=0.001)[1][0]), 4), float(anytime_bounds([0, 1000], 0.001)[0][0])
    (0.0116, 0.0)
    >>> from certcore.math.bounds import simuem_bounds
    >>> round(float(simuem_bounds([0, 1000], alpha=0.001)[1][0]), 4)
    0.0076
    """
    return _anytime_bounds_unchecked(check_counts(counts), check_alpha(alpha))


def _anytime_bounds_unchecked(n_j: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``anytime_bounds`` for counts and alpha already checked (``check_counts``, ``check_alpha``)."""
    n, c = int(n_j.sum()), len(n_j)
    level = alpha / c
    return mixture_lower(n_j, n, level), mixture_upper(n_j, n, level)
