"""Interactive certification: progress with clean interruption, re-certification of stored counts, cache keys,
and the stored default result."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import certcore.views.interactive
from certcore.engine.certificate import certificate_from_counts
from certcore.engine.queue import JobStatus, SamplingQueue
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


def test_counts_key_tells_the_bounds_apart():
    base = {"e": 10, "n": 1000, "seed": 3, "device": "cpu", "batch_size": 100}
    assert counts_key(IMAGE, "abc", **base) == counts_key(IMAGE, "abc", **base, bounds="simuem")
    assert counts_key(IMAGE, "abc", **base, bounds="anytime") != counts_key(IMAGE, "abc", **base)


class FakeClock:
    """Stands in for ``time.perf_counter``: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _live_run(interval, live, n=1000, *, batch_seconds=0.1, draw_seconds=0.0):
    """A run with a live reporter on a fake clock: a batch takes ``batch_seconds``, a live draw ``draw_seconds``."""
    clock = FakeClock()

    def show(fraction, text):
        clock.now += batch_seconds

    def timed_live(counts):
        clock.now += draw_seconds
        return live(counts)

    real = certcore.views.interactive.time.perf_counter
    certcore.views.interactive.time.perf_counter = clock
    try:
        reporter = ProgressReporter(show, live=timed_live, interval=interval)
        return reporter, sample_image(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=n, seed=3, label=2,
                                      batch_size=100, device="cpu", checkpoint="sha", progress=reporter,
                                      bounds="anytime")
    finally:
        certcore.views.interactive.time.perf_counter = real


def test_live_counts_are_throttled_and_always_include_the_first_and_last_batch():
    drawn = []
    _, sampled = _live_run(0.35, lambda counts: drawn.append(int(counts.sum())))
    assert drawn == [100, 500, 900, 1000]  # at 0.1 s, then 0.35 s or more apart, and the last batch
    assert not sampled.partial and sampled.bounds == "anytime"
    every = []
    _live_run(0.0, lambda counts: every.append(int(counts.sum())))
    assert every == list(range(100, 1001, 100))
    slow = []  # a draw of 0.1 s waits 0.3 s before the next one: drawing takes at most a quarter of the time
    _live_run(0.0, lambda counts: slow.append(int(counts.sum())), draw_seconds=0.1)
    assert slow == [100, 400, 700, 1000]


def test_live_asking_to_stop_ends_sampling_with_an_anytime_certificate():
    reporter, sampled = _live_run(0.0, lambda counts: counts.sum() >= 300)
    assert reporter.reached and reporter.interruption is None
    assert sampled.partial and sampled.samples == 300 and sampled.bounds == "anytime"
    cert = sampled.certificate(3, 0.01)
    assert cert.bounds == "anytime" and cert == certificate_from_counts(
        sampled.counts, d=64, e=10, k=3, alpha=0.01, label=2, run=sampled.run, bounds="anytime")
    assert SampledCounts.from_dict(sampled.to_dict()) == sampled


def test_an_interrupted_live_draw_keeps_the_counts_drawn():
    def live(counts):
        if counts.sum() >= 500:
            raise Interrupted

    reporter, sampled = _live_run(0.0, live)
    assert sampled.partial and sampled.samples == 500 and sampled.bounds == "anytime"
    with pytest.raises(Interrupted):
        reporter.resume_interruption()


def test_watching_the_counts_needs_anytime_bounds():
    reporter = ProgressReporter(lambda fraction, text: None, live=lambda counts: None)
    with pytest.raises(ValueError, match="bounds must be 'anytime' when the counts are shown while sampling"):
        _sample(reporter)
    with pytest.raises(ValueError, match="bounds must be one of"):
        sample_image(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=10, seed=3, label=2, batch_size=100,
                     device="cpu", checkpoint="sha", bounds="fixed")


def test_through_a_queue_the_counts_are_the_same_and_a_stop_while_waiting_frees_the_place():
    queue = SamplingQueue(1, max_active=1)
    try:
        alone = _sample(n=600)
        shown = []
        reporter = ProgressReporter(lambda fraction, text: shown.append(text), live=lambda counts: None)
        through = sample_image(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=600, seed=3, label=2, batch_size=100,
                               device="cpu", checkpoint="sha", progress=reporter, bounds="anytime", queue=queue,
                               owner="a")
        assert through.counts == alone.counts and not through.partial and through.bounds == "anytime"
        assert "600 / 600 samples" in shown[-1]

        ahead = queue.submit(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=10**9, seed=1, owner="other")

        def show(fraction, text):
            shown.append(text)
            if text.startswith("In the queue"):
                raise Interrupted  # the visitor clicks Stop (or leaves) while waiting

        waiting = ProgressReporter(show)
        stopped = sample_image(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=600, seed=3, label=2,
                               batch_size=100, device="cpu", checkpoint="sha", progress=waiting, queue=queue,
                               owner="b")
        assert stopped.samples == 0 and stopped.partial
        assert shown[-1].startswith("In the queue: next in line, 1 sampling now")
        with pytest.raises(Interrupted):
            waiting.resume_interruption()
        later = queue.submit(KeptInFirstRowClassifier().eval(), IMAGE, e=10, n=100, seed=1, owner="c")
        assert later.status().ahead == 0  # b's place was freed: c is next in line
        ahead.cancel()
        assert later.result(60).samples == 100
    finally:
        queue.close()


def test_live_redraws_slow_down_with_the_requests_sharing_the_sampler(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(certcore.views.interactive.time, "perf_counter", clock)
    drawn = []
    reporter = ProgressReporter(lambda fraction, text: None, live=lambda counts: drawn.append(int(counts.sum())),
                                interval=0.25)
    reporter.on_status(JobStatus("running", 0, 10_000, 0, 4, 800.0, 10.0))  # 3 others: every 1 s at most
    for done in range(100, 2001, 100):
        clock.now += 0.125  # a batch every 1/8 s (exact in binary)
        assert reporter(done, 10_000, np.array([done, 0]))
    assert drawn == [100, 900, 1700]
