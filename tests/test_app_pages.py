"""What-if, Certified accuracy and Learn pages (AppTest): defaults render, inputs update, bad inputs explained."""

from __future__ import annotations

import pytest
import torch

from certcore.engine.certificate import SamplingRun, certificate_from_counts
from certcore.math.radius import certify_counts
from certcore.models.checkpoints import checkpoint_sha256
from certcore.views.default_result import (
    DEFAULT_CHECKPOINT,
    DEFAULT_NAME,
    checkpoint_dir,
    evaluate_command,
    results_dir,
)
from certcore.views.interactive import SampledCounts
from pages import _ui as ui
from tests.app_helpers import app_env, assert_clean, chart, open_page, texts, trace_names  # noqa: F401 - app_env: a fixture
from tests.test_results import COUNTS, make_record, write_records

pytestmark = pytest.mark.usefixtures("app_env")


def test_what_if_counts_update_the_certificate():
    at = open_page("pages/what_if.py")
    assert_clean(at)
    assert "any 15 of the 1,024 pixels" in texts(at)  # README example: k = 3, alpha = 0.001
    assert len(at.get("plotly_chart")) == 6  # counts, Eq. 6 curves, four sweeps
    at.number_input(key="wi-k").set_value(1).run()
    assert_clean(at)
    assert "stays the top-1 prediction under any 8 pixels" in texts(at)
    at.number_input(key="wi-n").set_value(1000).run()  # the same frequencies in n = 1,000 samples
    assert chart(at)["layout"]["title"]["text"] == "Label counts, n = 1,000"


def test_what_if_imagenet_preset_and_bad_inputs():
    at = open_page("pages/what_if.py")
    at.button_group(key="wi-preset").set_value("ImageNet").run()
    assert_clean(at)
    assert "of the 50,176 pixels" in texts(at)
    at.number_input(key="wi-k").set_value(1000).run()
    assert not at.exception and "k = 1000 is not below the number of classes c = 1000" in at.error[0].value
    at.button_group(key="wi-preset").set_value("Custom").run()
    at.number_input(key="wi-k").set_value(3)
    at.number_input(key="wi-d-Custom").set_value(100)
    at.number_input(key="wi-e-Custom").set_value(200).run()
    assert not at.exception and "e = 200 pixels kept per ablation is not possible" in at.error[0].value


def test_what_if_bounds_mode():
    at = open_page("pages/what_if.py")
    at.button_group(key="wi-mode").set_value("Bounds (Eq. 3)").run()
    assert_clean(at)
    assert at.metric[0].value == "15"  # the README example's SimuEM bounds, k = 3
    at.number_input(key="wi-b-lower-0").set_value(0.01).run()
    assert_clean(at)
    assert at.metric[0].value == "not certified"


def test_accuracy_page_without_results_explains_and_runs_live(shared_data):
    at = open_page("pages/accuracy.py")
    assert_clean(at)
    assert "No results files" in texts(at) and "python -m certcore.evaluate" in at.code[0].value
    assert [evaluate_command(d, n) for d, n in (("cifar10", 100_000), ("imagenet", 1000))] == [c.value for c in at.code]
    assert "on ImageNet the bundled samples" in at.number_input(key="acc-images").help  # not only CIFAR10's images
    at.number_input(key="acc-images").set_value(2)
    at.number_input(key="acc-n").set_value(100)
    at.button(key="FormSubmitter:acc-live-Evaluate").click().run()
    assert_clean(at)
    assert at.multiselect(key="acc-files").value == [f"live_{DEFAULT_NAME}_n100_a0.001_s0.jsonl"]
    names = trace_names(chart(at))
    assert f"top-1 · {DEFAULT_NAME} · n=100 · α=0.001 · 2 images" in names
    assert any(name.startswith("paper Table 1") for name in names)


def test_accuracy_page_opens_on_the_default_checkpoints_most_complete_run():
    """Other files sort first (another model's run, a short run of the default's, a bigger run of an older file of
    the same name): the page still opens on the default checkpoint's run with the most images, and the live run's
    picker on the default checkpoint."""
    results = results_dir()  # app_env's empty folders
    results.mkdir()
    default = checkpoint_dir() / DEFAULT_CHECKPOINT

    def run(name: str, images: int, checkpoint: str, sha256: str) -> None:
        write_records(results / name, [make_record(i, 0, COUNTS, checkpoint=checkpoint, checkpoint_sha256=sha256)
                                       for i in range(images)])

    run("a_other_model.jsonl", 5, "cifar10_resnet20_e100_ft", checkpoint_sha256(default))
    run("b_short.jsonl", 2, DEFAULT_NAME, checkpoint_sha256(default))
    run("b_snapshot.jsonl", 9, DEFAULT_NAME, "1" * 64)
    run("c_main.jsonl", 3, DEFAULT_NAME, checkpoint_sha256(default))
    (checkpoint_dir() / "a_first_by_name.pt").hardlink_to(default)
    at = open_page("pages/accuracy.py")
    assert_clean(at)
    assert at.multiselect(key="acc-files").value == ["c_main.jsonl"]
    assert at.selectbox(key="acc-ckpt").value == DEFAULT_NAME
    assert at.selectbox(key="acc-ckpt").options == [DEFAULT_NAME, "a_first_by_name"]


def test_learn_toy_is_exact_and_shows_tightness():
    at = open_page("pages/learn.py")
    assert_clean(at)
    captions = [img.caption for x in at.main if type(x).__name__ == "Image" for img in x.proto.imgs]
    assert any(c.startswith("All C(9, 2) = 36 ablations") for c in captions)
    assert "Brute force over all" in at.success[0].value
    assert "is pushed out of the top 1" in texts(at)
    at.slider(key="toy-e").set_value(8).run()
    assert not at.exception and not at.error
    at.slider(key="toy-c").set_value(2).run()  # then k can only be 1
    assert not at.exception and not at.error and at.radio(key="toy-k").value == 1


def test_what_if_takes_the_counts_of_the_last_certificate():
    at = open_page()
    at.number_input(key="n").set_value(200)
    at.button(key="FormSubmitter:certify-parameters-Certify").click().run()
    sampled = at.session_state["certify.last"].sampled
    at.switch_page("pages/what_if.py").run()
    at.button[0].click().run()  # "Use the counts of the last certificate"
    assert_clean(at)
    assert at.dataframe[0].value["count"].tolist() == list(sampled.counts)
    assert at.selectbox(key="wi-label").value == sampled.label
    assert at.radio(key="wi-bounds").value == sampled.bounds == "anytime"  # the Certify page's default bounds


def test_what_if_certifies_the_counts_of_an_anytime_certificate_with_anytime_bounds():
    """Counts of an anytime run (n decided while watching) load with anytime bounds: the radius shown and the
    four sweeps' current points are certificate_from_counts(..., bounds="anytime")'s (8 here, SimuEM's 9)."""
    counts, label, k, alpha = (150, 20, 15, 10, 5, 0, 0, 0, 0, 0), 0, 3, 0.001
    run = SamplingRun(seed=0, device="cpu", batch_size=100, seconds=1.0, samples_per_second=200.0,
                      torch_version=torch.__version__)
    sampled = SampledCounts(counts, n=1000, d=1024, e=50, label=label, run=run, partial=True, bounds="anytime")
    at = open_page("pages/what_if.py")
    assert at.radio(key="wi-bounds").value == "simuem"  # typed counts: the paper's fixed-n bounds
    at.session_state[ui.CERTIFY_LAST] = ui.Shown("test", sampled, torch.zeros(3, 32, 32), {"dataset": "cifar10"},
                                                 "partial")
    at.run()
    at.button[0].click().run()  # "Use the counts of the last certificate"
    assert_clean(at)
    assert at.dataframe[0].value["count"].tolist() == list(counts)
    assert at.radio(key="wi-bounds").value == "anytime"
    assert "come from an anytime run" in texts(at) and not at.warning  # a caption, no warning while anytime

    def shown_radii() -> list[int]:
        """The radius in the certificate's table, then the current point of each of the four sweeps."""
        table = at.dataframe[1].value
        radius = int(table[f"certified radius, top-{k} (Thm 1)"][0].split()[0])  # "8 pixels"
        return [radius] + [chart(at, i)["data"][1]["y"][0] for i in range(2, 6)]

    expected = {b: certificate_from_counts(counts, d=1024, e=50, k=k, alpha=alpha, label=label, bounds=b)
                .radius_of(label) for b in ("anytime", "simuem")}
    assert expected["anytime"] < expected["simuem"]  # the two kinds of bounds can be told apart here
    assert shown_radii() == [expected["anytime"]] * 5
    at.radio(key="wi-bounds").set_value("simuem").run()  # a what-if, no longer valid for these counts: warned
    assert not at.exception and "fixed-n SimuEM bounds are not valid for them" in at.warning[0].value
    assert shown_radii() == [expected["simuem"]] * 5


def test_accuracy_page_shows_an_imagenet_run_against_table_2():
    """Only an ImageNet results file (1,000 labels, d = 50,176, e = 1,000): the page opens on it, with the paper's
    Table 2 (ResNet-50) dashed for the same k and the run's certified accuracies in the table."""
    results = results_dir()
    results.mkdir()
    d, e, alpha = 224 * 224, 1000, 0.001
    records = []
    for i, (label, top) in enumerate([(0, 900), (10, 400), (20, 30)]):
        counts = [0] * 1000
        counts[label], counts[label + 1], counts[label + 2] = top, 1000 - top - 50, 50
        radii = {str(k): certify_counts(counts, label, d, e, k, alpha) for k in (1, 3)}
        records.append(make_record(i, label, counts, radii, dataset="imagenet", data_source="imagenet-bundled", d=d,
                                   e=e, checkpoint="imagenet_effnetlite0_e1000"))
    write_records(results / "imagenet_effnetlite0_e1000_n1000.jsonl", records)
    at = open_page("pages/accuracy.py")
    assert_clean(at)
    assert at.multiselect(key="acc-files").value == ["imagenet_effnetlite0_e1000_n1000.jsonl"]
    names = trace_names(chart(at))
    assert "top-1 · imagenet_effnetlite0_e1000 · n=1,000 · α=0.001 · 3 images" in names
    assert any(n.startswith("paper Table 2 · top-1 · ResNet-50") for n in names)
    assert any(n.startswith("paper Table 2 · top-3 · ResNet-50") for n in names)
    table = at.dataframe[0].value
    expected = [sum(r["radii"]["1"] >= x for r in records) / 3 for x in range(3)]
    assert table[table["k"] == 1][["r=0", "r=1", "r=2"]].values.tolist()[0] == pytest.approx(expected)
