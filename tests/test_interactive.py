"""Interactive certification: progress with clean interruption, re-certification of stored counts, cache keys,
and the stored default result."""

from __future__ import annotations

import doctest

import pytest
import torch

import certcore.views.interactive
from certcore.engine.certificate import certificate_from_counts
from certcore.views.default_result import DEFAULT_PATH, DefaultResult, load_default
from certcore.views.interactive import ProgressReporter, SampledCounts, counts_key, sample_image
from tests.tiny_models import KeptInFirstRowClassifier

IMAGE = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))


class Interrupted(BaseException):
    """Stands in for Streamlit's RerunException: raised by a UI call, not an Exception."""


def _sample(progress=None, n=1000, batch_size=100):
    return sample_image(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=n, seed=3, label=2, batch_size=batch_size,
                        device="cpu", checkpoint="sha", progress=progress)


def test_docstring_examples():
    result = doctest.testmod(certcore.views.interactive)
    assert result.attempted > 0 and result.failed == 0


def test_an_interrupted_progress_update_keeps_the_partial_counts():
    shown = []

    def show(fraction, text):
        if len(shown) == 3:
            raise Interrupted
        shown.append((fraction, text))

    reporter = ProgressReporter(show)
    partial = _sample(reporter)
    assert partial.partial and partial.samples == 400 and partial.n == 1000  # stopped within one batch
    assert shown[-1][0] == pytest.approx(0.3) and "300 / 1,000 samples" in shown[-1][1]
    with pytest.raises(Interrupted):
        reporter.resume_interruption()
    full = _sample()
    assert not full.partial and full.samples == 1000
    first = _sample(n=400)
    assert partial.counts == first.counts  # the partial run is a prefix of the seeded stream


def test_recertify_without_resampling_and_roundtrip():
    sampled = _sample()
    for k, alpha in [(1, 0.001), (3, 0.01)]:
        assert sampled.certificate(k, alpha) == certificate_from_counts(
            sampled.counts, d=64, e=10, k=k, alpha=alpha, label=2, run=sampled.run)
    assert SampledCounts.from_dict(sampled.to_dict()) == sampled


def test_counts_key_names_every_input():
    base = {"e": 10, "n": 1000, "seed": 3, "device": "cpu", "batch_size": 100}
    key = counts_key(IMAGE, "abc", **base)
    assert counts_key(IMAGE, "abc", **{**base, "batch_size": 7}) == key  # CPU counts do not depend on it
    assert counts_key(IMAGE, "abc", **{**base, "device": "cuda:0"}) != counts_key(
        IMAGE, "abc", **{**base, "device": "cuda:0", "batch_size": 7})
    others = [counts_key(IMAGE, "abd", **base), counts_key(IMAGE * 0.5, "abc", **base)]
    others += [counts_key(IMAGE, "abc", **{**base, name: 11}) for name in ("e", "n", "seed")]
    assert len({key, *others}) == 6


def test_the_stored_default_result_is_consistent():
    stored = load_default(DEFAULT_PATH)
    assert isinstance(stored, DefaultResult) and not stored.sampled.partial
    assert stored.sampled.samples == stored.sampled.n
    certificate = stored.sampled.certificate(stored.k, stored.alpha)
    assert stored.to_dict()["certificate"] == certificate.to_dict()
    assert certificate.label is not None and certificate.radius_of(certificate.label) >= -1
