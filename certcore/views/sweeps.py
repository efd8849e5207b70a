"""What-if sweeps on one set of label counts: the certified radius as k, e, n or alpha changes.

The shapes of the paper's Figures 1-4 (impact of k, e, n and alpha) for a single image. Every point is a full
certification from counts (label bounds, then Theorem 1), so nothing here adds a formula of its own. Every sweep
takes ``bounds`` as ``certify_counts`` does: ``"simuem"`` (the default: Eq. 8, valid at a sample size fixed in
advance) or ``"anytime"`` (valid whenever sampling stops: the bounds to use for counts of an anytime run).
A sweep over e keeps the counts fixed: it shows what the certificate alone does with e. (With a real base
classifier the counts change with e as well: fewer kept pixels make the classifier less accurate.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from certcore.math.bounds import label_bounds
from certcore.math.radius import certified_radius, certify_counts
from certcore.math.validation import check_alpha, check_counts, check_d_e, check_int, check_k, check_label

PAPER_LIKE_COUNTS = (80000, 9000, 5000, 3000, 1000, 800, 600, 400, 150, 50)


def example_counts(num_classes: int, n: int = 100_000) -> np.ndarray:
    """Label counts to start a what-if from: the README's CIFAR10-like example for 10 classes, otherwise a
    geometric decay over the labels (each label a third less likely than the one before), summing to ``n``.

    >>> example_counts(10).tolist() == list(PAPER_LIKE_COUNTS)
    True
    >>> int(example_counts(1000).sum()), int(example_counts(1000)[0])
    (100000, 33333)
    """
    c = check_int(num_classes, "num_classes", 2)
    if c == len(PAPER_LIKE_COUNTS):
        return scale_counts(PAPER_LIKE_COUNTS, n)
    return scale_counts(np.rint(1e12 * (2 / 3) ** np.arange(c)).astype(np.int64) + 1, n)


@dataclass(frozen=True)
class Sweep:
    """Radius of one label for each value of one parameter; -1 = not certified, d = trivially in the top-k."""

    parameter: str
    values: list[float]
    radii: list[int]


def scale_counts(counts: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Counts with the same label frequencies summing to ``n`` (largest-remainder rounding).

    >>> scale_counts([6, 3, 1], 20).tolist()
    [12, 6, 2]
    >>> scale_counts([2, 1], 2).tolist()
    [1, 1]
    """
    n_j = check_counts(counts)
    n = check_int(n, "n", 1)
    exact = n_j * (n / n_j.sum())
    scaled = np.floor(exact).astype(np.int64)
    short = n - int(scaled.sum())
    scaled[np.argsort(-(exact - scaled), kind="stable")[:short]] += 1
    return scaled


def _label_bounds(counts: Sequence[int] | np.ndarray, label: int, alpha: float, bounds: str
                  ) -> tuple[float, np.ndarray]:
    """``bounds`` (``label_bounds``) as Theorem 1 takes them: the label's lower bound, every other label's upper
    bound. The same split ``certify_counts`` makes; computed once for sweeps whose parameter does not change them."""
    n_j = check_counts(counts)
    label = check_label(label, len(n_j))
    lower, upper = label_bounds(n_j, alpha, bounds)
    return float(lower[label]), np.delete(upper, label)


def radius_vs_k(
    counts: Sequence[int] | np.ndarray, label: int, d: int, e: int, alpha: float, ks: Iterable[int],
    bounds: str = "simuem",
) -> Sweep:
    """Figure 1's parameter: the radius of ``label`` in the top-k for each k in ``ks`` (the bounds do not
    depend on k)."""
    ks = [check_k(k) for k in ks]
    p_lower, p_uppers = _label_bounds(counts, label, alpha, bounds)
    return Sweep("k", ks, [certified_radius(p_lower, p_uppers, d, e, k) for k in ks])


def radius_vs_e(
    counts: Sequence[int] | np.ndarray, label: int, d: int, k: int, alpha: float, es: Iterable[int],
    bounds: str = "simuem",
) -> Sweep:
    """Figure 2's parameter: the radius for each e in ``es``, the counts held fixed (see the module docstring;
    the bounds do not depend on e, only their rounding to the 1/C(d, e) grid does)."""
    es = [check_d_e(d, e)[1] for e in es]
    p_lower, p_uppers = _label_bounds(counts, label, alpha, bounds)
    return Sweep("e", es, [certified_radius(p_lower, p_uppers, d, e, k) for e in es])


def radius_vs_n(
    counts: Sequence[int] | np.ndarray, label: int, d: int, e: int, k: int, alpha: float, ns: Iterable[int],
    bounds: str = "simuem",
) -> Sweep:
    """Figure 3's parameter: the radius when the same label frequencies are observed in n samples."""
    ns = [check_int(n, "n", 1) for n in ns]
    return Sweep("n", ns, [certify_counts(scale_counts(counts, n), label, d, e, k, alpha, bounds) for n in ns])


def radius_vs_alpha(
    counts: Sequence[int] | np.ndarray, label: int, d: int, e: int, k: int, alphas: Iterable[float],
    bounds: str = "simuem",
) -> Sweep:
    """Figure 4's parameter: the radius for each failure probability alpha in ``alphas``."""
    alphas = [check_alpha(a) for a in alphas]
    return Sweep("alpha", alphas, [certify_counts(counts, label, d, e, k, a, bounds) for a in alphas])


def default_grids(d: int, e: int, n: int, num_classes: int, k: int = 1, alpha: float = 0.001) -> dict[str, list]:
    """Sweep values around the current parameters (always including them), in the spirit of the paper's figures.

    k: 1..min(10, c - 1); e: log-spaced from e/8 to 4e (the paper's figures use 25-100 on CIFAR10, 500-2,000 on
    ImageNet); n: log-spaced from 1,000 to 10 n; alpha: 0.1 down to 1e-6.
    """
    d, e = check_d_e(d, e)
    n = check_int(n, "n", 1)
    ks = sorted(set(range(1, max(1, min(10, num_classes - 1)) + 1)) | ({k} if k < num_classes else set()))
    es = sorted({int(v) for v in np.geomspace(max(1, e / 8), min(d, 4 * e), 13).round()} | {e})
    ns = sorted({int(v) for v in np.geomspace(min(1000, n), 10 * n, 13).round()} | {n})
    alphas = sorted({10.0**-p for p in range(1, 7)} | {check_alpha(alpha)})
    return {"k": ks, "e": es, "n": ns, "alpha": alphas}
