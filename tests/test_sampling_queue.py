"""SamplingQueue: counts equal to sampling alone under concurrency, round-robin fairness, cancellation, status and
ETA, errors confined to their job, bad input. Tiny exact classifiers; order is made deterministic with one worker
and gates (events) inside the model, never with sleeps or timing."""

from __future__ import annotations

import doctest
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import certcore.engine.queue
from certcore.engine.queue import Job, SamplingQueue, fair_share_finish_times, shared_queue
from certcore.engine.sampling import SamplingCancelled, sample_counts
from tests.tiny_models import ConstantClassifier, KeptInFirstRowClassifier, PixelKeptClassifier

H, W, E = 8, 8, 10
IMAGE = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
WAIT = 60.0  # seconds before a gate that never opens fails the test (a safety net, not a timing assumption)


class Recorded(nn.Module):
    """Wraps a classifier: appends ``tag`` to ``calls`` on every batch; from batch ``hold_from`` on, sets
    ``holding`` and waits for ``gate`` first (the batches before it pass freely)."""

    def __init__(self, tag: str, calls: list[str], gate: threading.Event | None = None, hold_from: int = 0,
                 inner: nn.Module | None = None) -> None:
        super().__init__()
        self.tag, self.calls, self.gate, self.hold_from = tag, calls, gate, hold_from
        self.inner = inner if inner is not None else KeptInFirstRowClassifier()
        self.holding = threading.Event()
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.tag)
        self.batches += 1
        if self.gate is not None and self.batches > self.hold_from:
            self.holding.set()
            assert self.gate.wait(WAIT), "the test never opened the gate"
        return self.inner(x)


@pytest.fixture()
def make_queue() -> Iterator:
    queues: list[SamplingQueue] = []

    def make(workers: int = 1, **kwargs: int) -> SamplingQueue:
        queues.append(SamplingQueue(workers, **kwargs))
        return queues[-1]

    yield make
    for queue in queues:
        queue.close()


def submit(queue: SamplingQueue, model: nn.Module, n: int, seed: int, owner: str) -> Job:
    """Queue ``n`` samples of IMAGE for ``owner`` in batches of 100."""
    return queue.submit(model.eval(), IMAGE, e=E, n=n, seed=seed, batch_size=100, num_classes=10, owner=owner)


def row(n: int, seed: int) -> np.ndarray:
    """The counts ``KeptInFirstRowClassifier`` gets alone for ``n`` samples in batches of 100."""
    return solo(KeptInFirstRowClassifier().eval(), n, seed, 100)


def solo(model: nn.Module, n: int, seed: int, batch_size: int) -> np.ndarray:
    return sample_counts(model, IMAGE, E, n, seed=seed, batch_size=batch_size, num_classes=10, workers=1).counts


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_concurrent_jobs_get_the_counts_they_get_alone(make_queue, workers: int) -> None:
    queue = make_queue(workers)
    requests = [  # model, n, seed, batch size: different sizes, seeds, models, a last batch shorter than the others
        (KeptInFirstRowClassifier().eval(), 1003, 1, 64),
        (PixelKeptClassifier(2, 5).eval(), 500, 2, 100),
        (KeptInFirstRowClassifier().eval(), 2000, 3, 7),
        (ConstantClassifier(4).eval(), 300, 4, 128),
    ]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def visitor(i: int) -> None:
        model, n, seed, batch = requests[i]
        try:
            results[i] = queue.sample_counts(model, IMAGE, E, n, seed=seed, batch_size=batch, owner=f"v{i}").counts
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors, errors
    for i, (model, n, seed, batch) in enumerate(requests):
        assert np.array_equal(results[i], solo(model, n, seed, batch)), i


def test_batches_of_active_jobs_take_turns_one_each(make_queue) -> None:
    queue = make_queue(1)
    calls: list[str] = []
    gate = threading.Event()
    a = submit(queue, Recorded("A", calls, gate), 300, 0, "a")
    assert a.plan.model.holding.wait(WAIT)  # A's first batch is being classified
    jobs = [submit(queue, Recorded(tag, calls), 300, 0, tag.lower()) for tag in "BC"]
    gate.set()
    for job in (a, *jobs):
        job.result(WAIT)
    # A's second batch was next in the rotation when B and C joined it; from then on one batch per job per turn
    assert calls == ["A", "A", "B", "C", "A", "B", "C", "B", "C"]


def test_a_short_job_behind_a_long_one_finishes_long_before_it(make_queue) -> None:
    queue = make_queue(1)
    calls: list[str] = []
    gate = threading.Event()
    long = submit(queue, Recorded("long", calls, gate), 3000, 1, "first visitor")
    assert long.plan.model.holding.wait(WAIT)
    short = submit(queue, Recorded("short", calls), 200, 2, "second visitor")
    gate.set()
    assert np.array_equal(short.result(WAIT).counts, row(200, 2))
    assert np.array_equal(long.result(WAIT).counts, row(3000, 1))
    last_short = max(i for i, tag in enumerate(calls) if tag == "short")
    assert last_short == 4 and calls.count("long") == 30  # short's 2 batches were done after 3 of long's 30


def test_cancel_returns_the_counts_so_far_and_frees_the_place(make_queue) -> None:
    queue = make_queue(1, max_active=1)
    calls: list[str] = []
    gate = threading.Event()
    a = submit(queue, Recorded("A", calls, gate, hold_from=3), 1000, 5, "a")
    b = submit(queue, KeptInFirstRowClassifier(), 400, 6, "b")
    c = submit(queue, KeptInFirstRowClassifier(), 400, 7, "c")
    assert a.plan.model.holding.wait(WAIT)  # A's 4th batch is in the model, so its first 3 are counted
    assert (a.status().state, a.status().done) == ("running", 300)
    assert [(j.status().state, j.status().ahead) for j in (b, c)] == [("queued", 0), ("queued", 1)]

    b.cancel()  # a visitor who leaves while waiting
    assert c.status().ahead == 0
    with pytest.raises(SamplingCancelled, match="after 0 of 400") as cancelled_b:
        b.result(WAIT)
    assert cancelled_b.value.result.partial and cancelled_b.value.result.samples == 0

    a.cancel()  # Stop while running: C takes the freed place
    gate.set()
    with pytest.raises(SamplingCancelled, match="after 300 of 1000") as cancelled_a:
        a.result(WAIT)
    partial = cancelled_a.value.result
    assert partial.partial and partial.n == 1000 and partial.samples == 300 == a.status().done
    assert np.array_equal(partial.counts, row(300, 5))
    assert np.array_equal(c.result(WAIT).counts, row(400, 7))
    assert a.status().state == b.status().state == "cancelled" and c.status().state == "done"


def test_progress_is_called_in_the_callers_thread_and_false_cancels(make_queue) -> None:
    queue = make_queue(2)
    calls: list[tuple[int, int, int]] = []

    def progress(done: int, n: int) -> bool:
        calls.append((done, n, threading.get_ident()))
        return done < 300

    with pytest.raises(SamplingCancelled) as cancelled:
        queue.sample_counts(KeptInFirstRowClassifier().eval(), IMAGE, E, 5000, seed=3, batch_size=100,
                            owner="me", progress=progress)
    partial = cancelled.value.result
    assert 300 <= partial.samples < 5000 and partial.samples % 100 == 0
    assert np.array_equal(partial.counts, row(partial.samples, 3))
    done = [d for d, _, _ in calls]
    assert done == sorted(done) and {ident for _, _, ident in calls} == {threading.get_ident()}
    assert all(n == 5000 for _, n, _ in calls)

    finished: list[int] = []
    result = queue.sample_counts(KeptInFirstRowClassifier().eval(), IMAGE, E, 450, seed=3, batch_size=100,
                                 owner="me", progress=lambda d, n: finished.append(d) or d < n)
    assert result.samples == 450 and not result.partial  # False after the last batch changes nothing
    assert finished == sorted(finished) and finished[-1] == 450


def test_progress_with_counts_gets_the_counts_of_the_samples_done(make_queue) -> None:
    queue = make_queue(2)
    seen: list[tuple[int, np.ndarray]] = []
    job = queue.submit(KeptInFirstRowClassifier().eval(), IMAGE, e=E, n=1000, seed=5, batch_size=100, owner="me")
    result = job.result(WAIT, progress=lambda done, n, counts: seen.append((done, counts)), with_counts=True)
    assert seen[-1][0] == 1000 and np.array_equal(seen[-1][1], result.counts)  # always called with the last count
    for done, counts in seen:
        assert counts.sum() == done and np.array_equal(counts, row(done, 5) if done else np.zeros(10))


def test_status_and_eta_follow_the_fair_share(make_queue) -> None:
    queue = make_queue(1, max_active=1)
    gate = threading.Event()
    a = submit(queue, Recorded("A", [], gate, hold_from=3), 1000, 5, "a")
    b = submit(queue, KeptInFirstRowClassifier(), 500, 6, "b")
    assert a.plan.model.holding.wait(WAIT)
    sa, sb = a.status(), b.status()
    rate = sa.service_samples_per_second
    assert rate is not None and rate > 0 and sb.service_samples_per_second == rate
    assert (sa.state, sa.done, sa.n, sa.ahead, sa.active, sa.fraction) == ("running", 300, 1000, 0, 1, 0.3)
    assert (sb.state, sb.done, sb.n, sb.ahead, sb.active) == ("queued", 0, 500, 0, 1)
    assert sa.eta_seconds == pytest.approx(700 / rate)
    assert sb.eta_seconds == pytest.approx((700 + 500) / rate)  # B starts when A is done
    gate.set()
    b.result(WAIT)
    assert a.status().state == "done" and a.status().eta_seconds == 0.0 and b.status().done == 500


def test_result_gives_up_after_its_timeout_and_the_job_goes_on(make_queue) -> None:
    queue = make_queue(1)
    gate = threading.Event()
    job = submit(queue, Recorded("A", [], gate), 300, 4, "a")
    assert job.plan.model.holding.wait(WAIT)
    with pytest.raises(TimeoutError, match=r"not finished after 0 s \(0 of 300 samples\)"):
        job.result(timeout=0)
    assert job.status().state == "running"
    gate.set()
    assert np.array_equal(job.result(WAIT).counts, row(300, 4))

def test_fair_share_finish_times() -> None:
    assert fair_share_finish_times([100, 300], [200], 100.0, max_active=8) == [3.0, 6.0, 5.0]
    assert fair_share_finish_times([100, 300], [200], 100.0, max_active=2) == [2.0, 6.0, 6.0]
    assert fair_share_finish_times([], [100, 100], 50.0, max_active=1) == [2.0, 4.0]
    with pytest.raises(ValueError, match="rate must be positive"):
        fair_share_finish_times([1], [], 0.0)


def test_one_owner_runs_one_job_at_a_time(make_queue) -> None:
    queue = make_queue(1)
    gate = threading.Event()
    first = submit(queue, Recorded("1", [], gate), 200, 0, "same")
    second = submit(queue, KeptInFirstRowClassifier(), 200, 0, "same")
    other = submit(queue, KeptInFirstRowClassifier(), 200, 0, "other")
    assert first.plan.model.holding.wait(WAIT)
    assert [j.status().state for j in (first, second, other)] == ["running", "queued", "running"]
    gate.set()
    assert second.result(WAIT).samples == 200 and first.status().state == "done"


class FailsOnBatch(nn.Module):
    """Raises RuntimeError on its ``bad``-th batch (1-based)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.batches = bad, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        if self.batches == self.bad:
            raise RuntimeError("simulated failure in the model")
        return KeptInFirstRowClassifier()(x)


def test_an_error_reaches_its_job_only_and_the_queue_goes_on(make_queue) -> None:
    queue = make_queue(2)
    bad = submit(queue, FailsOnBatch(2), 1000, 0, "bad")
    good = submit(queue, KeptInFirstRowClassifier(), 1000, 1, "good")
    with pytest.raises(RuntimeError, match="simulated failure"):
        bad.result(WAIT)
    assert bad.status().state == "failed"
    assert np.array_equal(good.result(WAIT).counts, row(1000, 1))
    wrong = queue.submit(nn.Sequential(nn.Flatten(), nn.Linear(6 * H * W, 10)).eval(), IMAGE, e=E, n=10, seed=0,
                         num_classes=5, owner="wrong")
    with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes=5\)"):
        wrong.result(WAIT)
    later = submit(queue, KeptInFirstRowClassifier(), 250, 2, "later")
    assert np.array_equal(later.result(WAIT).counts, row(250, 2))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"e": 0}, r"e must be an integer \[1, 64\]"),
        ({"n": 0}, r"n must be an integer >= 1"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
        ({"seed": -1}, r"seed must be an integer \[0, "),
        ({"image": IMAGE + 1.0}, r"image values must lie in \[0, 1\]"),
        ({"num_classes": 1}, r"num_classes must be an integer >= 2"),
        ({"owner": ""}, r"owner must be a non-empty string"),
        ({"owner": None}, r"owner must be a non-empty string"),
    ],
)
def test_bad_requests_are_refused_by_submit_naming_the_parameter(make_queue, changes: dict, message: str) -> None:
    queue = make_queue(1)
    args = {"image": IMAGE, "e": E, "n": 10, "seed": 0, "owner": "me", **changes}
    with pytest.raises(ValueError, match=message):
        queue.submit(KeptInFirstRowClassifier().eval(), args.pop("image"), **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers": 0}, r"workers must be an integer >= 1"), ({"threads": 0}, r"threads must be an integer >= 1"),
     ({"max_active": 0}, r"max_active must be an integer >= 1")],
)
def test_bad_queue_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingQueue(**kwargs)


def test_close_cancels_what_is_left_stops_the_workers_and_refuses_new_jobs() -> None:
    queue = SamplingQueue(1)
    gate = threading.Event()
    running = submit(queue, Recorded("r", [], gate), 500, 0, "r")
    assert running.plan.model.holding.wait(WAIT)
    cancelled: list[SamplingCancelled] = []

    def open_gate_once_cancelled() -> None:  # the batch in flight ends while close() waits for the worker
        with pytest.raises(SamplingCancelled) as raised:
            running.result(WAIT)
        cancelled.append(raised.value)
        gate.set()

    opener = threading.Thread(target=open_gate_once_cancelled)
    opener.start()
    queue.close()
    opener.join(WAIT)
    assert cancelled and cancelled[0].result.samples == 0
    assert not any(thread.is_alive() for thread in queue._threads)
    with pytest.raises(RuntimeError, match="closed"):
        queue.submit(KeptInFirstRowClassifier().eval(), IMAGE, e=E, n=10, seed=0, owner="late")


def test_the_shared_queue_is_one_per_process() -> None:
    assert shared_queue() is shared_queue()


class RecordsThreads(KeptInFirstRowClassifier):
    """Records ``torch.get_num_threads()`` as seen by the thread that classifies each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        return super().forward(x)


def test_workers_run_the_torch_threads_the_queue_is_given(make_queue) -> None:
    before = torch.get_num_threads()
    model = RecordsThreads().eval()
    try:
        assert submit(make_queue(2, threads=before + 1), model, 400, 0, "me").result(WAIT).samples == 400
    finally:
        torch.set_num_threads(before)  # the workers' setting is also torch's process-wide default
    assert model.seen == {before + 1}  # not torch's setting before


def test_docstring_examples() -> None:
    result = doctest.testmod(certcore.engine.queue)
    assert result.attempted > 0 and result.failed == 0
