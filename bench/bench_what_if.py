"""What-if page latency at ImageNet size (d = 50,176, e = 1,000, c = 1,000 labels, n = 100,000).

``python bench/bench_what_if.py [--repeats 5]`` times, for a change of k:

* ``certificate``: what the page draws first (bounds, radii, Eq. 6 curves, reading, counts and curves figures),
* ``sweeps``: the four what-if sweeps and their figures, drawn after it,
* ``page``: a whole rerun of the page through Streamlit's AppTest (script run, serialisation; no browser),

as wall-clock and process CPU time (the CPU time is what the page costs on an idle core; wall time depends on
what else the machine runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certcore.engine.certificate import certificate_from_counts  # noqa: E402
from certcore.models.data import class_names  # noqa: E402
from certcore.views.explain import bound_rows, curve_range, curves_for, radius_rows, reading  # noqa: E402
from certcore.views.figures import counts_figure, curves_figure, sweep_figure  # noqa: E402
from certcore.views.sweeps import (  # noqa: E402
    default_grids,
    example_counts,
    radius_vs_alpha,
    radius_vs_e,
    radius_vs_k,
    radius_vs_n,
)

D, E, ALPHA = 50176, 1000, 0.001
NAMES = class_names("imagenet")
COUNTS = example_counts(len(NAMES))


def certificate_part(k: int) -> None:
    cert = certificate_from_counts(COUNTS, d=D, e=E, k=k, alpha=ALPHA, label=0)
    rows = radius_rows(cert, NAMES)
    bound_rows(cert, NAMES, 20)
    reading(cert, NAMES)
    counts_figure(cert.counts, NAMES, cert.top_k, cert.label).to_json()
    curves = curves_for(cert, 0, curve_range(rows[0].radius, D))
    curves_figure(curves, rows[0].radius, rows[0].theorem2_limit, NAMES[0]).to_json()


def sweeps_part(k: int) -> None:
    grid = default_grids(D, E, int(COUNTS.sum()), len(NAMES), k, ALPHA)
    sweeps = [radius_vs_k(COUNTS, 0, D, E, ALPHA, grid["k"]), radius_vs_e(COUNTS, 0, D, k, ALPHA, grid["e"]),
              radius_vs_n(COUNTS, 0, D, E, k, ALPHA, grid["n"]), radius_vs_alpha(COUNTS, 0, D, E, k, grid["alpha"])]
    for sweep, current in zip(sweeps, (k, E, int(COUNTS.sum()), ALPHA), strict=True):
        sweep_figure(sweep, current, "t", log_x=sweep.parameter != "k").to_json()


def page_part() -> Callable[[int], None]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/what_if.py")
    at.run()
    at.button_group(key="wi-preset").set_value("ImageNet").run()

    def rerun(k: int) -> None:
        at.number_input(key="wi-k").set_value(k).run()
        assert not at.exception and not at.error

    return rerun


def timed(step: Callable[[int], None], repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds over ``repeats`` calls with k = 2, 3, ... (each call a new k)."""
    step(1)  # warm-up: caches of C(d, e), imports
    wall, cpu = [], []
    for k in range(2, 2 + repeats):
        w, c = time.perf_counter(), time.process_time()
        step(k)
        wall.append(1000 * (time.perf_counter() - w))
        cpu.append(1000 * (time.process_time() - c))
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}, "
          f"Python {platform.python_version()}")
    for name, step in [("certificate", certificate_part), ("sweeps", sweeps_part), ("page", page_part())]:
        wall, cpu = timed(step, args.repeats)
        print(f"{name:12s} median wall {wall:7.1f} ms   median CPU {cpu:7.1f} ms")


if __name__ == "__main__":
    main()
