"""A plain, slow transcription of Eq. 4 and Eq. 6 with fractions.Fraction: the reference the fast code is checked
against (tests) and raced against (bench). Linear scan over r, no algebra, the paper's formulas as written."""

from __future__ import annotations

import math
from fractions import Fraction


def reference_radius(p_lower, p_uppers, d: int, e: int, k: int) -> int:
    """Largest r with p_l' - D(r) > min_t (p'_{Upsilon_t} + D(r)) / t, scanning r = 0, 1, ...; -1 if none."""
    others = list(p_uppers)
    if len(others) < k:
        return d
    n = math.comb(d, e)
    p_l = Fraction(math.ceil(Fraction(p_lower) * n), n)
    top = sorted((Fraction(math.floor(Fraction(p) * n), n) for p in others), reverse=True)[:k]
    smallest_first = sorted(top)
    upsilon = [min(sum(smallest_first[:t]), 1 - p_l) for t in range(1, k + 1)]
    radius = -1
    for r in range(0, d - e + 1):
        damage = 1 - Fraction(math.comb(d - r, e), n)
        if p_l - damage > min((upsilon[t - 1] + damage) / t for t in range(1, k + 1)):
            radius = r
        else:
            break
    return radius
