"""Certificates: l0 radii of the top-k labels of the smoothed classifier at one image (Jia et al. 2022).

``certify`` = ``sample_counts`` (the expensive half, torch) + ``certificate_from_counts`` (the cheap half, pure):
one code path, so stored counts re-certify for any k or alpha instantly and exactly as a fresh run would.

Statistical rule (one set of n samples, no separate selection sample):

* A label fixed before sampling (the true label, as in the paper's certified accuracy): its SimuEM bounds
  (Eq. 8: its lower bound and every other label's upper bound, each one-sided at alpha/c) hold together with
  probability >= 1 - alpha, so its certificate holds with probability >= ``confidence_fixed_label`` = 1 - alpha.
* Labels selected from the counts (the top-k shown for an image): all 2c one-sided bounds (each at alpha/c) hold
  simultaneously with probability >= 1 - 2 alpha (union bound), and on that event the certificate of *every*
  label holds, whichever labels the data selected. Their radii therefore hold with probability
  >= ``confidence_selected_labels`` = 1 - 2 alpha.

Cohen et al. split off n0 samples to select the label because their bound covers one label only. Here the union
bound over all 2c bounds already covers any selection, so all n samples serve the bounds; the price is 1 - 2 alpha
instead of 1 - alpha for the selected labels only (the true label, fixed in advance, keeps 1 - alpha).

Bounds (``bounds``): ``"simuem"`` (Eq. 8, the paper's) holds at the sample size n fixed before sampling;
``"anytime"`` (``certcore.math.anytime``) holds at every n at once, with the same per-bound budget alpha/c, so both
confidences above hold whenever sampling stops, even when stopping depended on the counts (a visitor watching
the radius grow). Anytime bounds are slightly wider: bench/RESULTS.md, "Price of anytime-valid bounds".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from certcore.engine.sampling import Progress, SamplingResult, check_workers, plan_sampling, run_plan
from certcore.math.bounds import _label_bounds_unchecked, _rounded_bounds_unchecked
from certcore.math.radius import (
    _certified_radius_unchecked,
    _grid,
    _levine_feizi_radius_unchecked,
    _radius_limit_unchecked,
)
from certcore.math.sample_size import warn_if_too_few_samples
from certcore.math.validation import check_alpha, check_bounds, check_counts, check_d_e, check_int, check_label
from certcore.version import __version__


@dataclass(frozen=True)
class LabelRadius:
    """The certified l0 radius of one label in the top-k (-1: not certified, d: trivially in the top-k) and
    the Theorem 2 limit no certificate from the same bounds can exceed (None where Theorem 2 does not apply)."""

    label: int
    radius: int
    radius_limit: int | None


@dataclass(frozen=True)
class SamplingRun:
    """How the counts of a certificate were sampled (None for stored counts re-certified without one)."""

    seed: int
    device: str
    batch_size: int
    seconds: float
    samples_per_second: float
    torch_version: str
    checkpoint: str | None = None

    @classmethod
    def of(cls, result: SamplingResult, seed: int, checkpoint: str | None = None) -> SamplingRun:
        """The record of one ``sample_counts`` result (complete or partial)."""
        return cls(
            seed=seed,
            device=result.device,
            batch_size=result.batch_size,
            seconds=result.seconds,
            samples_per_second=result.samples_per_second,
            torch_version=str(torch.__version__),
            checkpoint=checkpoint,
        )


@dataclass(frozen=True)
class Certificate:
    """Everything a certification of one image produced; see the module docstring for the two confidences.

    ``lower``/``upper`` are the bounds of every label named by ``bounds`` (``"simuem"``: Eq. 8 at a fixed n;
    ``"anytime"``: valid whenever sampling stopped), ``lower_rounded``/``upper_rounded`` the same after Eq. 4.
    ``top_k`` are the k labels with the largest counts (ties: smaller label first), the smoothed classifier's
    prediction. ``radii`` holds a ``LabelRadius`` for each of them in that order, then
    for ``label`` (the true label, when given) if it is not among them. ``levine_feizi_radius`` is the top-1
    radius Levine & Feizi's method gives ``top_k[0]`` from the same counts: a baseline for comparison, not
    covered by the two confidences above.
    """

    d: int
    e: int
    k: int
    n: int
    alpha: float
    counts: tuple[int, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    lower_rounded: tuple[float, ...]
    upper_rounded: tuple[float, ...]
    top_k: tuple[int, ...]
    radii: tuple[LabelRadius, ...]
    levine_feizi_radius: int
    confidence_fixed_label: float
    confidence_selected_labels: float
    certcore_version: str
    label: int | None = None
    run: SamplingRun | None = None
    bounds: str = "simuem"

    def radius_of(self, label: int) -> int:
        """The certified radius of ``label``; KeyError if it was not certified (not in top-k nor the label)."""
        for entry in self.radii:
            if entry.label == label:
                return entry.radius
        raise KeyError(f"label {label} is neither in the top-{self.k} {list(self.top_k)} nor the true label")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of plain ints, floats, strings, lists and None (``from_dict`` inverts it)."""
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        """The certificate ``to_dict`` produced ``data`` from."""
        fields = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        fields["radii"] = tuple(LabelRadius(**entry) for entry in data["radii"])
        fields["run"] = SamplingRun(**data["run"]) if data.get("run") is not None else None
        return cls(**fields)


def top_k_labels(counts: Sequence[int] | np.ndarray, k: int) -> tuple[int, ...]:
    """The k labels with the largest counts, largest first; equal counts: the smaller label first."""
    order = np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")
    return tuple(int(label) for label in order[:k])


def certificate_from_counts(
    counts: Sequence[int] | np.ndarray,
    *,
    d: int,
    e: int,
    k: int,
    alpha: float,
    label: int | None = None,
    run: SamplingRun | None = None,
    bounds: str = "simuem",
) -> Certificate:
    """The certificate of an image from its label counts alone (no model): bounds, top-k and their radii.

    ``d`` pixels, ``e`` kept per ablation, top-``k`` with 1 <= k < c, ``alpha`` in (0, 1), ``label`` the
    true label if known (certified even when outside the top-k). ``run`` is attached as given. ``bounds``:
    ``"simuem"`` when n was fixed before sampling, ``"anytime"`` when sampling may have stopped at any moment
    (see the module docstring).
    """
    n_j = check_counts(counts)
    c = len(n_j)
    d, e = check_d_e(d, e)
    k = check_int(k, "k", 1, c - 1)
    alpha = check_alpha(alpha)
    label = None if label is None else check_label(label, c)
    return _certificate(n_j, d=d, e=e, k=k, alpha=alpha, label=label, run=run, bounds=check_bounds(bounds))


def _certificate(
    n_j: np.ndarray, *, d: int, e: int, k: int, alpha: float, label: int | None, run: SamplingRun | None,
    bounds: str,
) -> Certificate:
    """``certificate_from_counts`` for arguments already checked where they entered (``certify`` or
    ``certificate_from_counts``): the math below trusts them and checks nothing again."""
    lower, upper = _label_bounds_unchecked(n_j, alpha, bounds)
    lower_rounded, upper_rounded = _rounded_bounds_unchecked(lower, upper, _grid(d, e))
    top_k = top_k_labels(n_j, k)
    reported = top_k if label is None or label in top_k else (*top_k, label)

    def label_radius(j: int) -> LabelRadius:
        p_lower, p_uppers = float(lower[j]), np.delete(upper, j)
        radius = _certified_radius_unchecked(p_lower, p_uppers, d, e, k)
        return LabelRadius(
            label=j,
            radius=radius,
            radius_limit=_radius_limit_unchecked(p_lower, p_uppers, d, e, k, radius=radius),
        )

    return Certificate(
        d=d,
        e=e,
        k=k,
        n=int(n_j.sum()),
        alpha=alpha,
        counts=tuple(int(x) for x in n_j),
        lower=tuple(float(x) for x in lower),
        upper=tuple(float(x) for x in upper),
        lower_rounded=tuple(float(x) for x in lower_rounded),
        upper_rounded=tuple(float(x) for x in upper_rounded),
        top_k=top_k,
        radii=tuple(label_radius(j) for j in reported),
        levine_feizi_radius=_levine_feizi_radius_unchecked(n_j, top_k[0], d, e, alpha),
        confidence_fixed_label=1.0 - alpha,
        confidence_selected_labels=max(0.0, 1.0 - 2.0 * alpha),
        certcore_version=__version__,
        label=label,
        run=run,
        bounds=bounds,
    )


def certify(
    model: nn.Module,
    image: torch.Tensor,
    *,
    e: int,
    k: int,
    n: int,
    alpha: float,
    seed: int,
    label: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    progress: Progress | None = None,
    checkpoint: str | None = None,
    workers: int | None = None,
    bounds: str = "simuem",
) -> Certificate:
    """Certify the top-k predictions of the smoothed ``model`` at ``image`` (C, H, W in [0, 1]) from n samples.

    ``sample_counts`` then ``certificate_from_counts`` (see both, and the module docstring for the guarantee:
    the true ``label`` is certified with probability >= 1 - alpha, the data-selected top-k with >= 1 - 2 alpha).
    All parameters are validated once, here, before any sampling (c is read from the model unless
    ``num_classes`` is given); the sampling loop and the math below trust them. A ``SampleSizeWarning`` names
    the smallest useful n when n samples can never certify.
    ``checkpoint`` (a hash or name of the weights) is recorded in the certificate's ``run``. ``batch_size``,
    ``device`` and ``workers`` go to ``sample_counts`` (speed only: on a CPU they do not change the counts).
    ``bounds="anytime"`` certifies with anytime-valid bounds (``certificate_from_counts``).
    """
    job = plan_sampling(model, image, e, n, seed=seed, batch_size=batch_size, device=device,
                        num_classes=num_classes)
    workers = check_workers(workers, job.device)
    alpha = check_alpha(alpha)
    k = check_int(k, "k", 1, job.num_classes - 1)
    label = None if label is None else check_label(label, job.num_classes)
    bounds = check_bounds(bounds)
    warn_if_too_few_samples(job.n, num_classes=job.num_classes, d=job.d, e=job.e, k=k, alpha=alpha)
    sampled = run_plan(job, progress, workers)
    run = SamplingRun.of(sampled, job.seed, checkpoint)
    return _certificate(sampled.counts, d=job.d, e=job.e, k=k, alpha=alpha, label=label, run=run, bounds=bounds)
