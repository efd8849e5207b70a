"""The paper's Figures 1-4 from results files' stored counts, no model needed:
``python -m certcore.paper_figures results/NAME.jsonl [--e-runs OTHER_E.jsonl ...] [--out PREFIX] [--r-max 10]``.

Each figure is certified accuracy against the number of perturbed pixels r = 0..r_max, one line per value of
one parameter, the others held at the run's values (the paper's defaults are k = 3, n = 100,000, alpha = 0.001):

* Figure 1, impact of k: certified top-k accuracy for k = 1..5 (at most c - 1) at the run's alpha.
* Figure 3, impact of n: certified top-3 accuracy for n' = 100, 1,000, 10,000, ... below the stored n, and the
  stored n itself (the exact curve, the stored counts unchanged). A smaller n' is emulated by subsampling each
  image's stored counts (``subsample_counts``; why that is exact: below).
* Figure 4, impact of alpha: certified top-3 accuracy for alpha = 0.1, 0.01, 0.001, 0.0001 (and the run's),
  re-certified from the same counts. Each curve is a valid certificate at its own alpha; picking the alpha after
  seeing the curves is not covered by any of them.

* Figure 2, impact of e: certified top-3 accuracy for each e, one results file per e (``--e-runs``). The counts
  depend on e through the base classifier, which has to be trained with each e (the paper trains one model per
  e), so stored counts at one e say nothing about another: each e needs its own model and its own run. The runs
  must cover the same images at the same alpha; a run with more samples than the smallest n among them is
  subsampled to it (as for Figure 3), so every curve has the same n. ``certcore.views.sweeps.radius_vs_e`` shows only
  the certificate's side of e, for one image.

**Why subsampling the counts is exact.** For one image, the evaluation draws its n ablations i.i.d. (each keeps
e of the d pixels uniformly at random) and the base classifier is deterministic, so the n sampled labels
X_1, ..., X_n are i.i.d. with the label probabilities p, and the stored counts are Multinomial(n, p). Take a
uniformly random n'-subset S of the n positions, independent of the labels. By exchangeability, (X_i), i in S,
are n' i.i.d. draws from p, so their counts are Multinomial(n', p): exactly the law of a fresh run with n'
samples, and every certificate computed from them holds with probability >= 1 - alpha like a fresh run's. Given
the stored counts, the labels of a uniform n'-subset are n' draws without replacement from an urn holding n_j
balls of label j: a multivariate hypergeometric draw on the counts (numpy's
``Generator.multivariate_hypergeometric``), so the per-sample labels, which the file does not keep, are not
needed. ``tests/test_paper_figures.py`` checks sum_x Mult(n, p)(x) Hyp(y | x, n') = Mult(n', p)(y) in exact
arithmetic. Limits: n' <= n (samples that were never drawn cannot be made up; a larger n' is refused naming
n'); one draw per image and n' (seeded: ``--seed``), so a subsampled curve is one random realisation, as a fresh
run would be; and the curves for different n' reuse the same samples, so they are correlated with each other
and with the exact curve, unlike the paper's independent runs (each curve alone has the right law).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from certcore.evaluation.plots import accuracy_curves_figure
from certcore.evaluation.results import (
    Record,
    accuracy_rows_markdown,
    certified_accuracy,
    describe_run,
    read_results,
)
from certcore.evaluation.summarize import figure_files, write_files
from certcore.math.validation import check_alpha, check_counts, check_int

PAPER_ALPHAS = (0.1, 0.01, 0.001, 0.0001)
PAPER_K = 3  # the paper's default k, used by Figures 3 and 4


@dataclass(frozen=True)
class ImpactFigure:
    """One of the paper's figures as data: ``accuracy[i][r]`` is the certified accuracy at r perturbed pixels
    when ``parameter`` takes ``values[i]`` (shown as ``row_names[i]``); ``caption`` names the run, ``note`` how
    the curves were made from it."""

    number: int
    parameter: str
    values: tuple[float, ...]
    row_names: tuple[str, ...]
    accuracy: tuple[np.ndarray, ...]
    title: str
    caption: str
    note: str
    y_title: str

    def of(self, value: float) -> np.ndarray:
        """The accuracy curve at one value of the parameter."""
        return self.accuracy[self.values.index(value)]

    def rows(self) -> dict[str, np.ndarray]:
        """{row name: accuracy curve}, in order."""
        return dict(zip(self.row_names, self.accuracy, strict=True))


def subsample_counts(counts: Sequence[int] | np.ndarray, n_sub: int, rng: np.random.Generator) -> np.ndarray:
    """The label counts of a uniformly random ``n_sub``-subset of the samples behind ``counts``: a multivariate
    hypergeometric draw, distributed as Multinomial(n_sub, p) when ``counts`` are Multinomial(n, p) (see the
    module docstring). ``n_sub`` must be in [1, n]."""
    n_j = check_counts(counts)
    n_sub = _check_n_sub(n_sub, int(n_j.sum()))
    return rng.multivariate_hypergeometric(n_j, n_sub)


def subsampled_records(records: Sequence[Record], n_sub: int, seed: int = 0) -> list[Record]:
    """``records`` as if each image had been certified with ``n_sub`` samples: counts subsampled (seeded by
    ``seed`` and ``n_sub``, so each n' gets the same draw whatever other n' are asked for), stored radii dropped
    so that every radius is re-certified from the new counts. ``n_sub`` equal to the stored n: ``records`` as
    they are."""
    n = _first(records)["n"]
    if _check_n_sub(n_sub, n) == n:
        return list(records)
    rng = np.random.default_rng([check_int(seed, "seed", 0), n_sub])
    return [{**record, "n": n_sub, "counts": subsample_counts(record["counts"], n_sub, rng).tolist(), "k": [],
             "radii": {}} for record in records]


def impact_of_k(records: Sequence[Record], ks: Sequence[int], r_max: int = 10) -> ImpactFigure:
    """Figure 1: certified top-k accuracy for each k in ``ks`` (each in [1, c - 1]) at the run's alpha."""
    ks = sorted({_check_k(k, records) for k in ks})
    return ImpactFigure(
        1, "k", tuple(ks), tuple(f"top-{k}" for k in ks),
        tuple(certified_accuracy(records, k, r_max=r_max) for k in ks),
        "Impact of k on certified top-k accuracy (paper Figure 1)", run_caption(records),
        "each k certified from the same counts", "certified top-k accuracy")


def impact_of_n(records: Sequence[Record], ns: Sequence[int], k: int = PAPER_K, r_max: int = 10,
                seed: int = 0) -> ImpactFigure:
    """Figure 3: certified top-k accuracy for each n' in ``ns`` (each in [1, stored n]), smaller n' by
    ``subsampled_records``."""
    k = _check_k(k, records)
    n = records[0]["n"]
    ns = sorted({_check_n_sub(n_sub, n) for n_sub in ns})
    return ImpactFigure(
        3, "n", tuple(ns), tuple(f"n = {m:,}" + (" (stored)" if m == n else " (subsampled)") for m in ns),
        tuple(certified_accuracy(subsampled_records(records, m, seed), k, r_max=r_max) for m in ns),
        f"Impact of n on certified top-{k} accuracy (paper Figure 3)",
        run_caption(records), f"smaller n by subsampling the stored counts (multivariate hypergeometric, seed {seed})",
        f"certified top-{k} accuracy")


def impact_of_alpha(records: Sequence[Record], alphas: Sequence[float], k: int = PAPER_K,
                    r_max: int = 10) -> ImpactFigure:
    """Figure 4: certified top-k accuracy for each alpha in ``alphas`` (each in (0, 1)), from the same counts."""
    k = _check_k(k, records)
    alphas = sorted({check_alpha(a) for a in alphas}, reverse=True)
    return ImpactFigure(
        4, "alpha", tuple(alphas), tuple(f"α = {a:g}" for a in alphas),
        tuple(certified_accuracy(records, k, a, r_max) for a in alphas),
        f"Impact of α on certified top-{k} accuracy (paper Figure 4)",
        run_caption(records), "each α re-certified from the same counts", f"certified top-{k} accuracy")


def impact_of_e(runs: Sequence[Sequence[Record]], k: int = PAPER_K, r_max: int = 10, seed: int = 0) -> ImpactFigure:
    """Figure 2: certified top-k accuracy of each run (one per e, each its own base classifier), all at the
    smallest n among them (larger runs subsampled, ``subsampled_records``); the runs must hold the same images,
    alpha and dataset, and differ in e."""
    if len(runs) < 2:
        raise ValueError(f"Figure 2 needs results at 2 or more values of e, got {len(runs)} run(s)")
    firsts = [_first(records) for records in runs]
    for key in ("dataset", "alpha"):
        if len({f[key] for f in firsts}) > 1:
            raise ValueError(f"Figure 2's runs must share {key}, got {sorted({str(f[key]) for f in firsts})}")
    images = [sorted(r["index"] for r in records) for records in runs]
    if any(i != images[0] for i in images):
        raise ValueError("Figure 2's runs must hold the same images (their indices differ)")
    es = [int(f["e"]) for f in firsts]
    if len(set(es)) < len(es):
        raise ValueError(f"Figure 2's runs must each have their own e, got e = {es}")
    for records in runs:
        _check_k(k, records)
    n = min(int(f["n"]) for f in firsts)
    order = sorted(range(len(runs)), key=lambda i: es[i])
    subsampled = [i for i in order if firsts[i]["n"] > n]
    return ImpactFigure(
        2, "e", tuple(es[i] for i in order), tuple(f"e = {es[i]} ({firsts[i]['checkpoint']})" for i in order),
        tuple(certified_accuracy(subsampled_records(runs[i], n, seed), k, r_max=r_max) for i in order),
        f"Impact of e on certified top-{k} accuracy (paper Figure 2)",
        f"{firsts[0]['dataset']}, n = {n:,} samples per image, {len(images[0])} images, "
        f"α = {firsts[0]['alpha']:g}; one base classifier per e",
        "the runs at " + ", ".join(f"e = {es[i]} (n = {firsts[i]['n']:,})" for i in subsampled)
        + f" subsampled to n = {n:,} (multivariate hypergeometric, seed {seed})" if subsampled
        else "every run at its stored counts",
        f"certified top-{k} accuracy")


def default_ns(n: int) -> list[int]:
    """Figure 3's n': the powers of ten from 100 below the stored ``n``, then ``n`` itself.

    >>> default_ns(10_000), default_ns(1_500), default_ns(50)
    ([100, 1000, 10000], [100, 1000, 1500], [50])
    """
    return [10**p for p in range(2, len(str(n)) + 1) if 10**p < n] + [n]


def paper_figures(
    records: Sequence[Record],
    ks: Sequence[int] | None = None,
    ns: Sequence[int] | None = None,
    alphas: Sequence[float] | None = None,
    k: int | None = None,
    r_max: int = 10,
    seed: int = 0,
) -> list[ImpactFigure]:
    """Figures 1, 3 and 4; a parameter left None takes the paper's values: ``ks`` 1..5, ``ns`` ``default_ns``,
    ``alphas`` the four of the paper and the run's, ``k`` (of Figures 3 and 4) 3; k at most c - 1."""
    first = _first(records)
    top = len(first["counts"]) - 1
    k = figure_k(k, records)
    return [
        impact_of_k(records, range(1, min(5, top) + 1) if ks is None else ks, r_max),
        impact_of_n(records, default_ns(first["n"]) if ns is None else ns, k, r_max, seed),
        impact_of_alpha(records, [*PAPER_ALPHAS, first["alpha"]] if alphas is None else alphas, k, r_max),
    ]


def figure_k(k: int | None, records: Sequence[Record]) -> int:
    """k of Figures 2-4: ``k`` if given, else the paper's 3 (at most c - 1)."""
    return min(PAPER_K, len(_first(records)["counts"]) - 1) if k is None else k


def run_caption(records: Sequence[Record]) -> str:
    """What the curves come from: dataset, checkpoint, stored n, images, alpha and e of the run."""
    run = describe_run(records)
    return (f"{run['dataset']}, checkpoint {run['model']}, n = {run['n']:,} samples per image, "
            f"{run['num_images']} images, α = {run['alpha']:g}, e = {run['e']}")


def figure(impact: ImpactFigure) -> go.Figure:
    """The figure as plotly: one line per parameter value, caption and note under the title."""
    fig = accuracy_curves_figure(impact.rows(),
                                 f"{impact.title}<br><sup>{impact.caption}<br>{impact.note}</sup>", impact.y_title)
    return fig.update_layout(width=900, margin_t=100)


def markdown(impact: ImpactFigure) -> str:
    """The figure as a markdown section: title, caption, table (rows: parameter values, columns: r)."""
    table = accuracy_rows_markdown(impact.rows(), corner=f"{impact.parameter} \\ #perturbed pixels")
    return f"### {impact.title}\n\n{impact.caption}; {impact.note}.\n\n{table}"


def write_paper_figures(figures: Sequence[ImpactFigure], prefix: str | Path, png: bool = True) -> dict[str, Path]:
    """Write ``PREFIX.paper_figures.md`` (every table) and ``PREFIX.paper_figureN_PARAM.html`` / ``.png`` per
    figure (PNG left out with a warning when kaleido finds no Chrome); returns {suffix: path}."""
    contents: dict[str, str | bytes] = {"paper_figures.md": "\n".join(markdown(f) for f in figures)}
    for impact in figures:
        name = f"paper_figure{impact.number}_{impact.parameter}"
        contents.update({f"{name}.{ext}": data for ext, data in figure_files(figure(impact), png).items()})
    return write_files(prefix, contents)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Command line: print the tables of Figures 1, 3 and 4 and write them with the figures."""
    p = argparse.ArgumentParser(prog="python -m certcore.paper_figures", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results file written by python -m certcore.evaluate")
    p.add_argument("--out", default=None, help="output path prefix (default: the results file without .jsonl)")
    p.add_argument("--r-max", type=int, default=10, help="last column: number of perturbed pixels (default 10)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="Figure 1's k values (default 1..5, < c)")
    p.add_argument("--ns", type=int, nargs="+", default=None,
                   help="Figure 3's n' values, each <= the stored n (default: 100, 1,000, ... below it, and it)")
    p.add_argument("--alphas", type=float, nargs="+", default=None,
                   help="Figure 4's alpha values in (0, 1) (default 0.1 0.01 0.001 0.0001 and the run's)")
    p.add_argument("--e-runs", nargs="+", default=(), metavar="RESULTS",
                   help="results files at other values of e (same images and alpha): adds Figure 2")
    p.add_argument("--k", type=int, default=None, help="k of Figures 2, 3 and 4 (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsampling for Figure 3 (default 0)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG export (needs Chrome/Chromium)")
    args = p.parse_args(argv)
    try:
        records = read_results(args.results)
        figures = paper_figures(records, args.ks, args.ns, args.alphas, args.k, args.r_max, args.seed)
        if args.e_runs:
            runs = [records, *(read_results(path) for path in args.e_runs)]
            figures.insert(1, impact_of_e(runs, figure_k(args.k, records), args.r_max, args.seed))
        written = write_paper_figures(figures, args.out or Path(args.results).with_suffix(""), not args.no_png)
    except ValueError as exc:  # ResultsError included: every bad input names its parameter and range
        raise SystemExit(f"error: {exc}") from None
    print(written["paper_figures.md"].read_text(), end="")
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return written


def _check_k(k: int, records: Sequence[Record]) -> int:
    """k of top-k for these records: in [1, c - 1] (with k >= c every label is trivially in the top-k)."""
    return check_int(k, "k", 1, len(_first(records)["counts"]) - 1)


def _first(records: Sequence[Record]) -> Record:
    """The first record (every record of a file has the same run parameters and number of classes)."""
    if not records:
        raise ValueError("no records: the figures need at least one certified image")
    return records[0]


def _check_n_sub(n_sub: int, n: int) -> int:
    """A subsample size n' in [1, n]: a subsample cannot hold more samples than were drawn."""
    try:
        return check_int(n_sub, "n'", 1, n)
    except ValueError as exc:
        raise ValueError(f"{exc} (at most the stored n = {n:,}: a subsample cannot hold more samples than were "
                         "drawn; for a larger n run python -m certcore.evaluate with it)") from None


if __name__ == "__main__":
    main(sys.argv[1:])
