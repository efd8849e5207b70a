"""Certify page (AppTest): stored default, a small run, re-certification without resampling, bad inputs, links,
the anytime mode (live frames, a stop without caveat, a target radius) against the fixed-n mode."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import streamlit as st
import torch

import certcore.views.interactive
import certcore.views.live
from certcore.models.architectures import build_model
from certcore.views.default_result import DEFAULT_NAME, load_default
from tests.app_helpers import app_env, assert_clean, open_page, texts, write_checkpoint  # noqa: F401 - app_env

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
    write_checkpoint(Path(os.environ["CERTCORE_CHECKPOINTS"]), name="cifar10_resnet20_e100_ft.pt", e=100)  # sorts 1st
    at = open_page()
    assert_clean(at)
    picker = at.selectbox(key="checkpoint")
    assert picker.value == DEFAULT_NAME and set(picker.options) == {DEFAULT_NAME, "cifar10_resnet20_e100_ft"}
    assert "stored result" in texts(at) and sampling_calls == []


@pytest.fixture
def live_frames(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records the certificates the page draws live while sampling (each entry: one frame's certificate)."""
    frames: list = []
    real = certcore.views.live.live_headline

    def spy(cert, names):
        frames.append(cert)
        return real(cert, names)

    monkeypatch.setattr(certcore.views.live, "live_headline", spy)
    return frames


def stop_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """Make the page's progress reporter behave as if Stop were clicked after ``batches`` batches: the Stop
    callback's flag is set and the next UI call raises Streamlit's interruption, a rerun request."""
    real = certcore.views.interactive.ProgressReporter

    class Stopped(real):
        def __init__(self, show, *args, **kwargs):
            calls = itertools.count(1)

            def interrupted(fraction, text):
                if next(calls) > batches:
                    st.session_state["certify.stopped"] = True
                    st.rerun()
                show(fraction, text)

            super().__init__(interrupted, *args, **kwargs)

    monkeypatch.setattr(certcore.views.interactive, "ProgressReporter", Stopped)


def test_anytime_is_the_default_and_its_run_is_shown_live_and_labelled(sampling_calls, live_frames):
    at = open_page()
    assert at.radio(key="bounds").value == "anytime"
    at.number_input(key="n").set_value(600)
    at.button(key=SUBMIT).click().run()
    assert_clean(at)
    assert sampling_calls == [600]
    assert live_frames and all(c.bounds == "anytime" for c in live_frames)
    assert live_frames[0].n < 600 and live_frames[-1].n == 600  # drawn during sampling, and the last batch
    assert "anytime bounds · sampled now" in texts(at) and "anytime-valid bounds" in texts(at)
    assert any("lower (anytime)" in table.value.columns for table in at.dataframe)
    shown = at.session_state["certify.last"]
    assert shown.sampled.bounds == "anytime" and shown.sampled.certificate(3, 0.001).bounds == "anytime"
    assert at.query_params["bounds"] == "anytime"  # the page's link reproduces the mode


def test_an_interrupted_anytime_run_keeps_a_valid_certificate_without_caveat(sampling_calls, monkeypatch):
    stop_after(monkeypatch, 3)
    at = open_page()
    at.number_input(key="n").set_value(5000)
    at.button(key=SUBMIT).click().run()  # stopped, then rerun as after a click on Stop
    assert_clean(at)
    shown = at.session_state["certify.last"]
    assert shown.sampled.partial and shown.sampled.bounds == "anytime" and shown.sampled.samples < 5000
    assert any("You stopped the run after" in s.value and "valid as it stands" in s.value for s in at.success)
    assert not any("Partial result" in w.value for w in at.warning)
    assert "anytime-valid bounds" in texts(at)
    assert any("Continue to 5,000 samples" in b.label for b in at.button)


def test_an_interrupted_fixed_n_run_keeps_its_partial_caveat(sampling_calls, monkeypatch, live_frames):
    stop_after(monkeypatch, 3)
    at = open_page(query={"bounds": "simuem", "n": "5000"})  # a link runs at once
    assert not at.exception
    assert at.radio(key="bounds").value == "simuem"
    shown = at.session_state["certify.last"]
    assert shown.sampled.partial and shown.sampled.bounds == "simuem"
    assert any("Partial result." in w.value for w in at.warning) and not at.success
    assert live_frames == []  # fixed n: nothing of the counts is shown while sampling
    assert "SimuEM bounds · partial" in texts(at)


def test_anytime_stops_by_itself_at_the_target_radius(sampling_calls, live_frames):
    model = build_model("resnet20", 10).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # a base classifier that always says 'cat', the default image's true label
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float())
    write_checkpoint(Path(os.environ["CERTCORE_CHECKPOINTS"]), model, "cifar10_always_cat.pt")
    at = open_page()
    at.selectbox(key="checkpoint").set_value("cifar10_always_cat")
    at.number_input(key="n").set_value(20_000)
    at.number_input(key="target").set_value(1)
    at.button(key=SUBMIT).click().run()
    assert_clean(at)
    shown = at.session_state["certify.last"]
    cert = shown.sampled.certificate(3, 0.001)
    assert shown.sampled.partial and shown.sampled.samples < 20_000
    assert cert.label == 3 and cert.radius_of(3) >= 1 and cert.bounds == "anytime"
    reached = live_frames[-1]  # the frame that reached the target; a batch in flight may still have been counted
    assert reached.radius_of(3) >= 1 and reached.n <= cert.n < 20_000
    assert any("stopped by itself" in s.value for s in at.success)
