"""Benchmark: certified_radius at ImageNet size (d=50176, e=1000, c=1000, k=10) against a plain Fraction
transcription of Eq. 6 (tests/eq6_reference.py), side by side in one run.

    python bench/bench_radius.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore import certified_radius, simuem_bounds  # noqa: E402
from certcore.math.radius import _grid  # noqa: E402
from tests.eq6_reference import reference_radius  # noqa: E402


def _cases(count: int) -> list[tuple[float, np.ndarray]]:
    """Counts of 100,000 samples over 1000 classes with a dominant label of varying strength."""
    rng = np.random.default_rng(0)
    cases = []
    for top in np.linspace(0.5, 0.99, count):
        p = rng.dirichlet(np.full(999, 0.05)) * (1 - top)
        counts = rng.multinomial(100_000, np.concatenate(([top], p)))
        lower, upper = simuem_bounds(counts, 0.001)
        cases.append((float(lower[0]), np.delete(upper, 0)))
    return cases


def _median_ms(fn, cases, repeats: int) -> tuple[float, list[int]]:
    times, radii = [], []
    for _ in range(repeats):
        radii = []
        for p_lower, p_uppers in cases:
            t = time.perf_counter()
            radii.append(fn(p_lower, p_uppers, 50176, 1000, 10))
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, radii


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()
    cases = _cases(args.cases)
    _grid(50176, 1000)  # certified_radius caches C(d, e) per (d, e); the first call ever pays ~0.4 ms more
    fast_ms, fast_radii = _median_ms(certified_radius, cases, args.repeats)
    ref_ms, ref_radii = _median_ms(reference_radius, cases, 1)
    assert fast_radii == ref_radii, (fast_radii, ref_radii)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    print(f"machine: {cpu}, {platform.python_implementation()} {platform.python_version()}")
    print(f"radii (k=10): {fast_radii}")
    print(f"certified_radius median: {fast_ms:.3f} ms; plain Fraction Eq. 6: {ref_ms:.1f} ms; "
          f"ratio {ref_ms / fast_ms:.0f}x")


if __name__ == "__main__":
    main()
