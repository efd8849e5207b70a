"""Parameter checks shared by the whole package: each raises ValueError naming the parameter and its allowed range."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (high=None: unbounded); bools and non-integral numbers are refused."""
    is_integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
    if not is_integral or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_d_e(d: object, e: object) -> tuple[int, int]:
    """d (pixels, >= 1) and e (pixels kept per ablation, in [1, d])."""
    d = check_int(d, "d", 1)
    e = check_int(e, "e", 1, d)
    return d, e


def check_k(k: object) -> int:
    """k of top-k: an integer >= 1."""
    return check_int(k, "k", 1)


def check_alpha(alpha: object) -> float:
    """alpha: the allowed failure probability, a real number strictly between 0 and 1."""
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number in the open interval (0, 1), got {alpha!r}")
    return float(alpha)


def check_probability(p: object, name: str) -> Fraction:
    """A probability bound in [0, 1] (float, int or Fraction; NaN refused), returned as its exact Fraction value."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0 <= p <= 1):
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return Fraction(p) if isinstance(p, numbers.Rational) else Fraction(float(p))


def check_counts(counts: Sequence[int] | np.ndarray, length: int | None = None) -> np.ndarray:
    """Label counts: a 1-D sequence of c >= 2 non-negative integers with a positive sum (and length c if given)."""
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"counts must be a 1-D sequence of at least 2 label counts, got shape {arr.shape}")
    if length is not None and arr.size != length:
        raise ValueError(f"counts must have one entry per class ({length}), got {arr.size}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("counts must be non-negative integers (found NaN, infinity or a fraction)")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"counts must be non-negative integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        raise ValueError("counts must be non-negative integers (found a negative count)")
    if arr.sum() <= 0:
        raise ValueError("counts must sum to n >= 1 (all counts are zero)")
    return arr


BOUNDS = ("simuem", "anytime")  # fixed-n SimuEM (Eq. 8, the paper's) or anytime-valid (certcore.math.anytime)


def check_bounds(bounds: object) -> str:
    """Which label-probability bounds a certificate uses: one of ``BOUNDS``."""
    if bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {', '.join(map(repr, BOUNDS))}, got {bounds!r}")
    return str(bounds)


def check_label(label: object, num_classes: int) -> int:
    """A label index in [0, num_classes - 1]."""
    return check_int(label, "label", 0, num_classes - 1)
