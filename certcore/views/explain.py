"""Certificates in words and tables: what the app shows next to the numbers, and why a request cannot certify.

Pure functions of a ``Certificate`` (or of parameters) and class names; no new formula: radii come from
``certcore.math.radius``, bounds from the certificate.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from certcore.engine.certificate import Certificate
from certcore.math.radius import BoundCurves, bound_curves, certified_radius, levine_feizi_radius
from certcore.math.sample_size import too_few_samples

BOUNDS_NAMES = {  # a certificate's ``bounds`` in words: the long form, and the short one for table headers
    "simuem": ("SimuEM bounds (Eq. 8), valid for the sample size fixed before sampling", "Eq. 8"),
    "anytime": ("anytime-valid bounds (a confidence sequence), valid whenever sampling stops", "anytime"),
}


def percent(p: float) -> str:
    """A confidence as a short percentage.

    >>> percent(0.999), percent(1 - 2 * 0.001), percent(0.99999), percent(0.5)
    ('99.9%', '99.8%', '99.999%', '50%')
    """
    return f"{100 * p:.10g}%"


def e_problem(d: int, e: int) -> str | None:
    """Why e cannot be used with an image of d pixels, or None."""
    if 1 <= e <= d:
        return None
    return f"e = {e:,} pixels kept per ablation is not possible for an image of d = {d:,} pixels: choose e " \
           f"between 1 and {d:,}."


def k_problem(k: int, num_classes: int) -> str | None:
    """Why top-k makes no sense with this many classes, or None."""
    if k < num_classes:
        return None
    return f"k = {k} is not below the number of classes c = {num_classes}: every label is always among the " \
           f"top {k} of {num_classes}, so there is nothing to certify. Choose k between 1 and {num_classes - 1}."


def parameter_problems(*, d: int, e: int, k: int, n: int, alpha: float, num_classes: int) -> list[str]:
    """Why these parameters cannot give a meaningful certificate, one sentence each (empty list: fine).

    Checked: e within [1, d]; k below the number of classes c; alpha in (0, 1); and n at least the smallest
    sample size for which even a unanimous vote certifies (``smallest_certifying_n``).
    """
    problems = [p for p in (e_problem(d, e), k_problem(k, num_classes)) if p is not None]
    if not 0 < alpha < 1:
        problems.append(f"alpha = {alpha:g} must lie strictly between 0 and 1 (it is a failure probability).")
    if n < 1:
        problems.append(f"n = {n} samples: at least one sample is needed.")
    if problems:
        return problems
    shortfall = too_few_samples(n, num_classes=num_classes, d=d, e=e, k=k, alpha=alpha)
    if shortfall is not None:
        problems.append(shortfall)
    return problems


MAX_SEED = 2**53 - 1  # the largest integer a browser's number input holds exactly
NUMBER_RULES: dict[str, tuple[type, float, float, str]] = {  # key -> (type, low, high, the rule in words)
    "e": (int, 1, float("inf"), "a whole number of pixels >= 1"),
    "k": (int, 1, float("inf"), "a whole number >= 1"),
    "n": (int, 1, float("inf"), "a whole number of samples >= 1"),
    "alpha": (float, 0.0, 0.5, "a number in (0, 0.5]"),
    "seed": (int, 0, MAX_SEED, f"a whole number in [0, {MAX_SEED}]"),
}


@dataclass(frozen=True)
class LinkValues:
    """What a link's query parameters ask for: the usable ``values``, and why others cannot be used.

    ``ignored``: values that are not valid for their field (the field keeps its default; say so, do not run);
    ``refused``: valid numbers the app will not run (n above the app's maximum).
    """

    values: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def read_link(query: Mapping[str, str], choices: Mapping[str, Sequence[str]], n_max: int) -> LinkValues:
    """Check a link's parameters: numbers (``NUMBER_RULES``) and choices (``choices[key]``: the valid options).

    >>> link = read_link({"e": "1e400", "k": "2", "n": "10000000000", "image": "x"}, {"image": ["a"]}, 10**7)
    >>> link.values
    {'k': 2}
    >>> link.ignored[0], link.refused[0][:33]
    ("e = '1e400' is not a whole number of pixels >= 1", 'n = 10,000,000,000 is more than t')
    >>> link.ignored[1]
    "image = 'x' is not one of the available options"
    """
    link = LinkValues()
    for key, text in query.items():
        if key in choices:
            if text in choices[key]:
                link.values[key] = text
            else:
                link.ignored.append(f"{key} = {text!r} is not one of the available options")
        elif key in NUMBER_RULES:
            kind, low, high, rule = NUMBER_RULES[key]
            try:
                value = kind(text)
            except (ValueError, OverflowError):
                value = None
            if value is None or not low <= value <= high or (kind is float and not 0 < value):
                link.ignored.append(f"{key} = {text!r} is not {rule}")
            elif key == "n" and value > n_max:
                link.refused.append(f"n = {value:,} is more than the app samples for one image: at most {n_max:,} "
                                    "(python -m certcore.evaluate has no such limit)")
            else:
                link.values[key] = value
    return link


def _pixels(r: int) -> str:
    return "1 pixel" if r == 1 else f"{r:,} pixels"


def _names(labels: Sequence[int], names: Sequence[str]) -> str:
    quoted = [f"'{names[j]}'" for j in labels]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def reading(cert: Certificate, names: Sequence[str]) -> str:
    """One paragraph (Markdown) saying what the certificate guarantees, with the right confidence.

    The true label, fixed before sampling, is certified with confidence 1 - alpha; the top-k labels, selected
    from the same counts, are certified jointly with confidence 1 - 2 alpha (see ``certcore.engine.certificate``).
    Statements are about the smoothed classifier (the vote over random ablations), not the base classifier.
    """
    k, d = cert.k, cert.d
    top = f"top {k}" if k > 1 else "top-1 prediction"
    limits = {x.label: x.radius_limit for x in cert.radii}
    parts = []
    if cert.label is not None:
        name, r = names[cert.label], cert.radius_of(cert.label)
        conf = percent(cert.confidence_fixed_label)
        if r > 0:
            parts.append(
                f"**With confidence {conf}**, an attacker who changes any {r:,} of the {d:,} pixels (to any values) "
                f"cannot push the true label '{name}' out of the smoothed classifier's {top}."
            )
        elif r == 0:
            parts.append(
                f"**With confidence {conf}**, the true label '{name}' is in the smoothed classifier's {top} for "
                f"this image, but the certificate covers no changed pixel (radius 0)."
            )
        else:
            parts.append(
                f"The true label '{name}' is **not certified** in the smoothed classifier's {top}, not even for "
                f"the unchanged image: its lower bound does not beat the other labels' upper bounds."
            )
        if r >= 0 and limits[cert.label] is not None:
            parts.append(f"No certificate from these bounds can go beyond {_pixels(limits[cert.label])} (Theorem 2).")
    certified = [x for x in cert.radii if x.label in cert.top_k and x.radius >= 0]
    failed = [x.label for x in cert.radii if x.label in cert.top_k and x.radius < 0]
    stays = "stays in the top " + str(k) if k > 1 else "stays the top-1 prediction"
    if certified:
        each = "; ".join(
            f"'{names[x.label]}' {stays} under any {_pixels(x.radius)} changed"
            if x.radius > 0
            else f"'{names[x.label]}' {stays} with no pixel changed"
            for x in certified
        )
        picked = "these labels were" if k > 1 else "the prediction was"
        parts.append(
            f"Jointly with confidence {percent(cert.confidence_selected_labels)} (1 - 2 alpha, because {picked} "
            f"picked from the same counts): {each}."
        )
    if failed:
        parts.append(
            f"{_names(failed, names)} {'is' if len(failed) == 1 else 'are'} in the observed top {k} but not "
            "certified (the bounds are too loose even with no pixel changed)."
        )
    if cert.bounds == "anytime":
        parts.append(f"From {BOUNDS_NAMES['anytime'][0]}: this holds however the moment to stop was chosen.")
    return " ".join(parts)


@dataclass(frozen=True)
class RadiusRow:
    """One line of the radius table: the label's certificate and the top-1 comparison with Levine & Feizi."""

    label: int
    name: str
    role: str
    radius: int
    theorem2_limit: int | None
    top1_radius: int
    levine_feizi_top1: int


def radius_rows(cert: Certificate, names: Sequence[str]) -> list[RadiusRow]:
    """The certified radius of every top-k label and of the true label, with the Theorem 2 limit beside it,
    and the same label's top-1 radius from Theorem 1 and from Levine & Feizi (same counts and alpha)."""
    rows = []
    for x in cert.radii:
        roles = [f"top-{cert.top_k.index(x.label) + 1}"] if x.label in cert.top_k else []
        roles += ["true label"] if x.label == cert.label else []
        rows.append(
            RadiusRow(
                label=x.label,
                name=names[x.label],
                role=", ".join(roles),
                radius=x.radius,
                theorem2_limit=x.radius_limit,
                top1_radius=certified_radius(cert.lower[x.label], np.delete(cert.upper, x.label), cert.d, cert.e, 1),
                levine_feizi_top1=levine_feizi_radius(cert.counts, x.label, cert.d, cert.e, cert.alpha),
            )
        )
    return rows


@dataclass(frozen=True)
class BoundRow:
    """One line of the bounds table: a label's count and its bounds (the certificate's: SimuEM or anytime)
    before and after (Eq. 4) rounding to the 1/C(d, e) grid."""

    label: int
    name: str
    count: int
    frequency: float
    lower: float
    upper: float
    lower_rounded: float
    upper_rounded: float


def bound_rows(cert: Certificate, names: Sequence[str], limit: int | None = None) -> list[BoundRow]:
    """Bounds of every label, largest count first (ties: smaller label first); ``limit`` keeps the first
    ``limit`` rows plus the true label and every top-k label wherever they fall."""
    order = np.argsort(-np.asarray(cert.counts), kind="stable").tolist()
    keep = set(order if limit is None else order[:limit]) | set(cert.top_k)
    if cert.label is not None:
        keep.add(cert.label)
    return [
        BoundRow(
            label=j,
            name=names[j],
            count=cert.counts[j],
            frequency=cert.counts[j] / cert.n,
            lower=cert.lower[j],
            upper=cert.upper[j],
            lower_rounded=cert.lower_rounded[j],
            upper_rounded=cert.upper_rounded[j],
        )
        for j in order
        if j in keep
    ]


def curve_range(radius: int, d: int) -> int:
    """How far in r to draw Eq. 6's two sides: well past the radius so the crossing is visible."""
    return int(min(d, max(10, 2 * radius + 5)))


def curves_for(cert: Certificate, label: int, r_max: int) -> BoundCurves:
    """Eq. 6's two sides for ``label`` of a certificate: its lower bound against the other labels' upper bounds."""
    return bound_curves(cert.lower[label], np.delete(cert.upper, label), cert.d, cert.e, cert.k, r_max)


def certificate_json(cert: Certificate, context: dict[str, Any]) -> str:
    """The certificate as a JSON document, with ``context`` (dataset, image, checkpoint, ...) beside it."""
    return json.dumps({"context": context, "certificate": cert.to_dict()}, indent=1)


def counts_csv(cert: Certificate, names: Sequence[str]) -> str:
    """label,name,count,lower,upper,bounds for every label (re-certify the counts later with
    ``certificate_from_counts(..., bounds=...)``; ``bounds`` names the kind of lower and upper bound)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "name", "count", "lower", "upper", "bounds"])
    writer.writerows([j, names[j], n, repr(lo), repr(up), cert.bounds]
                     for j, (n, lo, up) in enumerate(zip(cert.counts, cert.lower, cert.upper, strict=True)))
    return out.getvalue()


def checkpoint_summary(meta: Mapping[str, Any]) -> str:
    """One line on a checkpoint from its metadata: architecture, e, single-ablation accuracy, where it was trained,
    the start of the weights' hash and, for an unfinished run, its status.

    >>> meta = {"arch": "effnetlite0", "e": 1000, "weights_sha256": "aa3e5b4a099744630d55", "device": "cpu",
    ...         "accuracies": {"heldout_ablated": {"top1": 0.1125}}}
    >>> print(checkpoint_summary(meta))  # doctest: +ELLIPSIS
    effnetlite0 · trained with e = 1000 · accuracy on single ablated held-out images 11.2% · trained on cpu · ...
    """
    accuracies = meta.get("accuracies", {})
    heldout = accuracies.get("heldout_ablated", {}).get("top1")  # the ImageNet trainer's (held-out train images)
    accuracy = (f"accuracy on single ablated test images {accuracies['eval500_ablated']:.1%} · "
                if "eval500_ablated" in accuracies else
                f"accuracy on single ablated held-out images {heldout:.1%} · " if heldout is not None else "")
    status = meta.get("training", {}).get("status")
    device = meta.get("device", "unknown device")
    where = device if device.startswith("from step") else f"on {device}"  # a resumed run: "from step 0: cpu; ..."
    return (f"{meta['arch']} · trained with e = {meta['e']} · {accuracy}trained {where}"
            f" · weights {meta['weights_sha256'][:12]}" + (f" · **{status}**" if status else ""))
