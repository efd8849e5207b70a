"""Certificates in words and tables: the right confidence for the right labels, and honest problem messages."""

from __future__ import annotations

import csv
import doctest
import io
import json

import certcore.views.explain
from certcore.engine.certificate import certificate_from_counts
from certcore.models.data import class_names
from certcore.views.explain import (
    bound_rows,
    certificate_json,
    counts_csv,
    curves_for,
    parameter_problems,
    radius_rows,
    reading,
)
from certcore.views.sweeps import PAPER_LIKE_COUNTS

NAMES = class_names("cifar10")


def _cert(label=0, k=3, alpha=0.001, counts=PAPER_LIKE_COUNTS):
    return certificate_from_counts(counts, d=1024, e=50, k=k, alpha=alpha, label=label)


def test_docstring_examples():
    result = doctest.testmod(certcore.views.explain)
    assert result.attempted > 0 and result.failed == 0


def test_reading_uses_one_minus_alpha_for_the_true_label_and_one_minus_two_alpha_for_the_top_k():
    text = reading(_cert(label=0), NAMES)
    assert "**With confidence 99.9%**, an attacker who changes any 15 of the 1,024 pixels" in text
    assert "'airplane' out of the smoothed classifier's top 3" in text
    assert "Jointly with confidence 99.8%" in text and "Theorem 2" in text


def test_reading_of_an_uncertified_true_label_and_of_top1():
    assert "'cat' is **not certified**" in reading(_cert(label=3), NAMES)
    top1 = reading(_cert(label=None, k=1), NAMES)
    assert "the prediction was picked" in top1 and "stays the top-1 prediction under any 8 pixels" in top1
    assert "99.9%" not in top1  # no label fixed in advance: only the joint statement


def test_radius_rows_compare_with_levine_feizi():
    rows = radius_rows(_cert(label=3), NAMES)
    assert [r.role for r in rows] == ["top-1", "top-2", "top-3", "true label"]
    assert rows[0].radius == 15 and (rows[0].top1_radius, rows[0].levine_feizi_top1) == (8, 6)
    unanimous = radius_rows(certificate_from_counts([400] + [0] * 9, d=1024, e=50, k=1, alpha=0.001), NAMES)[0]
    assert unanimous.levine_feizi_top1 > unanimous.top1_radius  # one bound at alpha beats 2c bounds at alpha/c


def test_bound_rows_keep_top_k_and_true_label():
    rows = bound_rows(_cert(label=9), NAMES, limit=2)
    assert [r.label for r in rows] == [0, 1, 2, 9]
    assert all(r.lower <= r.lower_rounded <= r.frequency <= r.upper_rounded <= r.upper for r in rows)


def test_parameter_problems():
    assert parameter_problems(d=1024, e=50, k=3, n=100, alpha=0.001, num_classes=10) == []
    bad = parameter_problems(d=1024, e=2000, k=10, n=100, alpha=0.001, num_classes=10)
    assert len(bad) == 2 and "e = 2,000" in bad[0] and "k = 10" in bad[1]
    (small_n,) = parameter_problems(d=1024, e=50, k=1, n=5, alpha=0.001, num_classes=10)
    assert "use n >= 14" in small_n
    assert "alpha = 1" in parameter_problems(d=1024, e=50, k=1, n=5, alpha=1.0, num_classes=10)[0]


def test_exports():
    cert = _cert()
    rows = list(csv.DictReader(io.StringIO(counts_csv(cert, NAMES))))
    assert [int(r["count"]) for r in rows] == list(PAPER_LIKE_COUNTS) and rows[3]["name"] == "cat"
    data = json.loads(certificate_json(cert, {"image": "x"}))
    assert data["context"] == {"image": "x"} and data["certificate"]["counts"] == list(PAPER_LIKE_COUNTS)


def test_curves_cross_at_the_radius():
    cert = _cert()
    curves = curves_for(cert, 0, 30)
    certified = curves.lhs > curves.rhs
    assert certified[: 16].all() and not certified[16:].any()
