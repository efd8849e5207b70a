"""Statistical soundness, measured: SimuEM coverage on simulated counts, and end-to-end radius soundness on tiny
exhaustive worlds with sampled counts.

Each check counts failures over many seeded trials and asks a one-sided binomial test whether the failure rate
exceeds alpha; each also runs the same harness on a deliberately broken variant and requires it to be caught, so
the check has power and is not a test that cannot fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from certcore import certify_counts, simuem_bounds
from certcore.math.bounds import clopper_pearson_lower, clopper_pearson_upper
from certcore.math.toy import LookupClassifier, find_attack, label_counts

SETTINGS = [  # (probabilities of the c labels, n, alpha)
    (np.array([0.6, 0.25, 0.1, 0.05]), 200, 0.05),
    (np.array([0.4, 0.3, 0.2, 0.05, 0.05]), 1000, 0.1),
    (np.r_[0.5, np.full(9, 0.5 / 9)], 500, 0.2),
    (np.r_[0.85, np.full(19, 0.15 / 19)], 2000, 0.1),
]
TRIALS = 20_000


def _simultaneous_failures(p: np.ndarray, n: int, alpha: float, divide_by_c: bool, seed: int) -> int:
    """Trials where label 0's lower bound or some other label's upper bound misses its true probability."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, p, size=TRIALS)
    if divide_by_c:
        lower = np.array([simuem_bounds(row, alpha)[0][0] for row in counts[:200]])  # the public path, spot-checked
        level = alpha / len(p)
        assert np.allclose(lower, clopper_pearson_lower(counts[:200, 0], n, level))
    else:
        level = alpha  # the broken variant: no Bonferroni split over the c labels
    low = clopper_pearson_lower(counts[:, 0], n, level)
    up = clopper_pearson_upper(counts[:, 1:], n, level)
    missed = (low > p[0]) | np.any(up < p[1:], axis=1)
    return int(missed.sum())


@pytest.mark.parametrize(("p", "n", "alpha"), SETTINGS)
def test_simuem_bounds_hold_simultaneously_with_probability_one_minus_alpha(p, n, alpha):
    failures = _simultaneous_failures(p, n, alpha, divide_by_c=True, seed=1)
    assert binomtest(failures, TRIALS, alpha, alternative="greater").pvalue > 1e-3, failures / TRIALS
    broken = _simultaneous_failures(p, n, alpha, divide_by_c=False, seed=1)
    assert binomtest(broken, TRIALS, alpha, alternative="greater").pvalue < 1e-3, broken / TRIALS


def _world(seed: int):
    """A tiny world (d=6 binary pixels, e=2, 3 labels) and the exact breaking distance of its top label: the fewest
    changed pixels that push it out of the exact top-1 (found by brute force)."""
    rng = np.random.default_rng(seed)
    d, e, c, alphabet = 6, 2, 3, (0, 1)
    image = tuple(int(v) for v in rng.integers(0, 2, d))
    f = LookupClassifier(c, seed=seed, favourite=0.6, structure=0.5)
    counts = label_counts(f, image, e, c)
    label = int(np.argmax(counts))
    breaking = next(m for m in range(1, d + 1) if find_attack(f, image, e, c, label, 1, m, alphabet))
    return d, e, counts, label, breaking


@pytest.mark.parametrize("seed", [1, 22, 25])  # worlds where one changed pixel already breaks the top label
def test_certified_radius_from_sampled_counts_is_violated_at_most_alpha_often(seed):
    d, e, counts, label, breaking = _world(seed)
    assert breaking == 1
    p = np.array(counts) / sum(counts)
    alpha, n, trials = 0.1, 500, 2000
    sampled = np.random.default_rng(seed).multinomial(n, p, size=trials)
    radii = np.array([certify_counts(row, label, d, e, 1, alpha) for row in sampled])
    violations = int((radii >= breaking).sum())
    assert binomtest(violations, trials, alpha, alternative="greater").pvalue > 1e-3, violations / trials
    # Power: the same harness catches a certifier that claims one pixel more than it certified.
    overclaims = int((np.where(radii >= 0, radii + 1, -1) >= breaking).sum())
    assert binomtest(overclaims, trials, alpha, alternative="greater").pvalue < 1e-3, overclaims / trials
