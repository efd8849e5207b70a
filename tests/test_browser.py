"""The app in a real browser: ``streamlit run app.py`` driven by Debian's Chromium through Playwright.

A small certification runs to the end of its progress bar and shows its radius and plotly charts; a large one is
stopped with the Stop button and shows a partial certificate (fixed n) or a valid one without caveat (anytime,
after its radius was seen growing: the shipped checkpoint; a screenshot taken during sampling); choosing ImageNet
shows its stored certificate (with the shipped ImageNet checkpoint, skipped without it). Screenshots at desktop and
phone width go to ``artifacts/`` (gitignored). Skipped when /usr/bin/chromium is absent (CI installs it: see .ci/run).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certcore.views.default_result import DEFAULT_CHECKPOINT, REPO_ROOT, STORED
from tests.app_helpers import write_checkpoint
from tests.streamlit_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / DEFAULT_CHECKPOINT  # the trained default, copied under SHIPPED_NAME when present
SHIPPED_NAME = "cifar10_shipped_default"
ARTIFACTS = ROOT / "artifacts"
IMAGENET_CHECKPOINT = REPO_ROOT / "checkpoints" / STORED["imagenet"].checkpoint
SLOW = 120_000  # ms: the first script run imports torch and plotly on a loaded 2-core machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run app.py`` on a free port with an untrained checkpoint (preselected) and, when the repository
    has them, the shipped default under ``SHIPPED_NAME`` and the shipped ImageNet checkpoint; yields its URL once
    healthy."""
    root = tmp_path_factory.mktemp("browser")
    (root / "checkpoints").mkdir()
    write_checkpoint(root / "checkpoints")
    if SHIPPED.exists():
        shutil.copy(SHIPPED, root / "checkpoints" / f"{SHIPPED_NAME}.pt")
    if IMAGENET_CHECKPOINT.is_file():
        (root / "checkpoints" / IMAGENET_CHECKPOINT.name).symlink_to(IMAGENET_CHECKPOINT)
    env = {**os.environ, "CERTCORE_CHECKPOINTS": str(root / "checkpoints"), "CERTCORE_RESULTS": str(root / "res")}
    try:
        with streamlit_server(ROOT, env, root / "server.log") as running:
            yield running.url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _wait_idle(page: object) -> None:
    """Until the script run is over and plotly charts are drawn. The run state is the app root's
    ``data-test-script-state`` (Streamlit's running indicator appears only after a delay, so its absence does not
    mean the run is over)."""
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=SLOW)
    charts = page.locator("[data-testid=stPlotlyChart]")
    for i in range(charts.count()):
        charts.nth(i).scroll_into_view_if_needed()
        charts.nth(i).locator(".main-svg").first.wait_for(timeout=SLOW)


def _screenshot(page: object, name: str) -> None:
    """Full-page screenshot: the viewport is stretched to the app's height (Streamlit scrolls an inner box)."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = page.evaluate("document.querySelector('[data-testid=stMainBlockContainer]').scrollHeight") + 120
    width = page.viewport_size["width"]
    page.set_viewport_size({"width": width, "height": min(height, 12_000)})
    time.sleep(1)
    _wait_idle(page)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _certify(page: object, n: int) -> None:
    field = page.get_by_role("spinbutton", name="n: ablated samples")
    field.fill(str(n))
    field.press("Tab")
    page.get_by_test_id("stBaseButton-primaryFormSubmit").click()


def test_small_certification_in_chromium(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server, timeout=SLOW)
    page.get_by_text("Eq. 6 curves for").wait_for(timeout=SLOW)  # the stored default certificate is shown
    _certify(page, 400)
    done = page.locator("[data-testid=stProgress]").get_by_text("done in")
    done.wait_for(timeout=SLOW)  # the progress bar reached its end
    assert page.locator("[data-testid=stProgress] [role=progressbar]").get_attribute("aria-valuenow") == "100"
    # The page is drawn top to bottom while the script runs: wait for each part of the new certificate (two clean-
    # clone CI runs, waiting on the running indicator only, got here before the charts or the text were drawn).
    page.get_by_text("n = 400 · seed 0 · anytime bounds · sampled now").wait_for(timeout=SLOW)
    page.get_by_text("Jointly with confidence 99.8%").wait_for(timeout=SLOW)
    page.locator(".js-plotly-plot .main-svg").nth(1).wait_for(timeout=SLOW)
    _wait_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.get_by_text("certified radius, top-3 (Thm 1)").count() == 1 or page.locator(
        "[data-testid=stDataFrame]").count() >= 1
    assert page.get_by_text("Jointly with confidence 99.8%").count() == 1
    assert "n=400" in page.url and "image=cifar10-test-" in page.url  # the link reproduces the run
    _screenshot(page, "certify-desktop.png")
    page.set_viewport_size({"width": 390, "height": 844})
    _screenshot(page, "certify-phone.png")
    page.close()


def test_stop_keeps_a_partial_certificate(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{server}/?bounds=simuem", timeout=SLOW)  # fixed n (opens on the stored result: nothing to run)
    page.get_by_text("Eq. 6 curves for").wait_for(timeout=SLOW)
    _certify(page, 500_000)
    page.locator("[data-testid=stProgress]").get_by_text("samples/s").wait_for(timeout=SLOW)
    page.locator("[data-testid=stMainBlockContainer]").get_by_role("button", name="Stop", exact=True).click()  # not the
    # "Stop" of Streamlit's own status widget, which stops the script without a rerun
    page.get_by_text("Partial result.").wait_for(timeout=SLOW)
    assert page.get_by_text("You stopped the run after").count() == 1
    page.get_by_role("button", name="Run all 500,000 samples").wait_for()
    _wait_idle(page)
    _screenshot(page, "certify-stopped.png")
    page.close()


@pytest.mark.skipif(not IMAGENET_CHECKPOINT.is_file(), reason=f"the ImageNet checkpoint {IMAGENET_CHECKPOINT} is "
                    "absent (it ships on main; python -m certcore.imagenet_training makes one)")
def test_choosing_imagenet_shows_its_stored_certificate(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server, timeout=SLOW)
    page.get_by_text("Eq. 6 curves for").wait_for(timeout=SLOW)
    page.locator("[data-testid=stRadio]").get_by_text("ImageNet", exact=True).click()
    page.get_by_text(f"stored result (certcore/{STORED['imagenet'].path.name})").wait_for(timeout=SLOW)
    page.get_by_text("Certificate: fiddler crab").wait_for(timeout=SLOW)
    _wait_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.get_by_role("spinbutton", name="e: pixels kept per ablation").input_value() == "1000"
    assert page.locator(".js-plotly-plot").first.get_by_text(re.compile(r"all [\d,]+ others")).count() == 1  # tail
    _screenshot(page, "certify-imagenet.png")
    page.close()


def _live_samples(page: object) -> int:
    """The sample count in the live headline ("After 1,200 samples: ...")."""
    text = page.get_by_text(re.compile(r"^After [\d,]+ samples:")).first.inner_text()
    return int(re.match(r"After ([\d,]+) samples", text).group(1).replace(",", ""))


@pytest.mark.skipif(not SHIPPED.exists(), reason=f"the shipped checkpoint {SHIPPED} is absent")
def test_anytime_shows_the_radius_grow_and_stops_with_a_valid_certificate(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1750})
    page.goto(f"{server}/?checkpoint={SHIPPED_NAME}&n=200000&bounds=anytime", timeout=SLOW)  # a link runs at once
    live = page.get_by_text(re.compile(r"is certified in the top 3 for \d+ pixels? \(anytime-valid\)"))
    live.first.wait_for(timeout=SLOW)  # the trained model certifies the default cat from its first batches on
    first = _live_samples(page)
    page.wait_for_function(f"document.body.innerText.match(/After ([\\d,]+) samples/)[1].replace(/,/g, '') > "
                           f"{first}", timeout=SLOW)
    assert _live_samples(page) > first  # redrawn while sampling
    rate = page.locator("[data-testid=stProgress]").get_by_text("samples/s")
    rate.wait_for(timeout=SLOW)  # the progress element is redrawn beside the live frames: wait, then count
    assert rate.count() == 1
    page.get_by_text("Live certificate: every frame is valid").wait_for()
    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=SLOW)  # the live counts chart
    time.sleep(1)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshot_live.png"))  # docs/screenshot_live.png is a copy of one
    page.locator("[data-testid=stMainBlockContainer]").get_by_role("button", name="Stop", exact=True).click()
    stopped = page.locator("[data-testid=stAlertContentSuccess]")
    stopped.get_by_text("valid as it stands").wait_for(timeout=SLOW)
    assert "You stopped the run after" in stopped.inner_text(), stopped.inner_text()
    assert page.get_by_text("Partial result.").count() == 0
    page.get_by_text("From anytime-valid bounds").wait_for(timeout=SLOW)
    page.get_by_role("button", name="Continue to 200,000 samples").wait_for()
    _wait_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    page.close()
