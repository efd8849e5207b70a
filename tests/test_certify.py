"""certify and certificate_from_counts: one code path, JSON round trip, delegation to the math, validation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from certcore.engine.certificate import Certificate, certificate_from_counts, certify, top_k_labels
from certcore.engine.sampling import sample_counts
from certcore.math.anytime import anytime_bounds
from certcore.math.bounds import rounded_bounds, simuem_bounds
from certcore.math.radius import certified_radius, certify_counts, levine_feizi_radius, radius_limit
from tests.tiny_models import ConstantClassifier, KeptInFirstRowClassifier

H, W, E = 8, 8, 10
IMAGE = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
PAPER_LIKE_COUNTS = [80000, 9000, 5000, 3000, 1000, 800, 600, 400, 150, 50]


@pytest.fixture(scope="module")
def sampled() -> Certificate:
    model = KeptInFirstRowClassifier().eval()
    return certify(model, IMAGE, e=E, k=3, n=3000, alpha=0.01, seed=4, label=9, batch_size=512, checkpoint="sha256:ab")


def plain_json_types(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(key, str) and plain_json_types(v) for key, v in value.items())
    if isinstance(value, list):
        return all(plain_json_types(v) for v in value)
    return value is None or type(value) in (int, float, str, bool)


def test_certificate_survives_a_json_round_trip(sampled: Certificate) -> None:
    data = sampled.to_dict()
    assert plain_json_types(data)
    assert Certificate.from_dict(json.loads(json.dumps(data))) == sampled


def test_certify_is_sample_counts_then_certificate_from_counts(sampled: Certificate) -> None:
    counts = sample_counts(KeptInFirstRowClassifier().eval(), IMAGE, E, 3000, seed=4).counts
    assert sampled.counts == tuple(counts.tolist())
    recomputed = certificate_from_counts(counts, d=H * W, e=E, k=3, alpha=0.01, label=9)
    assert recomputed == dataclasses.replace(sampled, run=None)


def test_run_records_how_the_counts_were_made(sampled: Certificate) -> None:
    run = sampled.run
    assert run is not None
    assert (run.seed, run.batch_size, run.checkpoint, run.torch_version) == (4, 512, "sha256:ab", torch.__version__)
    assert run.device.startswith("cpu (") and run.seconds > 0 and run.samples_per_second > 0


def test_every_number_comes_from_the_math_functions() -> None:
    d, e, k, alpha = 1024, 50, 3, 0.001
    cert = certificate_from_counts(PAPER_LIKE_COUNTS, d=d, e=e, k=k, alpha=alpha, label=4)
    lower, upper = simuem_bounds(PAPER_LIKE_COUNTS, alpha)
    assert np.array_equal(cert.lower, lower) and np.array_equal(cert.upper, upper)
    lower_rounded, upper_rounded = rounded_bounds(lower, upper, d, e)
    assert np.array_equal(cert.lower_rounded, lower_rounded) and np.array_equal(cert.upper_rounded, upper_rounded)
    assert cert.top_k == (0, 1, 2) and [r.label for r in cert.radii] == [0, 1, 2, 4]
    for entry in cert.radii:
        assert entry.radius == certify_counts(PAPER_LIKE_COUNTS, entry.label, d, e, k, alpha)
        others = np.delete(upper, entry.label)
        assert entry.radius_limit == radius_limit(float(lower[entry.label]), others, d, e, k)
    assert cert.radius_of(0) == 15  # the worked example of certify_counts
    assert cert.levine_feizi_radius == levine_feizi_radius(PAPER_LIKE_COUNTS, 0, d, e, alpha)
    assert (cert.n, cert.label, cert.run) == (sum(PAPER_LIKE_COUNTS), 4, None)


def test_confidences_follow_the_statistical_rule() -> None:
    cert = certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=50, k=3, alpha=0.01)
    assert cert.confidence_fixed_label == pytest.approx(0.99)
    assert cert.confidence_selected_labels == pytest.approx(0.98)


def test_top_k_breaks_ties_by_the_smaller_label() -> None:
    assert top_k_labels([5, 9, 9, 1, 0], 3) == (1, 2, 0)


def test_true_label_inside_the_top_k_is_not_repeated_and_others_are_unknown() -> None:
    cert = certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=50, k=3, alpha=0.001, label=1)
    assert [r.label for r in cert.radii] == [0, 1, 2]
    with pytest.raises(KeyError, match="label 7"):
        cert.radius_of(7)


def test_constant_classifier_is_certified_for_its_label() -> None:
    cert = certify(ConstantClassifier(3).eval(), IMAGE, e=E, k=1, n=2000, alpha=0.001, seed=0, label=3)
    assert cert.counts == (0, 0, 0, 2000, 0, 0, 0, 0, 0, 0) and cert.top_k == (3,)
    assert cert.radius_of(3) == certify_counts(cert.counts, 3, H * W, E, 1, 0.001) >= 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, r"k must be an integer \[1, 9\]"),
        ({"k": 10}, r"k must be an integer \[1, 9\]"),
        ({"alpha": 0.0}, r"alpha must be a number in the open interval \(0, 1\)"),
        ({"alpha": 1.0}, r"alpha must be a number in the open interval \(0, 1\)"),
        ({"label": 10}, r"label must be an integer \[0, 9\]"),
        ({"label": -1}, r"label must be an integer \[0, 9\]"),
        ({"e": 65}, r"e must be an integer \[1, 64\]"),
        ({"n": 0}, r"n must be an integer >= 1"),
        ({"image": IMAGE * 2}, r"image values must lie in \[0, 1\]"),
    ],
)
def test_invalid_parameters_are_refused_before_sampling(changes: dict, message: str) -> None:
    calls: list[int] = []
    args = {"image": IMAGE, "e": E, "k": 3, "n": 100, "alpha": 0.01, "seed": 0, "label": 2, **changes}
    with pytest.raises(ValueError, match=message):
        certify(
            KeptInFirstRowClassifier().eval(), args.pop("image"), progress=lambda done, n: calls.append(done), **args
        )
    assert calls == []


def test_certificate_from_counts_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match=r"k must be an integer \[1, 9\]"):
        certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=50, k=10, alpha=0.01)
    with pytest.raises(ValueError, match="counts must"):
        certificate_from_counts([3, -1, 2], d=1024, e=50, k=1, alpha=0.01)
    with pytest.raises(ValueError, match=r"e must be an integer \[1, 1024\]"):
        certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=2000, k=1, alpha=0.01)


def test_anytime_certificates_use_anytime_bounds_and_say_so() -> None:
    fixed = certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=50, k=3, alpha=0.001, label=0)
    anytime = certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=50, k=3, alpha=0.001, label=0, bounds="anytime")
    assert (fixed.bounds, anytime.bounds) == ("simuem", "anytime")
    lower, upper = anytime_bounds(PAPER_LIKE_COUNTS, 0.001)
    assert anytime.lower == tuple(lower.tolist()) and anytime.upper == tuple(upper.tolist())
    assert anytime.radius_of(0) == certified_radius(float(lower[0]), np.delete(upper, 0), 1024, 50, 3)
    assert 0 < anytime.radius_of(0) <= fixed.radius_of(0)  # wider bounds, never a larger radius
    assert Certificate.from_dict(json.loads(json.dumps(anytime.to_dict()))) == anytime
    assert json.loads(json.dumps(anytime.to_dict()))["bounds"] == "anytime"
    old = fixed.to_dict()
    del old["bounds"]  # a certificate written before the field existed was a SimuEM one
    assert Certificate.from_dict(old) == fixed


def test_certify_takes_the_bounds_and_refuses_unknown_ones() -> None:
    model, args = KeptInFirstRowClassifier().eval(), {"e": E, "k": 3, "n": 500, "alpha": 0.01, "seed": 1, "label": 2}
    cert = certify(model, IMAGE, bounds="anytime", **args)
    counts = sample_counts(model, IMAGE, E, 500, seed=1).counts
    assert cert == dataclasses.replace(
        certificate_from_counts(counts, d=H * W, e=E, k=3, alpha=0.01, label=2, bounds="anytime"), run=cert.run)
    with pytest.raises(ValueError, match="bounds must be one of 'simuem', 'anytime', got 'cp'"):
        certify(model, IMAGE, bounds="cp", **args)
    with pytest.raises(ValueError, match="bounds must be one of"):
        certificate_from_counts(PAPER_LIKE_COUNTS, d=1024, e=50, k=1, alpha=0.01, bounds="Anytime")


def test_one_certify_call_checks_d_and_e_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs are checked where they enter: certify checks d and e, the sampling and the math below trust it
    (the smallest useful n, a cached public helper, is warmed first so that only the certify path counts)."""
    import sys

    from certcore.math.validation import check_d_e

    model, args = KeptInFirstRowClassifier().eval(), {"e": E, "k": 3, "n": 200, "alpha": 0.01, "seed": 0, "label": 2}
    certify(model, IMAGE, **args)
    calls: list[tuple] = []

    def counted(*a: object) -> tuple[int, int]:
        calls.append(a)
        return check_d_e(*a)

    patched = [module for name, module in sys.modules.items()
               if name.startswith("certcore.") and getattr(module, "check_d_e", None) is check_d_e]
    assert len(patched) >= 5  # validation, bounds, radius, sample_size, sampling, certificate, ...
    for module in patched:
        monkeypatch.setattr(module, "check_d_e", counted)
    certify(model, IMAGE, **args)
    assert calls == [(H * W, E)]
