"""The smallest useful sample size: below it no outcome of sampling can certify, whatever the classifier does.

One sentence, ``too_few_samples``, serves the app, ``certify()`` and the evaluation CLI; ``warn_if_too_few_samples``
turns it into a ``SampleSizeWarning``. Integers and the certificate's own math only (no torch).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from certcore.math.radius import _certify_counts_unchecked
from certcore.math.validation import check_alpha, check_d_e, check_int, check_k


@lru_cache(maxsize=256)
def smallest_certifying_n(
    num_classes: int, d: int, e: int, k: int, alpha: float, n_max: int = 1 << 40
) -> int | None:
    """The smallest n for which even a unanimous vote, counts = [n, 0, ..., 0], certifies radius >= 0.

    Below it no outcome of sampling can certify anything at this alpha (Eq. 8's bounds are too wide), so it is
    the least n worth running. The radius of a unanimous vote grows with n, hence a doubling then a binary
    search. None if even ``n_max`` samples cannot certify, or if k >= c (every label is trivially in the top-k).
    Cached: the answer depends on these numbers only.

    >>> smallest_certifying_n(10, d=1024, e=50, k=1, alpha=0.001)
    14
    """
    c = check_int(num_classes, "num_classes", 2)
    k = check_k(k)
    if k >= c:
        return None
    alpha = check_alpha(alpha)
    d, e = check_d_e(d, e)

    def certifies(n: int) -> bool:
        return _certify_counts_unchecked(np.array([n] + [0] * (c - 1), dtype=np.int64), 0, d, e, k, alpha) >= 0

    hi = 1
    while not certifies(hi):
        if hi >= n_max:
            return None
        hi = min(2 * hi, n_max)
    lo = hi // 2  # certifies(lo) is False (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if certifies(mid) else (mid, hi)
    return hi


class SampleSizeWarning(UserWarning):
    """n is so small that no outcome of sampling can certify at these settings."""


def too_few_samples(n: int, *, num_classes: int, d: int, e: int, k: int, alpha: float) -> str | None:
    """Why ``n`` samples can never certify at these settings, one sentence naming the smallest n that could
    (``smallest_certifying_n``), or None when n is enough. The same sentence serves the app, ``certify()`` and
    the evaluation CLI.

    >>> too_few_samples(100, num_classes=10, d=1024, e=50, k=1, alpha=0.001) is None
    True
    >>> too_few_samples(5, num_classes=10, d=1024, e=50, k=1, alpha=0.001).endswith("use n >= 14.")
    True
    """
    if k >= num_classes:
        return None
    n_min = smallest_certifying_n(num_classes, d, e, k, alpha)
    if n_min is not None and n >= n_min:
        return None
    need = f"use n >= {n_min:,}" if n_min is not None else "no n is large enough"
    return (f"n = {n:,} samples can never certify at alpha = {alpha:g}: even if all {n:,} samples voted for one "
            f"label, its SimuEM lower bound (Eq. 8, one-sided at alpha/c = {alpha / num_classes:.2g}) would not "
            f"exceed the other labels' upper bounds. With c = {num_classes}, k = {k}, d = {d:,}, e = {e:,}: {need}.")


def warn_if_too_few_samples(n: int, *, num_classes: int, d: int, e: int, k: int, alpha: float,
                            stacklevel: int = 3) -> None:
    """Warn (``SampleSizeWarning``) with ``too_few_samples``'s sentence when n can never certify."""
    message = too_few_samples(n, num_classes=num_classes, d=d, e=e, k=k, alpha=alpha)
    if message is not None:
        warnings.warn(message, SampleSizeWarning, stacklevel=stacklevel)
