"""Benchmark: seconds from a click on Certify to the first nonzero certified radius on screen (anytime mode).

A real browser (Debian Chromium, Playwright) on ``streamlit run app.py`` (loopback, the shipped default checkpoint,
the default CIFAR-10 image): the Certify page in anytime mode draws the running certificate while it samples; the
clock runs from the click until the live headline says the true label is certified for one pixel or more. The first
run of a server also loads and compiles the model (cold); the next ones (other seeds, so no cached counts) are warm.
Each run is stopped with the Stop button once measured. Prints the times and the machine's load.

    python bench/bench_live_first_certificate.py [--warm 3] [--n 100000]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.app_browser import app_server, chromium, load  # noqa: E402

NONZERO = re.compile(r"is certified in the top \d+ for [1-9][\d,]* pixels? \(anytime-valid\)")
TIMEOUT_MS = 300_000


def first_nonzero(page: object, n: int, seed: int) -> float:
    """Seconds from the click on Certify to the first nonzero live radius; then stops the run."""
    for name, value in (("n: ablated samples", n), ("seed", seed)):
        field = page.get_by_role("spinbutton", name=name)
        field.fill(str(value))
        field.press("Tab")
    started = time.perf_counter()
    page.get_by_test_id("stBaseButton-primaryFormSubmit").click()
    page.get_by_text(NONZERO).first.wait_for(timeout=TIMEOUT_MS)
    seconds = time.perf_counter() - started
    page.locator("[data-testid=stMainBlockContainer]").get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("valid as it stands").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=TIMEOUT_MS)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    parser.add_argument("--n", type=int, default=100_000, help="samples requested (each run is stopped early)")
    args = parser.parse_args()
    print(f"load before: {load()}")
    with app_server() as (url, _), chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url + "/?bounds=anytime", timeout=TIMEOUT_MS)
        page.get_by_text("Eq. 6 curves for").wait_for(timeout=TIMEOUT_MS)  # the stored default certificate
        cold = first_nonzero(page, args.n, seed=100)
        print(f"cold (model loaded and compiled by this click): {cold:.2f} s · load {load()}")
        warm = []
        for seed in range(101, 101 + args.warm):
            warm.append(first_nonzero(page, args.n, seed))
            print(f"warm, seed {seed}: {warm[-1]:.2f} s · load {load()}")
    if warm:
        print(f"warm median {statistics.median(warm):.2f} s, max {max(warm):.2f} s over {len(warm)} runs")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
