"""Load test: 8 real-browser sessions certifying at once on one ``streamlit run app.py``, against one alone.

Loopback only: the app with the shipped default checkpoint, Debian's Chromium through Playwright (async API, one
browser, one page per session: each page is its own Streamlit session, so its own owner in the shared sampling
queue). Every session opens the Certify page through a link (a link runs at once) for the default CIFAR-10 image
with its own seed (so that no session is served another's cached counts), n samples each, and waits for its
certificate; its JSON download is then parsed. Checked: no error on any page, every certificate equal to the one
the same request gets alone (the same counts sampled in this process by ``sample_counts`` with the model compiled
as the app compiles it, certified with the same bounds), and aggregate samples/s = sessions x n / (last finish -
first click) against one session alone, timed the same way (the median of ``--alone`` runs, after a warm-up run that
loads and compiles the model). The server's CPU seconds over each phase give its samples per CPU-second too.

The browsers run on the same cores as the server, where visitors' browsers run on the visitors' own machines and
take no CPU from the server. ``--browsers low`` emulates that: Chromium (all its processes and threads) at the
lowest CPU priority (the SCHED_IDLE policy, ``bench.app_browser.idle_priority_chromium``), so the browsers only get
CPU the server does not want; ``normal`` runs them at the server's priority, taking their share of the cores;
``both`` (the default) measures the two one after the other on the same server, each variant with its own alone and
crowd phase. Everything is bounded by ``--timeout``.

    python bench/bench_load_sessions.py [--sessions 8] [--n 10000] [--bounds anytime] [--browsers both] [--alone 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.app_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    app_server,
    cpu_seconds,
    idle_priority_chromium,
    link,
    load,
)
from certcore.engine.certificate import Certificate, certificate_from_counts  # noqa: E402
from certcore.engine.compiled import compile_for_cpu  # noqa: E402
from certcore.engine.sampling import sample_counts  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402
from certcore.views.default_result import DEFAULT_CHECKPOINT, DEFAULT_NAME, load_default  # noqa: E402


@dataclasses.dataclass
class Session:
    seed: int
    started: float = 0.0
    finished: float = 0.0
    certificate: Certificate | None = None
    error: str | None = None


async def download_certificate(page: object, timeout: float) -> Certificate:
    """The page's certificate, from its JSON download (tried again once: under load Chromium has cancelled one)."""

    async def once() -> Certificate:
        async with page.expect_download(timeout=timeout) as download:
            await page.get_by_role("button", name="Download certificate (JSON)").click()
        path = await (await download.value).path()
        return Certificate.from_dict(json.loads(Path(path).read_text())["certificate"])

    try:
        return await once()
    except Exception:  # noqa: BLE001 - the second try's error, if any, is the session's
        return await once()


async def certify_in_browser(browser: object, url: str, session: Session, args: argparse.Namespace,
                             image_id: str) -> None:
    """One visitor: open the link, wait for the certificate, download its JSON. Errors are recorded, not raised."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    timeout = args.timeout * 1000
    try:
        session.started = time.perf_counter()
        await page.goto(link(url, checkpoint=DEFAULT_NAME, image=image_id, e=50, k=3, n=args.n, alpha=0.001,
                             seed=session.seed, bounds=args.bounds), timeout=timeout)
        await page.get_by_text("sampled now in").first.wait_for(timeout=timeout)
        session.finished = time.perf_counter()
        await page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=timeout)
        if await page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count():
            session.error = "an error box on the page"
        session.certificate = await download_certificate(page, timeout)
    except Exception as exc:  # noqa: BLE001 - counted as an error of this session
        session.error = f"{type(exc).__name__}: {exc}"
    finally:
        await page.close()


async def run_sessions(url: str, sessions: list[Session], args: argparse.Namespace, image_id: str,
                       executable: Path = CHROMIUM) -> float:
    """All sessions at once in one browser started from ``executable``; returns sessions x n / (last finish - first
    start), the aggregate samples/s."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(certify_in_browser(browser, url, s, args, image_id) for s in sessions)),
                timeout=args.timeout + 60)
        finally:
            await browser.close()
    done = [s for s in sessions if s.finished]
    if not done:
        return 0.0
    return len(done) * args.n / (max(s.finished for s in done) - min(s.started for s in sessions))


def alone_and_crowd(url: str, pid: int, args: argparse.Namespace, image_id: str, executable: Path,
                    first_seed: int) -> tuple[list[Session], list[Session]]:
    """One session alone (``args.alone`` times, one after the other: the median rate), then ``args.sessions`` at
    once, all in browsers started from ``executable``; prints the aggregate samples/s and the server's samples per
    CPU-second of each, and their ratios. Seeds from ``first_seed`` on, none sampled before (no cached counts)."""
    alone = [Session(seed=first_seed + i) for i in range(args.alone)]
    cpu = cpu_seconds(pid)
    rates = [asyncio.run(run_sessions(url, [s], args, image_id, executable)) for s in alone]
    alone_rate = statistics.median(rates)
    alone_cpu = len(alone) * args.n / (cpu_seconds(pid) - cpu)
    print(f"  one session alone: {alone_rate:,.0f} samples/s (median of {', '.join(f'{r:,.0f}' for r in rates)}), "
          f"{alone_cpu:,.0f} per server CPU-second · load {load()}")
    crowd = [Session(seed=first_seed + args.alone + i) for i in range(args.sessions)]
    cpu = cpu_seconds(pid)
    crowd_rate = asyncio.run(run_sessions(url, crowd, args, image_id, executable))
    crowd_cpu = len(crowd) * args.n / (cpu_seconds(pid) - cpu)
    print(f"  {args.sessions} sessions at once: {crowd_rate:,.0f} samples/s ({crowd_rate / alone_rate:.0%} of "
          f"one alone), {crowd_cpu:,.0f} per server CPU-second ({crowd_cpu / alone_cpu:.0%}) · load {load()}")
    return alone, crowd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--bounds", choices=["anytime", "simuem"], default="anytime")
    parser.add_argument("--browsers", choices=["low", "normal", "both"], default="both",
                        help="the browsers' CPU priority: low (SCHED_IDLE), normal (the server's), both (low first)")
    parser.add_argument("--alone", type=int, default=3, help="runs of one session alone (the median is used)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any one wait may take")
    args = parser.parse_args()
    image_id = load_default().image
    variants = ["low", "normal"] if args.browsers == "both" else [args.browsers]
    print(f"{args.sessions} sessions x n = {args.n:,} ({args.bounds}), image {image_id}; load before: {load()}")
    sessions = []
    with app_server() as (url, pid), idle_priority_chromium() as low:
        warm = [Session(seed=99)]
        asyncio.run(run_sessions(url, warm, args, image_id))  # loads and compiles the model: not timed
        sessions += warm
        for v, variant in enumerate(variants):
            print(f"browsers at {'the lowest CPU priority (SCHED_IDLE)' if variant == 'low' else 'normal priority'}:")
            alone, crowd = alone_and_crowd(url, pid, args, image_id, low if variant == "low" else CHROMIUM,
                                           first_seed=1 + 100 * v)
            sessions += [*alone, *crowd]
    model = compile_for_cpu(load_checkpoint(str(ROOT / "checkpoints" / DEFAULT_CHECKPOINT), device="cpu")[0],
                            (3, 32, 32))
    image = next(s for s in bundled_samples("cifar10") if s.id == image_id)
    errors, unequal = 0, 0
    for s in sessions:
        if s.error or s.certificate is None:
            errors += 1
            print(f"seed {s.seed}: ERROR {s.error}")
            continue
        counts = sample_counts(model, image.image, 50, args.n, seed=s.seed).counts
        reference = certificate_from_counts(counts, d=1024, e=50, k=3, alpha=0.001, label=image.label,
                                            run=s.certificate.run, bounds=args.bounds)
        same = reference == s.certificate
        unequal += not same
        print(f"seed {s.seed}: {s.finished - s.started:6.1f} s, top-3 {list(s.certificate.top_k)}, true label's "
              f"radius {s.certificate.radius_of(image.label)}, {'equal to' if same else 'DIFFERENT FROM'} alone")
    print(f"errors: {errors}, certificates different from alone: {unequal}; load after: {load()}")


if __name__ == "__main__":
    main()
