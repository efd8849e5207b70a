"""The app's ImageNet view (AppTest) with the shipped ImageNet checkpoint: the stored certificate on selecting
ImageNet, a tiny run, What-if from its counts, and the Certified accuracy page against the paper's Table 2."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from certcore.models.checkpoints import list_checkpoints
from certcore.views.default_result import REPO_ROOT, STORED, load_default
from tests.app_helpers import app_env, assert_clean, chart, open_page, texts  # noqa: F401 - app_env: a fixture
from tests.test_app_certify import SUBMIT

SHIPPED = REPO_ROOT / "checkpoints" / STORED["imagenet"].checkpoint
pytestmark = [
    pytest.mark.usefixtures("app_env"),
    pytest.mark.skipif(not SHIPPED.is_file(), reason=f"the ImageNet checkpoint {SHIPPED} is absent (it ships on main; "
                                                     "python -m certcore.imagenet_training makes one)"),
]


@pytest.fixture
def imagenet_checkpoint() -> Path:
    """The shipped ImageNet checkpoint, linked into the app's (temporary) checkpoint folder."""
    link = Path(os.environ["CERTCORE_CHECKPOINTS"]) / SHIPPED.name
    link.symlink_to(SHIPPED)
    return link


def select_imagenet():
    at = open_page()
    at.radio(key="dataset").set_value("ImageNet").run()
    return at


def test_selecting_imagenet_shows_the_stored_certificate(imagenet_checkpoint, sampling_calls):
    stored = load_default(STORED["imagenet"].path)
    at = select_imagenet()
    assert_clean(at)
    assert sampling_calls == []
    assert at.selectbox(key="image").value == stored.image
    assert [at.number_input(key=k).value for k in ("e", "n")] == [1000, stored.sampled.n]  # not CIFAR's 50 / 10,000
    assert "stored result (certcore/default_certificate_imagenet.json)" in texts(at)
    assert at.subheader[0].value.startswith("Certificate: fiddler crab")
    weights = list_checkpoints(imagenet_checkpoint.parent)[-1].metadata["weights_sha256"]
    # a stored result of another checkpoint (the file was replaced) is shown with a note, as for CIFAR10
    assert ("The inputs above changed" in texts(at)) == (weights != stored.weights_sha256)
    counts = chart(at, 0)["data"][0]
    assert len(counts["x"]) == 21 and counts["x"][0] == "fiddler crab ★"  # the top 20 labels by name, then the rest
    assert re.fullmatch(r"all \d+ others", counts["x"][-1])
    assert len(at.dataframe[1].value) == 20  # the bounds table: the top 20 labels, not 1,000 rows


def test_a_link_to_imagenet_shows_the_stored_certificate_as_stored(imagenet_checkpoint, sampling_calls):
    """``?dataset=ImageNet`` asks for exactly the stored run: it is shown as the stored result, not as cached counts."""
    at = open_page(query={"dataset": "ImageNet"})
    assert_clean(at)
    assert sampling_calls == []
    assert "stored result (certcore/default_certificate_imagenet.json)" in texts(at)
    assert "counts reused" not in texts(at)


def test_a_tiny_imagenet_run_and_what_if_from_its_counts(imagenet_checkpoint, sampling_calls):
    at = select_imagenet()
    at.number_input(key="n").set_value(40)
    at.button(key=SUBMIT).click().run()
    assert_clean(at)
    assert sampling_calls == [40]
    assert "sampled now" in texts(at) and "e = 1000 · n = 40" in texts(at)
    at.switch_page("pages/what_if.py").run()
    at.button[0].click().run()  # "Use the counts of the last certificate"
    assert_clean(at)
    dataset, counts, label, bounds = at.session_state["wi-loaded"]
    assert (dataset, len(counts), sum(counts), label) == ("imagenet", 1000, 40, 120)  # 1,000 labels, the crab's
    assert bounds == at.radio(key="wi-bounds").value == "anytime"  # certified as sampled: the Certify default
    assert at.session_state["wi-preset"] == "ImageNet"
    assert at.number_input(key="wi-d-ImageNet").value == 50_176 and at.number_input(key="wi-e-ImageNet").value == 1000
    assert "fiddler crab" in texts(at)  # the reading names the loaded true label
