"""The certificate while it grows: what the Certify page shows during sampling in anytime mode.

Pure functions of a ``Certificate`` built from the running counts with anytime-valid bounds (``bounds="anytime"``),
so every frame is itself a valid certificate; the page redraws them at most a few times per second
(``certcore.views.interactive.ProgressReporter``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from certcore.engine.certificate import Certificate


def _radius_words(radius: int) -> str:
    return "not certified" if radius < 0 else ("1 pixel" if radius == 1 else f"{radius:,} pixels")


def watched_label(cert: Certificate) -> int:
    """The label whose radius the live view leads with and a target applies to: the true label when known (fixed
    before sampling), else the top-1 label."""
    return cert.label if cert.label is not None else cert.top_k[0]


def live_headline(cert: Certificate, names: Sequence[str]) -> str:
    """One Markdown line: the watched label's radius after the samples drawn so far.

    >>> from certcore.engine.certificate import certificate_from_counts
    >>> cert = certificate_from_counts([0, 0, 0, 90, 0, 10, 0, 0, 0, 0], d=1024, e=50, k=3, alpha=0.001, label=3,
    ...                                bounds="anytime")
    >>> live_headline(cert, [str(j) for j in range(10)])
    "**After 100 samples:** '3' (true label) is certified in the top 3 for **11 pixels** (anytime-valid)."
    """
    j = watched_label(cert)
    who = f"'{names[j]}' ({'true label' if j == cert.label else 'top-1'})"
    radius = cert.radius_of(j)
    state = ("is **not certified yet**" if radius < 0
             else f"is certified in the top {cert.k} for **{_radius_words(radius)}**")
    kind = "anytime-valid" if cert.bounds == "anytime" else "SimuEM"
    return f"**After {cert.n:,} samples:** {who} {state} ({kind})."


def live_rows(cert: Certificate, names: Sequence[str]) -> list[dict[str, Any]]:
    """A small table: each top-k label (then the true label if not among them) with its count, bounds and radius."""
    return [
        {
            "label": f"{names[x.label]} ({x.label})",
            "count": cert.counts[x.label],
            "lower bound": cert.lower[x.label],
            "upper bound": cert.upper[x.label],
            f"radius, top-{cert.k}": _radius_words(x.radius),
        }
        for x in cert.radii
    ]


def target_reached(cert: Certificate, target: int) -> bool:
    """Whether the watched label (``watched_label``) is certified for at least ``target`` >= 1 pixels; a target
    of 0 means none (sample to n)."""
    return target > 0 and cert.radius_of(watched_label(cert)) >= target
