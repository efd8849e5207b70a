"""Benchmark: the price of anytime validity, in pixels of the true label's certified radius.

For every image, the radius (top-1 and top-3) from fixed-n SimuEM bounds (Eq. 8) against the radius from an
anytime-valid construction at the same n, all in one run:

- ``union-CP``: the plainest valid construction, a union bound over all n (one-sided Clopper-Pearson at level
  ``alpha/c * 6 / (pi^2 n^2)``, which sums to alpha/c over n = 1, 2, ...);
- ``mix(a,b)``: the beta-binomial mixture confidence sequence with prior Beta(a, b) (certcore.math.anytime;
  Beta(1/2, 1/2) is what ``anytime_bounds`` uses), and ``mix1(a,b)``: the same prior in the one-sided form (the mixture
  restricted to the side of the alternative, the other side's weight kept as a constant 1).

Real counts: the stored counts of a results file (d, e, alpha, c and n read from it; the default is the CIFAR10
n = 100,000 file, d=1024, e=50); smaller n by subsampling each image's counts without replacement (multivariate
hypergeometric, fixed seed). For each n the table also counts the images whose price can be nonzero at all: those
certified (radius >= 0) under SimuEM, as no construction here is ever above SimuEM, and among them those with a
positive radius under either bound. ``--synthetic`` adds ImageNet-size rows (d=50176, e=1000, c=1000) on SYNTHETIC
counts (top label probability uniform in [0.3, 0.99], the rest Dirichlet(0.05) over 999 labels, a multinomial draw
of 100,000, then the same subsampling), labelled as such.

    python bench/bench_anytime_price.py [--results FILE] [--images 500] [--sizes 1000 10000 100000] [--synthetic 100]
    python bench/bench_anytime_price.py --results results/imagenet_effnetlite0_e1000_s5feat3_n1000.jsonl \
        --sizes 100 300 1000 --synthetic 0
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.special import betainc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore import certified_radius, read_results, simuem_bounds  # noqa: E402
from certcore.math.anytime import anytime_bounds, log_threshold, mixture_lower, mixture_upper  # noqa: E402
from certcore.math.bounds import clopper_pearson_lower, clopper_pearson_upper  # noqa: E402

Bounds = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]
SIZES = (1_000, 10_000, 100_000)


def union_cp(counts: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate (a): Clopper-Pearson at alpha/c * 6/(pi^2 n^2), valid over all n by a union bound."""
    n, c = int(counts.sum()), len(counts)
    level = alpha / c * 6 / (np.pi**2 * n**2)
    return clopper_pearson_lower(counts, n, level), clopper_pearson_upper(counts, n, level)


def mixture(lower_prior: tuple[float, float], upper_prior: tuple[float, float]) -> Bounds:
    """Candidate (b): the two-sided beta-binomial mixture, each end at alpha/c; the lower bounds may use another
    prior than the upper bounds (both fixed in advance)."""

    def bounds(counts: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        n, level = int(counts.sum()), alpha / len(counts)
        return mixture_lower(counts, n, level, lower_prior), mixture_upper(counts, n, level, upper_prior)

    return bounds


def _one_sided_log_m(q: np.ndarray, s: np.ndarray, n: int, a: float, b: float, upper_side: bool) -> np.ndarray:
    """log of the one-sided mixture martingale at q: the Beta(a, b) prior's part on the alternative's side
    (p' > q for a lower bound, p' < q for an upper one) mixes the likelihood ratio, the rest keeps weight 1."""
    f = n - s
    tail = betainc(a + s, b + f, q)  # posterior mass below q
    side = tail if upper_side else 1 - tail
    prior_rest = 1 - betainc(a, b, q) if upper_side else betainc(a, b, q)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty brackets (S = 0 or n) are replaced by the caller
        mixed = log_threshold(s, n, 1.0, (a, b)) + np.log(side) - s * np.log(q) - f * np.log1p(-q)
        return np.logaddexp(mixed, np.log(prior_rest))


def one_sided_mixture(a: float, b: float) -> Bounds:
    """Candidate (b'): the one-sided mixture. Its log M is monotone in q on each side of S/n (the likelihood ratio
    falls as q moves toward S/n, and the weight moved to the constant 1 had a ratio >= 1), so bisection finds the
    end of the excluded interval."""

    def end(s: np.ndarray, n: int, level: float, upper_side: bool) -> np.ndarray:
        lo = np.where(upper_side, s / n, 0.0) + np.zeros_like(s, dtype=float)
        hi = np.where(upper_side, 1.0, s / n) + np.zeros_like(s, dtype=float)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            out = _one_sided_log_m(mid, s, n, a, b, upper_side) >= -np.log(level)
            if upper_side:
                lo, hi = np.where(out, lo, mid), np.where(out, mid, hi)
            else:
                lo, hi = np.where(out, mid, lo), np.where(out, hi, mid)
        return hi if upper_side else lo

    def bounds(counts: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        n, level = int(counts.sum()), alpha / len(counts)
        s = counts.astype(float)
        lower = np.where(counts == 0, 0.0, end(s, n, level, upper_side=False))
        upper = np.where(counts == n, 1.0, end(s, n, level, upper_side=True))
        return lower, upper

    return bounds


CANDIDATES: dict[str, Bounds] = {
    "union-CP (a)": union_cp,
    "mix(0.5,0.5) = anytime_bounds": anytime_bounds,
    "mix(0.1,0.1)": mixture((0.1, 0.1), (0.1, 0.1)),
    "mix(0.25,0.25)": mixture((0.25, 0.25), (0.25, 0.25)),
    "mix(1,1)": mixture((1.0, 1.0), (1.0, 1.0)),
    "mix(2,2)": mixture((2.0, 2.0), (2.0, 2.0)),
    "mix lower(2,0.5) upper(0.5,2)": mixture((2.0, 0.5), (0.5, 2.0)),
    "mix1(0.5,0.5)": one_sided_mixture(0.5, 0.5),
}


def radii(bounds: Bounds, counts: np.ndarray, label: int, alpha: float, d: int, e: int) -> tuple[int, int]:
    """The true label's top-1 and top-3 certified radius from these bounds (Theorem 1 with Eq. 4)."""
    lower, upper = bounds(counts, alpha)
    others = np.delete(upper, label)
    return tuple(certified_radius(float(lower[label]), others, d, e, k) for k in (1, 3))


def subsample(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n of the counted samples drawn without replacement (multivariate hypergeometric)."""
    return counts if n == counts.sum() else rng.multivariate_hypergeometric(counts, n)


def price_table(images: list[tuple[np.ndarray, int]], alpha: float, d: int, e: int, seed: int,
                sizes: tuple[int, ...] = SIZES) -> list[dict]:
    """One row per (n, construction): the mean price in pixels over all images, the share of images whose radius
    changed, and how many images could have a nonzero price (certified under SimuEM; positive under either)."""
    rows = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        sub = [(subsample(counts, n, rng), label) for counts, label in images]
        base = np.array([radii(simuem_bounds, c, lab, alpha, d, e) for c, lab in sub])
        for name, bounds in CANDIDATES.items():
            got = np.array([radii(bounds, c, lab, alpha, d, e) for c, lab in sub])
            if name == "union-CP (a)" or "anytime" in name:
                assert np.all(got <= base), name  # never tighter than fixed-n SimuEM
            drop = base - got
            rows.append({"n": n, "method": name, "price1": drop[:, 0].mean(), "price3": drop[:, 1].mean(),
                         "changed1": (drop[:, 0] != 0).mean(), "changed3": (drop[:, 1] != 0).mean(),
                         "certified1": int((base[:, 0] >= 0).sum()), "certified3": int((base[:, 1] >= 0).sum()),
                         "positive1": int((np.maximum(base, got)[:, 0] > 0).sum()),
                         "positive3": int((np.maximum(base, got)[:, 1] > 0).sum())})
    return rows


def synthetic_imagenet(count: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """SYNTHETIC ImageNet-size counts (top label 0, the true label, uniform in [0.3, 0.99]; the rest Dirichlet)."""
    rng = np.random.default_rng(seed)
    images = []
    for top in rng.uniform(0.3, 0.99, count):
        p = np.concatenate(([top], rng.dirichlet(np.full(999, 0.05)) * (1 - top)))
        images.append((rng.multinomial(100_000, p), 0))
    return images


def print_rows(title: str, rows: list[dict], images: int) -> None:
    print(f"\n### {title} ({images} images)\n")
    print("| n | construction | top-3 price (px) | top-3 changed | top-1 price (px) | top-1 changed | "
          "certified (r >= 0 under SimuEM), top-3 / top-1 | r > 0 under either bound, top-3 / top-1 | "
          "price per certified image (px), top-3 / top-1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = [r[f"price{k}"] * images / r[f"certified{k}"] if r[f"certified{k}"] else 0.0 for k in (3, 1)]
        print(f"| {r['n']:,} | {r['method']} | {r['price3']:.3f} | {r['changed3']:.0%} | {r['price1']:.3f} | "
              f"{r['changed1']:.0%} | {r['certified3']} / {r['certified1']} | {r['positive3']} / {r['positive1']} | "
              f"{per[0]:.2f} / {per[1]:.2f} |")


def speed(images: list[tuple[np.ndarray, int]], repeats: int = 20) -> None:
    """Median time of one call for c = 1000 labels, anytime_bounds against simuem_bounds, side by side."""
    times: dict[str, list[float]] = {"simuem_bounds": [], "anytime_bounds": []}
    for _ in range(repeats):
        for counts, _label in images[:5]:
            for name, fn in (("simuem_bounds", simuem_bounds), ("anytime_bounds", anytime_bounds)):
                start = time.perf_counter()
                fn(counts, 0.001)
                times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"\nc = 1000 labels, n = 100,000: simuem_bounds {ms['simuem_bounds']:.2f} ms, anytime_bounds "
          f"{ms['anytime_bounds']:.2f} ms per call (median; ratio {ms['anytime_bounds'] / ms['simuem_bounds']:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/cifar10_resnet20_e50_distill56_n100000.jsonl")
    parser.add_argument("--images", type=int, default=500, help="first records of the results file")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="sample sizes n (each at most the file's n; smaller ones by subsampling)")
    parser.add_argument("--synthetic", type=int, default=100, help="synthetic ImageNet-size images (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    print(f"machine: {cpu}, {platform.python_implementation()} {platform.python_version()}")
    records = read_results(args.results)[: args.images]
    first = records[0]
    alpha, d, e, stored = first["alpha"], first["d"], first["e"], min(r["n"] for r in records)
    if max(args.sizes) > stored:
        parser.error(f"--sizes must be at most the results file's n = {stored:,}")
    images = [(np.array(r["counts"]), r["label"]) for r in records]
    print_rows(f"{first['dataset']} {Path(args.results).name}, d={d}, e={e}, c={len(first['counts'])}, "
               f"alpha={alpha}", price_table(images, alpha, d, e, args.seed, tuple(args.sizes)), len(images))
    if args.synthetic:
        synthetic = synthetic_imagenet(args.synthetic, args.seed)
        print_rows("ImageNet size, SYNTHETIC counts, d=50176, e=1000, c=1000, alpha=0.001",
                   price_table(synthetic, 0.001, 50176, 1000, args.seed), len(synthetic))
        speed(synthetic)


if __name__ == "__main__":
    main()
