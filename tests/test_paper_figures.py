"""The paper's Figures 1-4 from stored counts (``certcore.evaluation.paper_figures``): subsampling the counts is exactly
a run with fewer samples (proved in exact arithmetic), the sampler draws the hypergeometric, the tables agree with
radii computed directly, monotonicity in k and alpha, the command line, and bad inputs."""

from __future__ import annotations

import doctest
import math
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

import certcore.evaluation.paper_figures
from certcore.evaluation.paper_figures import (
    impact_of_alpha,
    impact_of_e,
    impact_of_k,
    impact_of_n,
    main,
    paper_figures,
    subsample_counts,
    subsampled_records,
)
from certcore.evaluation.results import certified_accuracy, read_results
from certcore.math.radius import certify_counts
from tests.test_results import ALPHA, D, E, figure_in_html, make_record, write_records

REPO = Path(__file__).resolve().parents[1]
N = 1000
R_MAX = 12


def outcomes(n: int, c: int) -> Iterator[tuple[int, ...]]:
    """Every vector of c non-negative integers summing to n."""
    if c == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in outcomes(n - first, c - 1):
            yield (first, *rest)


def multinomial_pmf(y: tuple[int, ...], p: tuple[Fraction, ...]) -> Fraction:
    coefficient = math.factorial(sum(y)) // math.prod(math.factorial(v) for v in y)
    return coefficient * math.prod(q**v for q, v in zip(p, y, strict=True))


def hypergeometric_pmf(y: tuple[int, ...], x: tuple[int, ...]) -> Fraction:
    """P(a uniformly random sum(y)-subset of the sum(x) samples with counts x has counts y)."""
    return Fraction(math.prod(math.comb(a, b) for a, b in zip(x, y, strict=True)), math.comb(sum(x), sum(y)))


def test_subsampled_multinomial_counts_are_exactly_multinomial() -> None:
    """sum over x of Mult(N, p)(x) * Hyp(y | x, n') == Mult(n', p)(y) for every y: c = 3, N = 6, every n'."""
    p, big_n = (Fraction(1, 2), Fraction(1, 3), Fraction(1, 6)), 6
    for n_sub in range(big_n + 1):
        for y in outcomes(n_sub, 3):
            mixture = sum(multinomial_pmf(x, p) * hypergeometric_pmf(y, x) for x in outcomes(big_n, 3))
            assert mixture == multinomial_pmf(y, p), (n_sub, y)
    # the identity is not automatic: drawing n' = 3 *with* replacement from the counts gives another law
    y = (3, 0, 0)
    with_replacement = sum(multinomial_pmf(x, p) * multinomial_pmf(y, tuple(Fraction(v, big_n) for v in x))
                           for x in outcomes(big_n, 3))
    assert with_replacement != multinomial_pmf(y, p)


def test_subsample_counts_draws_the_multivariate_hypergeometric() -> None:
    rng, trials = np.random.default_rng(0), 20_000
    x, n_sub = (4, 3, 3), 3
    support = list(outcomes(n_sub, 3))  # every y summing to 3 fits under x = (4, 3, 3)
    expected = np.array([float(hypergeometric_pmf(y, x)) for y in support]) * trials

    def frequencies(draws: list[tuple[int, ...]]) -> np.ndarray:
        return np.array([draws.count(y) for y in support])

    ours = [tuple(int(v) for v in subsample_counts(x, n_sub, rng)) for _ in range(trials)]
    assert chisquare(frequencies(ours), expected).pvalue > 1e-3
    # power: the same test rejects draws with replacement from the same counts
    wrong = [tuple(int(v) for v in rng.multinomial(n_sub, np.array(x) / sum(x))) for _ in range(trials)]
    assert chisquare(frequencies(wrong), expected).pvalue < 1e-6

    counts, n_sub, trials = np.array([600, 250, 100, 50]), 100, 4000
    draws = np.array([subsample_counts(counts, n_sub, rng) for _ in range(trials)])
    assert np.all(draws.sum(axis=1) == n_sub) and np.all(draws <= counts)
    q = counts / counts.sum()
    variance = n_sub * q * (1 - q) * (counts.sum() - n_sub) / (counts.sum() - 1)  # hypergeometric variance
    assert np.all(np.abs(draws.mean(axis=0) - n_sub * q) < 5 * np.sqrt(variance / trials))


@pytest.fixture
def records(tmp_path: Path) -> list[dict]:
    """40 images with 4 classes, n = 1,000: counts of random label probabilities, one unanimous image."""
    rng = np.random.default_rng(7)
    made = [make_record(0, 2, [0, 0, N, 0])]
    for i in range(1, 40):
        p = rng.dirichlet(np.full(4, 0.4))
        made.append(make_record(i, int(rng.choice(4, p=p)), rng.multinomial(N, p).tolist()))
    return read_results(write_records(tmp_path / "run.jsonl", made))


def accuracy_from_radii(radii: list[int]) -> list[float]:
    """Certified accuracy at r = 0..R_MAX computed from radii directly."""
    return [float(np.mean(np.array(radii) >= r)) for r in range(R_MAX + 1)]


def test_k_and_alpha_tables_agree_with_direct_certification(records: list[dict]) -> None:
    by_k = impact_of_k(records, [1, 2, 3], R_MAX)
    for k in (1, 2, 3):
        radii = [certify_counts(r["counts"], r["label"], D, E, k, ALPHA) for r in records]
        assert by_k.of(k).tolist() == accuracy_from_radii(radii)
        assert by_k.of(k).tolist() == certified_accuracy(records, k, r_max=R_MAX).tolist()
    by_alpha = impact_of_alpha(records, [0.001, 0.1, 1e-4, 0.01], 2, R_MAX)
    assert by_alpha.values == (0.1, 0.01, 0.001, 1e-4) and by_alpha.row_names[0] == "α = 0.1"
    for alpha in by_alpha.values:
        radii = [certify_counts(r["counts"], r["label"], D, E, 2, alpha) for r in records]
        assert by_alpha.of(alpha).tolist() == accuracy_from_radii(radii)


def test_monotone_in_k_and_alpha(records: list[dict]) -> None:
    by_k = np.array(impact_of_k(records, [1, 2, 3], R_MAX).accuracy)
    assert np.all(np.diff(by_k, axis=0) >= 0)  # larger k: never lower
    by_alpha = np.array(impact_of_alpha(records, [0.1, 0.01, 0.001, 1e-4, 1e-6], 3, R_MAX).accuracy)
    assert np.all(np.diff(by_alpha, axis=0) <= 0)  # smaller alpha (higher confidence): never higher
    assert by_alpha[0, 0] > by_alpha[-1, 0]  # and the test can see a difference


def test_n_curves(records: list[dict]) -> None:
    by_n = impact_of_n(records, [N, 50, 200], 3, R_MAX, seed=5)
    assert by_n.values == (50, 200, N) and by_n.row_names == ("n = 50 (subsampled)", "n = 200 (subsampled)",
                                                              "n = 1,000 (stored)")
    assert by_n.of(N).tolist() == certified_accuracy(records, 3, r_max=R_MAX).tolist()  # the exact curve
    assert subsampled_records(records, N) == records
    # a subsampled curve: the same draws made by hand, certified directly
    rng = np.random.default_rng([5, 200])
    subsampled = [rng.multivariate_hypergeometric(r["counts"], 200) for r in records]
    radii = [certify_counts(c, r["label"], D, E, 3, ALPHA) for c, r in zip(subsampled, records, strict=True)]
    assert by_n.of(200).tolist() == accuracy_from_radii(radii)
    # the draw of one n' does not depend on which other n' are asked for; the unanimous image stays unanimous
    small = subsampled_records(records, 50, seed=5)
    assert small == subsampled_records(records, 50, seed=5) and small != subsampled_records(records, 50, seed=6)
    assert small[0]["counts"] == [0, 0, 50, 0] and all(sum(r["counts"]) == 50 == r["n"] for r in small)
    assert impact_of_n(records, [50], 3, R_MAX, seed=5).of(50).tolist() == by_n.of(50).tolist()


def run_at_e(records: list[dict], e: int, n: int, path: Path) -> list[dict]:
    """The same images as ``records`` certified by another (made-up) base classifier at ``e`` with ``n`` samples."""
    rng = np.random.default_rng(e)
    made = []
    for r in records:
        counts = rng.multinomial(n, rng.dirichlet(np.full(4, 0.4))).tolist()
        radii = {str(k): certify_counts(counts, r["label"], D, e, k, ALPHA) for k in (1, 3)}
        made.append(make_record(r["index"], r["label"], counts, radii, e=e, checkpoint=f"model_e{e}"))
    return read_results(write_records(path, made))


def test_e_curves(records: list[dict], tmp_path: Path) -> None:
    e25 = run_at_e(records, 25, 500, tmp_path / "e25.jsonl")
    by_e = impact_of_e([records, e25], 3, R_MAX, seed=5)
    assert by_e.values == (25, 50) and by_e.number == 2
    assert by_e.row_names == ("e = 25 (model_e25)", "e = 50 (handmade)")
    assert by_e.of(25).tolist() == accuracy_from_radii(
        [certify_counts(r["counts"], r["label"], D, 25, 3, ALPHA) for r in e25])
    smaller = subsampled_records(records, 500, seed=5)  # the e = 50 run brought down to the common n = 500
    assert by_e.of(50).tolist() == accuracy_from_radii(
        [certify_counts(r["counts"], r["label"], D, E, 3, ALPHA) for r in smaller])
    assert by_e.caption == "cifar10, n = 500 samples per image, 40 images, α = 0.001; one base classifier per e"
    assert by_e.note == "the runs at e = 50 (n = 1,000) subsampled to n = 500 (multivariate hypergeometric, seed 5)"
    with pytest.raises(ValueError, match="2 or more values of e, got 1"):
        impact_of_e([records])
    with pytest.raises(ValueError, match="each have their own e, got e = \\[50, 50\\]"):
        impact_of_e([records, records])
    with pytest.raises(ValueError, match="must share alpha"):
        impact_of_e([records, [{**r, "alpha": 0.01} for r in e25]])
    with pytest.raises(ValueError, match="same images"):
        impact_of_e([records, e25[1:]])
    written = main([str(tmp_path / "run.jsonl"), "--e-runs", str(tmp_path / "e25.jsonl"), "--r-max", "4", "--no-png"])
    assert "paper_figure2_e.html" in written
    assert "Impact of e on certified top-3 accuracy (paper Figure 2)" in written["paper_figures.md"].read_text()


def test_paper_defaults_fit_the_number_of_classes(records: list[dict]) -> None:
    figures = paper_figures(records, r_max=3)
    assert [f.number for f in figures] == [1, 3, 4]
    assert figures[0].values == (1, 2, 3)  # k = 1..5 capped at c - 1 = 3
    assert figures[1].values == (100, N) and figures[1].y_title == "certified top-3 accuracy"
    assert figures[2].values == (0.1, 0.01, 0.001, 0.0001)  # the run's alpha is one of the paper's


def test_command_line_writes_tables_and_figures(records: list[dict], tmp_path: Path, capsys) -> None:
    results = tmp_path / "run.jsonl"
    written = main([str(results), "--r-max", "4", "--ns", "100", "1000", "--no-png"])
    assert sorted(p.name for p in written.values()) == [
        "run.paper_figure1_k.html", "run.paper_figure3_n.html", "run.paper_figure4_alpha.html",
        "run.paper_figures.md"]
    md = (tmp_path / "run.paper_figures.md").read_text()
    assert md in capsys.readouterr().out
    row = "| top-2 | " + " | ".join(f"{a:.3f}" for a in certified_accuracy(records, 2, r_max=4)) + " |"
    assert row in md and "| n = 1,000 (stored) |" in md and "| α = 0.0001 |" in md
    assert "n = 1,000 samples per image, 40 images" in md and "subsampling the stored counts" in md
    figure = figure_in_html((tmp_path / "run.paper_figure3_n.html").read_text())
    assert figure["layout"]["title"]["text"].startswith("Impact of n on certified top-3 accuracy")
    assert "n = 100 (subsampled)" in [trace["name"] for trace in figure["data"]]
    out = main([str(results), "--out", str(tmp_path / "figs" / "x"), "--ks", "1", "--k", "2", "--alphas", "0.5",
                "--no-png"])
    assert out["paper_figures.md"] == tmp_path / "figs" / "x.paper_figures.md"
    assert "| α = 0.5 |" in out["paper_figures.md"].read_text()
    assert "Impact of α on certified top-2 accuracy" in out["paper_figures.md"].read_text()


@pytest.mark.parametrize(("change", "message"), [
    (["--ns", "1001"], r"n' must be an integer \[1, 1000\], got 1001 \(at most the stored n = 1,000"),
    (["--ns", "0"], r"n' must be an integer \[1, 1000\], got 0"),
    (["--alphas", "0.1", "1.5"], r"alpha must be a number in the open interval \(0, 1\), got 1.5"),
    (["--alphas", "0"], r"alpha must be a number in the open interval \(0, 1\), got 0.0"),
    (["--k", "4"], r"k must be an integer \[1, 3\], got 4"),
    (["--ks", "0", "1"], r"k must be an integer \[1, 3\], got 0"),
    (["--r-max", "-1"], r"r_max must be an integer >= 0, got -1"),
])
def test_bad_inputs_name_the_parameter_and_range(records: list[dict], tmp_path: Path, change: list[str],
                                                 message: str) -> None:
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        main([str(tmp_path / "run.jsonl"), "--no-png", *change])
    assert not list(tmp_path.glob("run.paper_*"))  # nothing written
    with pytest.raises(ValueError, match=r"n' must be an integer \[1, 10\], got 11"):
        subsample_counts([5, 5], 11, np.random.default_rng(0))


def test_missing_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "absent.jsonl"
    done = subprocess.run([sys.executable, "-m", "certcore.paper_figures", str(missing)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr == f"error: {missing}: no such results file\n"


def test_docstring_examples() -> None:
    result = doctest.testmod(certcore.evaluation.paper_figures)
    assert result.attempted > 0 and result.failed == 0
