"""One fair queue for all sampling of a process: many callers (app sessions) share one small pool of workers.

Without it, every app session runs ``sample_counts`` with its own worker threads, each running torch's own
intra-op threads: six sessions on a 2-core CPU drew 830 samples/s together against 1,180 for one alone (issue 17),
and no visitor could see why it was slow. Here one ``SamplingQueue`` owns ``workers`` threads (the only place that
decides how many batches run at once and, with ``threads``, how many torch threads each uses); a caller
``submit``s a request and gets a ``Job``: ``result()`` blocks until the counts are ready, ``status()`` says where
the job stands (its place in the queue, the service's samples/s and a fair-share ETA), ``cancel()`` frees its place.

Fairness: up to ``max_active`` jobs, at most one per ``owner``, share the workers; each worker takes the next
batch from the next active job in turn (round-robin, one batch per job per turn), so nobody starves and a small
job behind a big one finishes after about (its batches x active jobs) batches. The others wait in FIFO order.

Exactness: each job draws its keep masks from its own generator, seeded like ``sample_counts``, batch after batch
in order (drawn while the queue's lock is held, so two workers never draw for one job at once), and adds the
label counts of its batches in that order, so its counts equal ``sample_counts`` with the same arguments (on the
CPU for every batch size; on CUDA for the same batch size, see ``certcore.engine.sampling``), and the partial counts of
a cancelled job are those of ``sample_counts`` with n = the samples it reports. On CUDA a job has one batch in
flight at a time, drawn and classified under ``device_lock`` as in ``sample_counts``.

Threads: by default 2 workers (``default_workers``) with torch's thread setting untouched, the per-batch setting
of one ``sample_counts`` call, so the process runs at most 4 torch threads however many visitors sample.
bench/bench_queue.py measured the same samples per CPU-second (0.93-1.02 of one session alone) with 1, 6 and 8
sessions, and for every workers x threads variant tried; on a machine loaded by other processes, fewer threads
win less of the CPU, so one worker or single-threaded workers had lower wall-clock rates (bench/RESULTS.md).

Errors: an exception while classifying a job's batch fails that job only (``result()`` raises it in the
caller's thread); the workers and the other jobs go on. Bad requests are refused by ``submit`` itself
(``plan_sampling``'s checks, ValueError naming the parameter).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from certcore.engine.sampling import (
    CountsProgress,
    Progress,
    SamplingCancelled,
    SamplingPlan,
    SamplingResult,
    count_labels,
    default_workers,
    device_lock,
    plan_sampling,
)
from certcore.math.validation import check_int

JobState = Literal["queued", "running", "done", "cancelled", "failed"]
FINAL_STATES = ("done", "cancelled", "failed")
MAX_ACTIVE = 8
RATE_WINDOW_SECONDS = 10.0


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands.

    ``ahead``: jobs waiting in front of it (0 once it runs); ``active``: jobs sharing the workers now (itself
    included once it runs); ``service_samples_per_second``: the queue's recent rate over all jobs (None until a
    batch has been counted); ``eta_seconds``: time left to finish if every active job gets an equal share of that
    rate (``fair_share_finish_times``), None while the rate is unknown, 0 once finished.
    """

    state: JobState
    done: int
    n: int
    ahead: int
    active: int
    service_samples_per_second: float | None
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        """Samples counted as a fraction of n."""
        return self.done / self.n


def fair_share_finish_times(
    active: Sequence[int], waiting: Sequence[int], rate: float, max_active: int = MAX_ACTIVE
) -> list[float]:
    """Seconds until each job finishes when ``rate`` samples/s are shared equally by the active jobs
    (processor sharing, the limit of round-robin over batches) and waiting jobs are admitted in order as active
    ones finish, at most ``max_active`` at once. ``active`` and ``waiting`` are samples left per job; returns
    the active jobs' times, then the waiting jobs'.

    >>> fair_share_finish_times([100, 300], [200], rate=100.0, max_active=2)
    [2.0, 6.0, 6.0]
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    sizes = [*active, *waiting]
    running = {j: sizes[j] for j in range(len(active))}
    queued = deque(range(len(active), len(sizes)))
    finish, now = [0.0] * len(sizes), 0.0
    while running or queued:
        while queued and len(running) < max_active:
            j = queued.popleft()
            running[j] = sizes[j]
        step = min(running.values())
        now += step * len(running) / rate
        for j in list(running):
            running[j] -= step
            if running[j] == 0:
                finish[j] = now
                del running[j]
    return finish


class Job:
    """One sampling request in a ``SamplingQueue``; made by ``SamplingQueue.submit``."""

    def __init__(self, queue: SamplingQueue, plan: SamplingPlan, owner: str) -> None:
        self._queue = queue
        self.plan = plan
        self.owner = owner
        self._generator = plan.generator()
        self._batch_size = plan.batch_size
        self._counts = torch.zeros(plan.num_classes, dtype=torch.int64, device=plan.device)
        self._state: JobState = "queued"
        self._submitted = time.perf_counter()
        self._issued = 0  # samples handed to workers (drawn, on the CPU)
        self._in_flight = 0  # batches handed out and not yet back
        self._next_batch = 0  # index of the next batch to hand out
        self._finished: dict[int, tuple[int, torch.Tensor]] = {}  # batches back early, by index
        self._next_commit = 0  # index of the next batch to add to the counts
        self._done = 0  # samples counted, in batch order
        self._error: BaseException | None = None
        self._result: SamplingResult | None = None

    @property
    def n(self) -> int:
        """Samples requested."""
        return self.plan.n

    def status(self) -> JobStatus:
        """Where the job stands now (see ``JobStatus``)."""
        return self._queue._status(self)

    def cancel(self) -> None:
        """Stop the job and free its place (no-op once it has ended); ``result()`` then raises
        ``SamplingCancelled`` carrying the counts of the batches counted so far."""
        self._queue._cancel(self)

    def result(
        self,
        timeout: float | None = None,
        *,
        progress: Progress | CountsProgress | None = None,
        on_status: Callable[[JobStatus], bool | None] | None = None,
        interval: float = 0.5,
        with_counts: bool = False,
    ) -> SamplingResult:
        """Wait for the counts; raises ``SamplingCancelled`` (partial counts) if the job was cancelled, the job's
        own exception if classifying failed, TimeoutError after ``timeout`` seconds (the job goes on).

        The callbacks run in the calling thread (so they may update a UI): ``progress(done, n)`` like
        ``sample_counts``'s, ``on_status(status)`` with a ``JobStatus``; each is called whenever more samples
        are counted and at least every ``interval`` seconds while waiting (a heartbeat with the same ``done``,
        so that a job still waiting in the queue can be cancelled too). Either returning False cancels the job
        unless it has already finished. With ``with_counts``, ``progress(done, n, counts)`` also gets a copy of the
        counts of those ``done`` samples (as ``sample_counts(..., with_counts=True)``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = -1
        while True:
            with self._queue._changed:
                wait = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
                self._queue._changed.wait_for(lambda last=seen: self._state in FINAL_STATES or self._done != last, wait)
                seen, final = self._done, self._state in FINAL_STATES
                counts = self._counts.cpu().numpy().copy() if with_counts else None
            stop = progress is not None and (progress(seen, self.n, counts) if with_counts
                                             else progress(seen, self.n)) is False
            stop = (on_status is not None and on_status(self.status()) is False) or stop
            if stop:
                self.cancel()
            with self._queue._changed:  # ends only after the callbacks saw the final count (n when done)
                if final or (stop and self._state in FINAL_STATES):
                    return self._outcome()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job of {self.owner!r} not finished after {timeout} s ({seen} of {self.n} samples)")

    def _outcome(self) -> SamplingResult:
        if self._state == "failed":
            assert self._error is not None
            raise self._error
        assert self._result is not None
        if self._state == "cancelled":
            raise SamplingCancelled(self._result)
        return self._result


class SamplingQueue:
    """A pool of ``workers`` threads that classify the batches of all submitted jobs, round-robin (module
    docstring).

    ``workers`` defaults to ``certcore.engine.sampling.default_workers("cpu")``; ``threads``, if given, is the number of
    torch intra-op threads each worker sets for itself (``torch.set_num_threads``, which also becomes torch's
    process-wide default); None leaves torch's setting as it is. ``max_active`` jobs share the workers at once.
    """

    def __init__(self, workers: int | None = None, *, threads: int | None = None, max_active: int = MAX_ACTIVE):
        self.workers = default_workers("cpu") if workers is None else check_int(workers, "workers", 1)
        self.threads = None if threads is None else check_int(threads, "threads", 1)
        self.max_active = check_int(max_active, "max_active", 1)
        self._changed = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._rotation: deque[Job] = deque()  # active jobs; the next batch comes from the first that has one
        self._commits: deque[tuple[float, int]] = deque()  # (time, samples) of recent batches, all jobs
        self._busy_since: float | None = None
        self._rate: float | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"certcore-queue-{i}", daemon=True) for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        model: nn.Module,
        image: torch.Tensor,
        *,
        e: int,
        n: int,
        seed: int,
        owner: str,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        num_classes: int | None = None,
    ) -> Job:
        """Queue the request ``sample_counts(model, image, e, n, seed=..., batch_size=..., device=...,
        num_classes=...)`` for ``owner`` (e.g. an app session's id: one job per owner runs at a time); bad
        arguments raise ValueError here, naming the parameter."""
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"owner must be a non-empty string naming who submits the job, got {owner!r}")
        plan = plan_sampling(model, image, e, n, seed=seed, batch_size=batch_size, device=device,
                             num_classes=num_classes)
        job = Job(self, plan, owner)
        with self._changed:
            if self._closed:
                raise RuntimeError("the sampling queue is closed")
            self._waiting.append(job)
            self._admit()
            self._changed.notify_all()
        return job

    def sample_counts(
        self,
        model: nn.Module,
        image: torch.Tensor,
        e: int,
        n: int,
        *,
        seed: int,
        owner: str,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        num_classes: int | None = None,
        progress: Progress | None = None,
    ) -> SamplingResult:
        """``certcore.engine.sampling.sample_counts`` through the queue: same arguments (but ``owner`` instead of
        ``workers``), same counts, same ``SamplingCancelled`` when ``progress`` returns False."""
        job = self.submit(model, image, e=e, n=n, seed=seed, owner=owner, batch_size=batch_size, device=device,
                          num_classes=num_classes)
        try:
            return job.result(progress=progress)
        except BaseException:
            job.cancel()  # e.g. KeyboardInterrupt in the caller: free the place (no-op if the job has ended)
            raise

    @property
    def samples_per_second(self) -> float | None:
        """The service's rate over the last ``RATE_WINDOW_SECONDS`` of work (None before the first batch)."""
        with self._changed:
            return self._rate

    def close(self) -> None:
        """Cancel every job that has not ended, stop the workers and wait for them (after their current batch)."""
        with self._changed:
            self._closed = True
            for job in [*self._rotation, *self._waiting]:
                self._end(job, "cancelled")
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    # Everything below runs with self._changed held, except _work's classification.

    def _admit(self) -> None:
        """Move waiting jobs to the rotation, in order, while there is room; skip owners with an active job."""
        owners = {job.owner for job in self._rotation}
        for job in list(self._waiting):
            if len(self._rotation) >= self.max_active:
                break
            if job.owner not in owners:
                self._waiting.remove(job)
                self._rotation.append(job)
                owners.add(job.owner)
                job._state = "running"
                if self._busy_since is None:
                    self._busy_since = time.perf_counter()

    def _end(self, job: Job, state: JobState, error: BaseException | None = None) -> None:
        job._state, job._error = state, error
        job._result = job.plan.result(job._counts, job._batch_size, job._submitted, partial=state != "done")
        for line in (self._rotation, self._waiting):
            if job in line:
                line.remove(job)
        if not self._rotation:
            self._busy_since = None
        self._admit()
        self._changed.notify_all()

    def _cancel(self, job: Job) -> None:
        with self._changed:
            if job._state not in FINAL_STATES:
                self._end(job, "cancelled")

    def _next_batch(self) -> tuple[Job, int, int, torch.Tensor | None] | None:
        """The next batch in round-robin order: (job, index, samples, keep masks, or None where they are drawn
        later under the device lock), or None when no active job has a batch to hand out."""
        for _ in range(len(self._rotation)):
            job = self._rotation[0]
            self._rotation.rotate(-1)
            on_cpu = job.plan.device.type == "cpu"
            if job._issued < job.n and (on_cpu or job._in_flight == 0):
                size = min(job._batch_size, job.n - job._issued)
                index = job._next_batch
                job._issued += size
                job._next_batch += 1
                job._in_flight += 1
                return job, index, size, job.plan.draw(size, job._generator) if on_cpu else None
        return None

    def _work(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        while True:
            with self._changed:
                while (task := self._next_batch()) is None:
                    if self._closed:
                        return
                    self._changed.wait()
            job, index, size, keep = task
            try:
                with torch.inference_mode(), device_lock(job.plan.device):
                    if keep is None:
                        keep = job.plan.draw(size, job._generator)
                    counts = torch.zeros_like(job._counts)
                    batch_size = count_labels(job.plan.model, job.plan.image, keep, counts, job._batch_size)
            except Exception as exc:  # noqa: BLE001 - the job's caller gets it from result()
                with self._changed:
                    job._in_flight -= 1
                    if job._state == "running":
                        self._end(job, "failed", exc)
                continue
            with self._changed:
                job._in_flight -= 1
                job._batch_size = batch_size
                if job._state == "running":
                    self._commit(job, index, size, counts)

    def _commit(self, job: Job, index: int, size: int, counts: torch.Tensor) -> None:
        """Add the job's batches that are back, in batch order; end the job when all n are counted."""
        job._finished[index] = (size, counts)
        while job._next_commit in job._finished:
            samples, batch_counts = job._finished.pop(job._next_commit)
            job._counts += batch_counts
            job._done += samples
            job._next_commit += 1
        now = time.perf_counter()
        self._commits.append((now, size))
        while self._commits[0][0] < now - RATE_WINDOW_SECONDS:
            self._commits.popleft()
        start = max(now - RATE_WINDOW_SECONDS, self._busy_since if self._busy_since is not None else now)
        if now > start:
            self._rate = sum(samples for _, samples in self._commits) / (now - start)
        if job._done == job.n:
            self._end(job, "done")
        self._changed.notify_all()

    def _status(self, job: Job) -> JobStatus:
        with self._changed:
            rotation, waiting, rate = list(self._rotation), list(self._waiting), self._rate
            state, done = job._state, job._done
            eta = None
            if state in FINAL_STATES:
                eta = 0.0
            elif rate is not None:
                times = fair_share_finish_times([j.n - j._done for j in rotation], [j.n for j in waiting], rate,
                                                self.max_active)
                eta = times[[*rotation, *waiting].index(job)]
            ahead = waiting.index(job) if job in waiting else 0
        return JobStatus(state, done, job.n, ahead, len(rotation), rate, eta)


_SHARED: SamplingQueue | None = None
_SHARED_GUARD = threading.Lock()


def shared_queue() -> SamplingQueue:
    """The process's one ``SamplingQueue`` (default settings), created on first use."""
    global _SHARED
    with _SHARED_GUARD:
        if _SHARED is None:
            _SHARED = SamplingQueue()
        return _SHARED
