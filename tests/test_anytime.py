"""Anytime-valid bounds (certcore.math.anytime): coverage at every n of whole sample paths, measured, with a broken
variant the same harness catches; agreement with simuem_bounds in shape, semantics and bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import betaln
from scipy.stats import binomtest

from certcore import anytime_bounds, simuem_bounds
from certcore.math.anytime import PRIOR, mixture_lower, mixture_upper
from certcore.math.bounds import clopper_pearson_lower, clopper_pearson_upper

HORIZON = 20_000  # every n = 1..HORIZON of each path is checked
PATHS = 2_000
PATH_SETTINGS = [  # (label probabilities, the label l whose lower bound counts; the others' upper bounds count)
    (np.array([0.97, 0.02, 0.009, 0.001]), 0),  # l near 1 (its lower bound), the others near 0 (their upper bounds)
    (np.array([0.002, 0.95, 0.048]), 0),  # l near 0, another label near 1
]


def _last_true(ok, n: np.ndarray) -> np.ndarray:
    """For every n, the largest S in [0, n] with ok(S, n), by bisection over S (ok must hold at S = 0, and the set
    where it holds must be an initial segment: see test_bounds_are_monotone_in_the_count)."""
    lo, hi = np.zeros_like(n), n + 1
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        good = ok(mid, n)
        lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
    return lo


def miss_thresholds(p: np.ndarray, label: int, alpha: float, anytime: bool) -> np.ndarray:
    """thresholds[j, n - 1]: label l's lower bound misses p_l at n exactly when its count exceeds row l; another
    label j's upper bound misses p_j exactly when its count is below row j. The bounds are those of
    ``anytime_bounds`` (``anytime``) or, the broken variant, the fixed-n SimuEM bounds used as if anytime."""
    n = np.arange(1, HORIZON + 1)
    level = alpha / len(p)
    lower = (lambda s, m: mixture_lower(s, m, level)) if anytime else (lambda s, m: clopper_pearson_lower(s, m, level))
    upper = (lambda s, m: mixture_upper(s, m, level)) if anytime else (lambda s, m: clopper_pearson_upper(s, m, level))
    rows = []
    for j, p_j in enumerate(p):
        if j == label:
            rows.append(_last_true(lambda s, m, p_j=p_j: lower(s, m) <= p_j, n))
        else:  # the smallest S whose upper bound reaches p_j, as n minus the largest count of the complement
            rows.append(n - _last_true(lambda s, m, p_j=p_j: upper(m - s, m) >= p_j, n))
    return np.array(rows)


def path_misses(p: np.ndarray, label: int, thresholds: list[np.ndarray], seed: int) -> list[int]:
    """For each threshold table: how many of PATHS sample paths of length HORIZON miss at some n (any bound)."""
    rng = np.random.default_rng(seed)
    misses = np.zeros(len(thresholds), dtype=int)
    chunk = 250
    for _ in range(PATHS // chunk):
        draws = np.searchsorted(np.cumsum(p)[:-1], rng.random((chunk, HORIZON)), side="right")
        missed = np.zeros((len(thresholds), chunk), dtype=bool)
        for j in range(len(p)):
            counts = np.cumsum(draws == j, axis=1, dtype=np.int32)
            for t, table in enumerate(thresholds):
                wrong = counts > table[j] if j == label else counts < table[j]
                missed[t] |= wrong.any(axis=1)
        misses += missed.sum(axis=1)
    return misses.tolist()


@pytest.mark.slow
@pytest.mark.parametrize(("p", "label"), PATH_SETTINGS)
def test_bounds_hold_at_every_n_of_whole_sample_paths(p, label):
    """Path-wise miss rate <= alpha (one-sided binomial test, p-value > 1e-3); the fixed-n bound is caught."""
    alphas = (0.05, 0.2)
    tables = [miss_thresholds(p, label, a, anytime) for a in alphas for anytime in (True, False)]
    misses = path_misses(p, label, tables, seed=int(p[label] * 1e4))
    for (alpha, anytime), missed in zip([(a, t) for a in alphas for t in (True, False)], misses, strict=True):
        rate = missed / PATHS
        print(f"p={p.tolist()} l={label} alpha={alpha} {'anytime' if anytime else 'fixed-n (broken)'}: "
              f"path-wise miss rate {rate:.4f} ({missed}/{PATHS} paths, n = 1..{HORIZON})")
        pvalue = binomtest(missed, PATHS, alpha, alternative="greater").pvalue
        assert (pvalue > 1e-3) if anytime else (pvalue < 1e-3), (alpha, anytime, rate)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, HORIZON])
def test_bounds_are_monotone_in_the_count(n):
    """Non-decreasing in S at fixed n (what the path harness relies on). Why: at q = lower(S), adding one success
    multiplies the mixture martingale by (a + S)(1 - q) / ((b + n - S - 1) q) >= 1 because q <= S/n and a + b <= 1,
    so q stays excluded; the upper bound is the mirror image."""
    s = np.arange(n + 1)
    for level in (0.05 / 4, 0.001 / 1000):
        assert np.all(np.diff(mixture_lower(s, n, level)) >= 0)
        assert np.all(np.diff(mixture_upper(s, n, level)) >= 0)
    assert sum(PRIOR) <= 1


def _log_m(q: float, s: int, n: int) -> float:
    a, b = PRIOR
    return betaln(a + s, b + n - s) - betaln(a, b) - s * np.log(q) - (n - s) * np.log1p(-q)


@pytest.mark.parametrize(("s", "n"), [(1, 1), (0, 1000), (1, 1000), (37, 1000), (999, 1000), (1000, 1000),
                                      (93344, 100_000), (0, 100_000), (17, 100_000)])
def test_ends_are_where_the_mixture_martingale_reaches_one_over_level(s, n):
    """The bisection and the closed forms against brentq on log M_n(q) = log(1 / level), and conservative."""
    level = 0.001 / 10
    lower, upper = float(mixture_lower(s, n, level)), float(mixture_upper(s, n, level))
    target = -np.log(level)
    if s == 0:
        assert lower == 0.0
    else:
        top = s / n if s < n else 1 - 1e-16  # 0 * log(0) would be nan
        root = brentq(lambda q: _log_m(q, s, n) - target, 1e-300, top, xtol=1e-300, rtol=1e-15)
        assert lower == pytest.approx(root, rel=1e-12) and _log_m(lower, s, n) >= target - 1e-9
    if s == n:
        assert upper == 1.0
    else:
        root = brentq(lambda q: _log_m(q, s, n) - target, max(s / n, 1e-300), 1 - 1e-16, xtol=1e-300, rtol=1e-15)
        assert upper == pytest.approx(root, rel=1e-12) and _log_m(upper, s, n) >= target - 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_never_tighter_than_fixed_n_simuem_and_same_shape(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 30))
    n = int(rng.choice([1, 10, 1000, 100_000]))
    counts = rng.multinomial(n, rng.dirichlet(np.full(c, 0.3)))
    alpha = float(rng.choice([0.001, 0.05, 0.5]))
    lower, upper = anytime_bounds(counts, alpha)
    fixed_lower, fixed_upper = simuem_bounds(counts, alpha)
    assert lower.shape == upper.shape == fixed_lower.shape == (c,)
    assert np.all(lower <= fixed_lower) and np.all(upper >= fixed_upper)
    freq = counts / n
    assert np.all((lower <= freq) & (freq <= upper) & (lower >= 0) & (upper <= 1))
    assert np.all(lower[counts == 0] == 0.0) and np.all(upper[counts == n] == 1.0)
    assert np.all(lower[counts > 0] > 0) and np.all(upper[counts < n] < 1)


def test_each_bound_is_the_confidence_sequence_at_alpha_over_c():
    counts = np.array([700, 200, 80, 20, 0])
    lower, upper = anytime_bounds(counts, 0.01)
    assert np.array_equal(lower, mixture_lower(counts, 1000, 0.01 / 5))
    assert np.array_equal(upper, mixture_upper(counts, 1000, 0.01 / 5))


@pytest.mark.parametrize(
    ("counts", "alpha"),
    [([5], 0.1), ([[1, 2], [3, 4]], 0.1), ([0, 0], 0.1), ([-1, 3], 0.1), ([1.5, 2], 0.1), ([np.nan, 2], 0.1),
     (["a", "b"], 0.1), ([1, 2], 0.0), ([1, 2], 1.0), ([1, 2], True), ([1, 2], "0.1")],
)
def test_bad_input_errors_are_those_of_simuem_bounds(counts, alpha):
    with pytest.raises(ValueError) as fixed:
        simuem_bounds(counts, alpha)
    with pytest.raises(ValueError, match="counts|alpha") as anytime:
        anytime_bounds(counts, alpha)
    assert str(anytime.value) == str(fixed.value)

