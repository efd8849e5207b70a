"""Certifying one image interactively (the app's Certify page, without the UI).

* ``ProgressReporter``: a ``sample_counts`` progress callback that shows samples done, samples/s and the ETA, and
  turns an interruption of the UI update into a clean stop: if showing progress raises (Streamlit ends a script
  run by raising from its next UI call after the user clicks Stop), the exception is kept and the callback
  returns False, so sampling ends with ``SamplingCancelled`` carrying the partial counts; the caller stores them
  and then re-raises the kept exception with ``resume_interruption``. With ``live``, it also hands the running
  counts to ``live`` (throttled), for a live certificate; only anytime-valid bounds may be shown that way.
* ``SampledCounts``: counts plus how they were drawn and which bounds certify them; ``certificate(k, alpha)``
  re-certifies them for any k or alpha without sampling again (``certificate_from_counts``).
* ``counts_key``: everything the counts depend on, as one string, for caching them.
* ``evaluate_images``: a small certified-accuracy run, one ``python -m certcore.evaluate`` call per image into
  one results file (resumable: images already in the file are skipped), with progress after every image.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from certcore.engine.certificate import Certificate, SamplingRun, certificate_from_counts
from certcore.engine.queue import JobStatus, SamplingQueue
from certcore.engine.sampling import SamplingCancelled, SamplingResult, sample_counts
from certcore.evaluation import evaluate
from certcore.math.validation import check_bounds

LIVE_INTERVAL = 0.25  # seconds between two live redraws at least: at most 4 per second


def format_duration(seconds: float) -> str:
    """Seconds as '42 s', '3 min 05 s' or '2 h 07 min'.

    >>> format_duration(4.2), format_duration(185), format_duration(7620)
    ('4 s', '3 min 05 s', '2 h 07 min')
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def queue_text(status: JobStatus) -> str:
    """Where a job waits: 'In the queue: 2 requests ahead of yours, 8 sampling now · done in about 1 min 05 s'.

    >>> queue_text(JobStatus("queued", 0, 10_000, 2, 8, 1000.0, 65.0))
    'In the queue: 2 requests ahead of yours, 8 sampling now · done in about 1 min 05 s'
    >>> queue_text(JobStatus("queued", 0, 10_000, 0, 8, None, None))
    'In the queue: next in line, 8 sampling now · estimating the wait'
    """
    ahead = "next in line" if status.ahead == 0 else (
        f"{status.ahead} request{'s' if status.ahead != 1 else ''} ahead of yours")
    eta = ("estimating the wait" if status.eta_seconds is None
           else f"done in about {format_duration(status.eta_seconds)}")
    return f"In the queue: {ahead}, {status.active} sampling now · {eta}"


def progress_text(done: int, n: int, seconds: float, unit: str = "samples") -> str:
    """'12,000 / 100,000 samples · 3,100 samples/s · about 28 s left'.

    >>> progress_text(2_000, 10_000, 1.0)
    '2,000 / 10,000 samples · 2,000 samples/s · about 4 s left'
    >>> progress_text(10_000, 10_000, 5.0)
    '10,000 / 10,000 samples · 2,000 samples/s · done in 5 s'
    """
    rate = done / seconds if seconds > 0 else 0.0
    tail = f"done in {format_duration(seconds)}" if done >= n else (
        f"about {format_duration((n - done) / rate)} left" if rate > 0 else "estimating time left"
    )
    return f"{done:,} / {n:,} {unit} · {rate:,.{0 if rate >= 10 else 2}f} {unit}/s · {tail}"


class ProgressReporter:
    """Progress callback for ``sample_counts``: calls ``show(fraction, text)`` after every batch.

    With ``live``, it is a callback for ``sample_counts(..., with_counts=True)`` and also calls ``live(counts)``
    with the running counts: after the first batch, then at most once per ``interval`` seconds and at least
    three times the last call's duration apart (so drawing takes at most about a quarter of the time sampling
    needs), and after the last batch. ``live`` returning True asks to stop sampling (a target was reached).

    Returns False (stop sampling) when ``show`` or ``live`` raises: the exception is kept in ``interruption``
    instead of escaping from inside the sampler, so the partial counts survive.

    Through a ``SamplingQueue`` (``Job.result``), ``on_status`` is the status callback: while the job waits, the
    text says its place in the queue and its ETA (``queue_text``); while it runs, the progress text adds how many
    other requests share the sampler, and ``interval`` is multiplied by the number of requests sampling, so that
    all sessions together redraw at most about 1/``interval`` times a second. Calls with no sample done yet (the
    queue's heartbeats) restart the clock.
    """

    def __init__(self, show: Callable[[float, str], None], unit: str = "samples", *,
                 live: Callable[[np.ndarray], bool | None] | None = None, interval: float = LIVE_INTERVAL) -> None:
        self._show = show
        self._unit = unit
        self._live = live
        self._interval = interval
        self._next_live = -math.inf
        self._started = time.perf_counter()
        self._sharing = 0  # other jobs running beside this one in the queue
        self.interruption: BaseException | None = None
        self.reached = False  # ``live`` asked to stop

    @property
    def wants_counts(self) -> bool:
        """Whether this callback takes the running counts (``sample_counts(..., with_counts=True)``)."""
        return self._live is not None

    def __call__(self, done: int, n: int, counts: np.ndarray | None = None) -> bool:
        if done == 0:  # a heartbeat before the first sample (waiting in a queue): on_status shows it
            self._started = time.perf_counter()
            return self.interruption is None
        try:
            text = progress_text(done, n, time.perf_counter() - self._started, self._unit)
            if self._sharing:
                text += f" · sharing the sampler with {self._sharing} other request{'s' if self._sharing > 1 else ''}"
            self._show(done / n, text)
            now = time.perf_counter()
            if self._live is not None and counts is not None and (now >= self._next_live or done >= n):
                self.reached = bool(self._live(counts))
                end = time.perf_counter()
                self._next_live = end + max(self._interval * (1 + self._sharing), 3 * (end - now))
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by resume_interruption()
            self.interruption = exc
            return False
        return not self.reached

    def on_status(self, status: JobStatus) -> bool:
        """``Job.result``'s status callback: show the place in the queue while waiting; False stops (as above)."""
        self._sharing = max(0, status.active - 1) if status.state == "running" else 0
        if status.state == "queued":
            try:
                self._show(0.0, queue_text(status))
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised by resume_interruption()
                self.interruption = exc
        return self.interruption is None and not self.reached

    def resume_interruption(self) -> None:
        """Re-raise the exception that interrupted ``show``, if any (after the partial result is stored)."""
        if self.interruption is not None:
            raise self.interruption


@dataclass(frozen=True)
class SampledCounts:
    """Label counts of one image under one base classifier, and how they were drawn.

    ``n`` is the number of samples requested; ``partial`` means sampling stopped early and the counts sum to
    fewer (the certificate is then one for the smaller n actually drawn). ``bounds`` certifies them: "simuem"
    (valid for a sample size fixed in advance: a stop must not depend on the counts) or "anytime" (valid
    whenever sampling stopped, e.g. after watching the counts); counts drawn under one are never re-certified
    with the other.
    """

    counts: tuple[int, ...]
    n: int
    d: int
    e: int
    label: int | None
    run: SamplingRun
    partial: bool = False
    bounds: str = "simuem"

    @property
    def samples(self) -> int:
        """Samples actually drawn."""
        return sum(self.counts)

    def certificate(self, k: int, alpha: float) -> Certificate:
        """The certificate of these counts for top-``k`` at failure probability ``alpha`` (no resampling)."""
        return certificate_from_counts(self.counts, d=self.d, e=self.e, k=k, alpha=alpha, label=self.label,
                                       run=self.run, bounds=self.bounds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``from_dict`` inverts it)."""
        data = asdict(self)
        data["counts"] = list(self.counts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampledCounts:
        """The ``SampledCounts`` that ``to_dict`` produced ``data`` from."""
        return cls(**{**data, "counts": tuple(data["counts"]), "run": SamplingRun(**data["run"])})


def sample_image(
    model: nn.Module,
    image: torch.Tensor,
    *,
    e: int,
    n: int,
    seed: int,
    label: int | None,
    batch_size: int,
    device: str,
    checkpoint: str | None,
    progress: ProgressReporter | None = None,
    bounds: str = "simuem",
    queue: SamplingQueue | None = None,
    owner: str = "",
) -> SampledCounts:
    """Sample the label counts of ``image`` (``sample_counts``) to be certified with ``bounds``; a cancelled run
    returns its partial counts (possibly none: ``samples == 0``). A ``progress`` that watches the running counts
    needs ``bounds="anytime"``. With ``queue``, the request goes through that shared queue as ``owner`` (same
    counts); an exception in the caller while waiting cancels the job."""
    bounds = check_bounds(bounds)
    watching = progress is not None and progress.wants_counts
    if watching and bounds != "anytime":
        raise ValueError("bounds must be 'anytime' when the counts are shown while sampling: SimuEM's bounds "
                         f"hold only for a sample size fixed in advance, got bounds={bounds!r}")
    try:
        if queue is None:
            result: SamplingResult = sample_counts(
                model, image, e, n, seed=seed, batch_size=batch_size, device=device, progress=progress,
                with_counts=watching,
            )
        else:
            job = queue.submit(model, image, e=e, n=n, seed=seed, owner=owner, batch_size=batch_size, device=device)
            try:
                result = job.result(progress=progress, on_status=None if progress is None else progress.on_status,
                                    with_counts=watching)
            finally:
                job.cancel()  # frees the place if the caller was interrupted; no-op once the job has ended
    except SamplingCancelled as cancelled:
        result = cancelled.result
    run = SamplingRun.of(result, seed, checkpoint)
    _, height, width = image.shape
    counts = tuple(int(x) for x in result.counts)
    return SampledCounts(counts, n, height * width, e, label, run, partial=result.partial, bounds=bounds)


def image_digest(image: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of an image's shape and float32 pixel values."""
    pixels = image.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(pixels.shape)).encode())
    h.update(pixels.numpy().tobytes())
    return h.hexdigest()[:16]


def counts_key(image: torch.Tensor, weights_sha256: str, *, e: int, n: int, seed: int, device: str,
               batch_size: int, bounds: str = "simuem") -> str:
    """Everything the counts depend on: image, weights, e, n, seed and device type (the batch size too on
    CUDA, where the random stream depends on it; see ``certcore.engine.sampling``), and the bounds that certify
    them (``SampledCounts.bounds``: counts drawn for one kind are never served as the other's)."""
    kind = torch.device(device).type
    batch = f"|batch={batch_size}" if kind == "cuda" else ""
    return f"{image_digest(image)}|{weights_sha256[:16]}|e={e}|n={n}|seed={seed}|{kind}{batch}|{check_bounds(bounds)}"


def evaluate_images(
    checkpoint: Path,
    dataset: str,
    indices: Sequence[int],
    out: Path,
    *,
    n: int,
    alpha: float,
    ks: Sequence[int],
    seed: int,
    batch_size: int,
    device: str,
    progress: Callable[[int, int], bool] | None = None,
) -> None:
    """Certify test images ``indices`` into results file ``out`` with the evaluation command, one image per call,
    calling ``progress(done, total)`` after each; stops early when it returns False. The file is the same a
    command-line run with these parameters writes (read it with ``certcore.evaluation.results``)."""
    args = ["--checkpoint", str(checkpoint), "--dataset", dataset, "--out", str(out), "--n", str(n),
            "--alpha", str(alpha), "--seed", str(seed), "--batch-size", str(batch_size),
            "--device", "cuda" if device.startswith("cuda") else "cpu", "--k", *map(str, ks)]
    for done, index in enumerate(indices, start=1):
        try:
            evaluate.main([*args, "--indices", str(index)])
        except SystemExit as exc:  # the command reports bad input by exiting with a message
            raise evaluate.EvaluationError(str(exc.code).removeprefix("error: ")) from None
        if progress is not None and progress(done, len(indices)) is False:
            return
