"""Certify page (AppTest): stored default, a small run, re-certification without resampling, bad inputs, links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from certcore.models.architectures import build_model
from certcore.models.checkpoints import save_checkpoint
from certcore.models.data import class_names
from certcore.views.default_result import DEFAULT_NAME, load_default
from tests.app_helpers import app_env, assert_clean, open_page, texts  # noqa: F401 - app_env: a fixture

pytestmark = pytest.mark.usefixtures("app_env")
SUBMIT = "FormSubmitter:certify-parameters-Certify"


def test_first_load_shows_the_stored_certificate(sampling_calls):
    at = open_page()
    assert_clean(at)
    stored = load_default()
    assert at.selectbox(key="image").value == stored.image
    assert "With confidence" in texts(at) or "not certified" in texts(at)
    assert "stored result" in texts(at) and len(at.get("plotly_chart")) == 2
    assert sampling_calls == []


def test_small_run_then_k_change_recertifies_without_resampling(sampling_calls):
    at = open_page()
    at.number_input(key="n").set_value(300)
    at.number_input(key="k").set_value(3)
    at.button(key=SUBMIT).click().run()
    assert_clean(at)
    assert sampling_calls == [300]
    assert "sampled now" in texts(at) and "n = 300" in texts(at)
    table = at.dataframe[0].value
    assert "certified radius, top-3 (Thm 1)" in table.columns
    at.number_input(key="k").set_value(1)
    at.number_input(key="alpha").set_value(0.01)
    at.button(key=SUBMIT).click().run()
    assert_clean(at)
    assert sampling_calls == [300]  # same counts, new certificate
    assert "certified radius, top-1 (Thm 1)" in at.dataframe[0].value.columns
    assert "Jointly with confidence 98%" in texts(at)  # 1 - 2 alpha with alpha = 0.01


@pytest.mark.parametrize(("name", "value", "message"), [
    ("e", 5000, "e = 5,000 pixels kept per ablation is not possible"),
    ("k", 10, "k = 10 is not below the number of classes c = 10"),
    ("n", 5, "can never certify at alpha = 0.001"),
])
def test_bad_inputs_are_explained(sampling_calls, name, value, message):
    at = open_page()
    at.number_input(key=name).set_value(value)
    at.button(key=SUBMIT).click().run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert sampling_calls == []


def test_query_parameters_set_the_widgets_and_run(sampling_calls):
    at = open_page(query={"image": "cifar10-test-0007", "k": "2", "n": "200", "seed": "5", "e": "40"})
    assert_clean(at)
    assert at.selectbox(key="image").value == "cifar10-test-0007"
    assert [at.number_input(key=k).value for k in ("k", "n", "seed", "e")] == [2, 200, 5, 40]
    assert sampling_calls == [200]  # a link reproduces its run
    assert at.subheader[0].value == "Certificate: frog · cifar10-test-0007"


def test_without_a_checkpoint_the_page_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("CERTCORE_CHECKPOINTS", str(tmp_path))
    at = open_page(query={"dataset": "ImageNet"})
    assert not at.exception
    assert "No ImageNet checkpoint" in texts(at)
    assert any("python -m certcore.imagenet_training --arch effnetlite0 --e 1000" in c.value for c in at.code)


def test_a_link_with_unusable_values_says_so_and_does_not_run(sampling_calls):
    at = open_page(query={"e": "1e400", "alpha": "2", "image": "../../etc/passwd", "k": "2"})
    assert not at.exception and not at.error
    warned = " ".join(w.value for w in at.warning)
    assert "e = '1e400' is not a whole number" in warned and "alpha = '2'" in warned and "image =" in warned
    assert at.number_input(key="e").value == 50 and at.number_input(key="k").value == 2  # usable values are kept
    assert sampling_calls == []
    at = open_page(query={"n": str(10**12)})
    assert any("n = 1,000,000,000,000 is more than the app samples" in e.value for e in at.error)
    assert sampling_calls == []


def test_an_e_other_than_the_trained_one_is_flagged(sampling_calls):
    at = open_page(query={"e": "100", "n": "100"})
    assert not at.exception and not at.error
    assert any("trained with e = 50. Certifying with e = 100 is valid" in w.value for w in at.warning)
    assert sampling_calls == [100]


def test_the_default_checkpoint_is_preselected_whatever_the_other_names(sampling_calls):
    folder = Path(os.environ["CERTCORE_CHECKPOINTS"])
    meta = {"dataset": "cifar10", "arch": "resnet20", "e": 100, "num_classes": 10,
            "class_names": class_names("cifar10"), "encoding": "levine-feizi-2c", "in_channels": 6,
            "device": "test fixture (untrained)"}
    save_checkpoint(folder / "cifar10_resnet20_e100_ft.pt", build_model("resnet20", 10).eval(), meta)  # sorts first
    at = open_page()
    assert_clean(at)
    picker = at.selectbox(key="checkpoint")
    assert picker.value == DEFAULT_NAME and set(picker.options) == {DEFAULT_NAME, "cifar10_resnet20_e100_ft"}
    assert "stored result" in texts(at) and sampling_calls == []
