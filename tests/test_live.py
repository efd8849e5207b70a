"""The live view of a growing certificate (certcore.views.live): headline, table and target."""

from __future__ import annotations

import doctest

import certcore.views.live
from certcore.engine.certificate import certificate_from_counts
from certcore.views.live import live_headline, live_rows, target_reached, watched_label

NAMES = [f"class{j}" for j in range(10)]
COUNTS = [0, 0, 0, 830, 2, 160, 8, 0, 0, 0]


def _cert(label=3, k=3):
    return certificate_from_counts(COUNTS, d=1024, e=50, k=k, alpha=0.001, label=label, bounds="anytime")


def test_docstring_examples():
    result = doctest.testmod(certcore.views.live)
    assert result.attempted > 0 and result.failed == 0


def test_rows_show_the_certificates_own_bounds_and_radii():
    cert = _cert(label=0)
    rows = live_rows(cert, NAMES)
    assert [r["label"] for r in rows] == ["class3 (3)", "class5 (5)", "class6 (6)", "class0 (0)"]
    assert [r["count"] for r in rows] == [830, 160, 8, 0]
    assert rows[0]["lower bound"] == cert.lower[3] and rows[1]["upper bound"] == cert.upper[5]
    assert rows[0]["radius, top-3"] == f"{cert.radius_of(3)} pixels" and rows[3]["radius, top-3"] == "not certified"


def test_the_watched_label_is_the_true_one_else_the_top_1():
    assert watched_label(_cert(label=5)) == 5 and watched_label(_cert(label=None)) == 3
    assert "'class5' (true label)" in live_headline(_cert(label=5), NAMES)
    assert "'class3' (top-1)" in live_headline(_cert(label=None), NAMES)
    assert "is **not certified yet**" in live_headline(_cert(label=0), NAMES)


def test_target_radius():
    cert = _cert()
    radius = cert.radius_of(3)
    assert radius > 1
    assert target_reached(cert, radius) and not target_reached(cert, radius + 1)
    assert not target_reached(cert, 0)  # 0: no target
