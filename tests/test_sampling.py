"""sample_counts: counts, seeding, progress and cancellation, OOM fallback, validation; tiny exact classifiers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from torch import nn

from certcore.engine.certificate import certify
from certcore.engine.sampling import (
    CPU_BATCH_SIZE,
    CUDA_BATCH_SIZE,
    SamplingCancelled,
    default_batch_size,
    default_workers,
    num_classes_of,
    sample_counts,
)
from tests.tiny_models import (
    ConstantClassifier,
    KeptInFirstRowClassifier,
    OutOfMemoryAbove,
    PixelKeptClassifier,
)

H, W, E = 8, 8, 10
IMAGE = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))


def row_model() -> nn.Module:
    return KeptInFirstRowClassifier().eval()


def test_counts_are_int64_per_class_and_sum_to_n() -> None:
    result = sample_counts(row_model(), IMAGE, E, 1003, seed=0, batch_size=100)
    assert result.counts.dtype == np.int64 and result.counts.shape == (10,)
    assert result.counts.sum() == result.samples == result.n == 1003
    assert result.batch_size == 100 and not result.partial
    assert result.device.startswith("cpu (") and result.seconds > 0 and result.samples_per_second > 0


def test_constant_classifier_gets_every_vote() -> None:
    result = sample_counts(ConstantClassifier(3).eval(), IMAGE, E, 700, seed=1, batch_size=256)
    assert result.counts.tolist() == [0, 0, 0, 700, 0, 0, 0, 0, 0, 0]


def test_same_seed_same_counts_other_seed_other_counts() -> None:
    first = sample_counts(row_model(), IMAGE, E, 2000, seed=5, batch_size=300)
    again = sample_counts(row_model(), IMAGE, E, 2000, seed=5, batch_size=300)
    other = sample_counts(row_model(), IMAGE, E, 2000, seed=6, batch_size=300)
    assert np.array_equal(first.counts, again.counts)
    assert not np.array_equal(first.counts, other.counts)


def test_default_batch_size_is_small_on_cpu_and_large_on_cuda() -> None:
    result = sample_counts(row_model(), IMAGE, E, 250, seed=7)
    assert result.batch_size == CPU_BATCH_SIZE == default_batch_size("cpu") < default_batch_size("cuda:0")
    assert default_batch_size(torch.device("cuda", 1)) == CUDA_BATCH_SIZE


def test_counts_do_not_depend_on_batch_size_on_cpu() -> None:
    small = sample_counts(row_model(), IMAGE, E, 2000, seed=7, batch_size=7)
    large = sample_counts(row_model(), IMAGE, E, 2000, seed=7, batch_size=2000)
    assert np.array_equal(small.counts, large.counts)


@pytest.mark.parametrize(("height", "width", "e", "pixel"), [(8, 8, 10, (2, 5)), (32, 32, 50, (31, 0))])
def test_a_pixel_is_kept_in_a_fraction_e_over_d_of_the_samples(
    height: int, width: int, e: int, pixel: tuple[int, int]
) -> None:
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))
    n = 10_000
    result = sample_counts(PixelKeptClassifier(*pixel).eval(), image, e, n, seed=11, batch_size=2000)
    kept = int(result.counts[1])
    assert kept + int(result.counts[0]) == n
    assert binomtest(kept, n, e / (height * width)).pvalue > 0.001


@pytest.mark.parametrize("workers", [2, 3])
def test_counts_do_not_depend_on_the_number_of_workers(workers: int) -> None:
    one = sample_counts(row_model(), IMAGE, E, 2003, seed=8, batch_size=64, workers=1)
    many = sample_counts(row_model(), IMAGE, E, 2003, seed=8, batch_size=64, workers=workers)
    assert np.array_equal(one.counts, many.counts) and many.samples == 2003
    via_certify = certify(row_model(), IMAGE, e=E, k=1, n=2003, alpha=0.001, seed=8, batch_size=64, workers=workers)
    assert list(via_certify.counts) == one.counts.tolist()


class MeetsAnotherBatch(nn.Module):
    """Classifies only once ``parties`` forward passes are running at the same time (a barrier): a sampler that
    ran batches one after another would break the barrier after ``timeout`` seconds."""

    def __init__(self, parties: int, timeout: float = 20.0) -> None:
        super().__init__()
        self.inner = KeptInFirstRowClassifier()
        self.barrier = threading.Barrier(parties, timeout=timeout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.barrier.wait()
        return self.inner(x)


def test_workers_classify_batches_at_the_same_time_on_the_cpu() -> None:
    model = MeetsAnotherBatch(2).eval()
    result = sample_counts(model, IMAGE, E, 400, seed=9, batch_size=100, num_classes=10, workers=2)
    assert np.array_equal(result.counts, sample_counts(row_model(), IMAGE, E, 400, seed=9, workers=1).counts)


def test_default_workers_is_two_on_a_multithreaded_cpu_and_one_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert default_workers("cpu") == 2 and default_workers("cuda:0") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_workers("cpu") == 1


def test_an_error_in_a_worker_reaches_the_caller() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6 * H * W, 10)).eval()
    with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes=5\)"):
        sample_counts(model, IMAGE, E, 1000, seed=0, batch_size=100, num_classes=5, workers=2)


def test_progress_reports_every_batch_up_to_n() -> None:
    calls: list[tuple[int, int]] = []
    sample_counts(row_model(), IMAGE, E, 1050, seed=0, batch_size=200, progress=lambda done, n: calls.append((done, n)))
    assert calls == [(200, 1050), (400, 1050), (600, 1050), (800, 1050), (1000, 1050), (1050, 1050)]


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_returning_false_cancels_with_the_partial_counts(workers: int) -> None:
    with pytest.raises(SamplingCancelled, match="after 300 of 1000") as cancelled:
        sample_counts(
            row_model(), IMAGE, E, 1000, seed=2, batch_size=100, progress=lambda done, n: done < 300, workers=workers
        )
    partial = cancelled.value.result
    assert partial.partial and partial.n == 1000 and partial.samples == 300
    assert np.array_equal(partial.counts, sample_counts(row_model(), IMAGE, E, 300, seed=2).counts)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_with_counts_sees_the_running_counts_and_changes_nothing(workers: int) -> None:
    seen: list[tuple[int, np.ndarray]] = []

    def watch(done: int, n: int, counts: np.ndarray) -> None:
        seen.append((done, counts))

    result = sample_counts(row_model(), IMAGE, E, 1050, seed=8, batch_size=200, progress=watch, with_counts=True,
                           workers=workers)
    assert [done for done, _ in seen] == [200, 400, 600, 800, 1000, 1050]
    assert all(counts.sum() == done and counts.dtype == np.int64 for done, counts in seen)  # copies, not a view
    for (_, counts), (_, later) in zip(seen, seen[1:], strict=False):
        assert (later >= counts).all() and later.sum() > counts.sum()
    assert np.array_equal(seen[-1][1], result.counts)
    assert np.array_equal(result.counts, sample_counts(row_model(), IMAGE, E, 1050, seed=8).counts)
    for done, counts in seen[:3]:  # each running count is the count of the seeded stream's first ``done`` samples
        assert np.array_equal(counts, sample_counts(row_model(), IMAGE, E, done, seed=8).counts)


def test_progress_returning_false_after_the_last_batch_returns_the_full_result() -> None:
    result = sample_counts(row_model(), IMAGE, E, 400, seed=2, batch_size=100, progress=lambda done, n: done < n)
    assert result.samples == 400 and not result.partial


# Out-of-memory halving belongs to the one-batch-at-a-time path a GPU takes (workers=1); simulated here on the CPU.
def test_out_of_memory_halves_the_batch_and_loses_no_sample() -> None:
    model = OutOfMemoryAbove(KeptInFirstRowClassifier(), limit=64).eval()
    result = sample_counts(model, IMAGE, E, 1000, seed=3, batch_size=256, num_classes=10, workers=1)
    assert result.batch_size == 64
    assert np.array_equal(result.counts, sample_counts(row_model(), IMAGE, E, 1000, seed=3).counts)


def test_out_of_memory_at_batch_size_one_is_raised() -> None:
    model = OutOfMemoryAbove(KeptInFirstRowClassifier(), limit=0).eval()
    with pytest.raises(torch.OutOfMemoryError):
        sample_counts(model, IMAGE, E, 10, seed=3, batch_size=4, num_classes=10, workers=1)


def test_number_of_classes_is_read_from_the_model() -> None:
    assert num_classes_of(ConstantClassifier(0, num_classes=7).eval(), IMAGE) == 7
    assert sample_counts(ConstantClassifier(0, num_classes=7).eval(), IMAGE, E, 10, seed=0).counts.shape == (7,)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"e": 0}, r"e must be an integer \[1, 64\]"),
        ({"e": 65}, r"e must be an integer \[1, 64\]"),
        ({"n": 0}, r"n must be an integer >= 1"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
        ({"seed": -1}, r"seed must be an integer \[0, "),
        ({"image": torch.rand(H, W)}, r"image must have shape \(C, H, W\)"),
        ({"image": torch.ones(3, H, W, dtype=torch.uint8)}, r"image must be a floating-point tensor"),
        ({"image": IMAGE + 1.0}, r"image values must lie in \[0, 1\]"),
        ({"image": torch.full((3, H, W), float("nan"))}, r"image values must lie in \[0, 1\]"),
        ({"image": IMAGE.numpy()}, r"image must be a torch.Tensor"),
        ({"num_classes": 5}, r"logits of shape \(batch, num_classes=5\)"),
        ({"num_classes": 1}, r"num_classes must be an integer >= 2"),
        ({"device": "meta"}, r"device is meta but the model lives on cpu"),
        ({"workers": 0}, r"workers must be an integer >= 1"),
    ],
)
def test_invalid_parameters_are_refused_with_their_name_and_range(changes: dict, message: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6 * H * W, 10)).eval()
    args = {"image": IMAGE, "e": E, "n": 10, "seed": 0, **changes}
    with pytest.raises(ValueError, match=message):
        sample_counts(model, args.pop("image"), args.pop("e"), args.pop("n"), **args)


def test_a_model_in_training_mode_is_refused_before_it_runs() -> None:
    model = nn.Sequential(nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * H * W, 10)).train()
    for call in (lambda: sample_counts(model, IMAGE, E, 10, seed=0), lambda: num_classes_of(model, IMAGE)):
        with pytest.raises(ValueError, match="eval mode"):
            call()
    assert int(model[0].num_batches_tracked) == 0  # BatchNorm never ran, so its statistics are untouched
