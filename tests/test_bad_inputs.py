"""The bad-input catalogue: one table of inputs that must be refused clearly (or must work), across every layer.

Layers: ``api`` (certcore functions), ``decoder`` (``certcore.models.data.load_uploaded_image``, what the app's upload
calls), ``evaluate`` and ``train`` (the command lines, run in-process through ``main(argv)``), ``certify-page`` and
``what-if-page`` (the Streamlit app through ``AppTest``: query parameters, uploads, widget state).

Each row names a *kind* of bad input, the layer, the input, and what must happen:

* ``Refused(pattern)``: a clear error whose message matches ``pattern`` (the input's name and its allowed range).
  CLI: exit with a non-zero status and the message; app: no exception escapes (``at.exception`` empty) and an
  ``st.error`` carries the message.
* ``Warned(pattern)``: accepted, with a warning matching ``pattern``.
* ``Ignored(fallbacks)``: app only, for query parameters: the value is dropped and the widget keeps a valid value.
* ``Accepted(check)``: must work (e.g. greyscale, RGBA and 16-bit uploads) and satisfy ``check``.

Rows marked ``xfail(strict=True)`` are known gaps in code this catalogue does not own (the reason names file and
line); when one is fixed the row XPASSes, fails, and its mark should be dropped. Kinds already tested at some layer
by another test file are not repeated there: ``ELSEWHERE`` lists where, and ``test_elsewhere_still_exists`` keeps
those references honest. Sampling in the app rows is faked (``certcore.views.interactive.sample_counts``) so that a link
that starts a certification costs nothing; real concurrent sampling is in ``tests/test_concurrency.py``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import certcore.views.interactive
from certcore.engine.certificate import certificate_from_counts, certify
from certcore.engine.sampling import SamplingResult
from certcore.evaluation import evaluate
from certcore.evaluation.results import read_results, record_line
from certcore.math.validation import check_counts
from certcore.models import training as train
from certcore.models.architectures import build_model
from certcore.models.checkpoints import load_checkpoint, save_checkpoint
from certcore.models.data import MAX_UPLOAD_BYTES, bundled_samples, class_names, load_uploaded_image
from certcore.views.explain import parameter_problems
from tests.data_helpers import bundled_cifar10_arrays, write_torchvision_cifar_root

REPO = Path(__file__).resolve().parents[1]
META = {"dataset": "cifar10", "arch": "resnet20", "e": 50, "num_classes": 10, "class_names": class_names("cifar10"),
        "encoding": "levine-feizi-2c"}
D = 32 * 32


# ------------------------------------------------------------------------------------------------ expectations


@dataclass(frozen=True)
class Refused:
    pattern: str
    exception: type[BaseException] = ValueError


@dataclass(frozen=True)
class Warned:
    pattern: str


@dataclass(frozen=True)
class Ignored:
    fallbacks: dict[str, Callable[[Any], bool]]  # widget key -> what the value it keeps must satisfy


@dataclass(frozen=True)
class Accepted:
    check: Callable[[Any], bool] = lambda _result: True


Expect = Refused | Warned | Ignored | Accepted


@dataclass(frozen=True)
class Row:
    kind: str
    layer: str
    input: Any  # layer-specific: a callable (api, decoder), argv (evaluate, train) or an AppInput
    expect: Expect
    gap: str | None = None  # a known bug elsewhere: the row is xfail(strict=True) with this reason

    def param(self) -> Any:
        marks = [pytest.mark.xfail(strict=True, reason=self.gap)] if self.gap else []
        return pytest.param(self, id=f"{self.layer}:{self.kind}", marks=marks)


@dataclass(frozen=True)
class AppInput:
    page: str = "app.py"
    query: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    upload: tuple[str, bytes, str] | None = None
    checkpoints: str = "good"  # which prepared checkpoint folder the app sees
    results: str | None = None  # a results file of the ``world`` fixture, alone in the app's results folder


# ------------------------------------------------------------------------------------------------ inputs


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """The first chunks of a PNG claiming ``width`` x ``height`` pixels (a few dozen bytes, no pixel data)."""
    png = bytearray(encode(Image.new("L", (8, 8))))
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    return bytes(png)


IMAGENET_UPLOAD = functools.partial(AppInput, query={"dataset": "ImageNet"}, checkpoints="other")
RNG = np.random.default_rng(0)
NOISE_JPEG = encode(Image.fromarray(RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)), "JPEG")


def float_tiff() -> bytes:
    """A 32-bit float TIFF holding NaN, -5 and 1e6: values no 8-bit image has."""
    arr = np.full((32, 32), np.nan, dtype=np.float32)
    arr[:, :10], arr[:, 10:20] = 1e6, -5.0
    return encode(Image.fromarray(arr, mode="F"), "TIFF")


def is_model_input(x: torch.Tensor) -> bool:
    return x.shape == (3, 32, 32) and x.dtype == torch.float32 and bool(torch.isfinite(x).all()) and \
        0 <= float(x.min()) and float(x.max()) <= 1


def refused_fast(data: bytes) -> bool:
    """Refused with the pixel limit in the message, in well under a second (decided from the header alone)."""
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"at most 50,000,000"):
        load_uploaded_image(data, "cifar10")
    return time.perf_counter() - started < 1.0


def ten_thousand_squared() -> bool:
    """A real 10000x10000 PNG (1-bit, ~12 MB to build) and a bare header claiming the same size: both refused the
    same way and quickly: the decision is made from the header, so nothing of 10^8 pixels is ever allocated."""
    full = encode(Image.new("1", (10_000, 10_000)))
    return refused_fast(full) and refused_fast(png_header(10_000, 10_000))


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint (and broken variants), an offline data folder of 3 images, a torchvision CIFAR root,
    and a results file made by ``python -m certcore.evaluate`` (n = 20)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(8)
    good = root / "good"
    good.mkdir()
    save_checkpoint(good / "tiny.pt", build_model("resnet20", 10), META)
    data = root / "data" / "cifar10"
    data.mkdir(parents=True)
    samples = bundled_samples("cifar10")[:3]
    np.savez(data / "cifar10_test_first1000_lossless.npz",
             x=np.stack([(s.image.permute(1, 2, 0) * 255).round().byte().numpy() for s in samples]),
             y=np.array([s.label for s in samples], dtype=np.uint8), orig_index=np.arange(3, dtype=np.int16),
             class_names=np.array(class_names("cifar10")))

    bad = root / "bad"
    bad.mkdir()
    blob = (good / "tiny.pt").read_bytes()
    (bad / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    tampered = torch.load(good / "tiny.pt", weights_only=True)
    tampered["state_dict"]["net.linear.bias"] += 1.0
    torch.save(tampered, bad / "tampered.pt")
    torch.save(build_model("resnet20", 10).state_dict(), bad / "bare_state_dict.pt")
    (bad / "junk.pt").write_bytes(b"definitely not a checkpoint")

    other = root / "other_dataset"  # a valid checkpoint, but for ImageNet
    other.mkdir()
    save_checkpoint(other / "imagenet_tiny.pt", build_model("resnet20", 10), {**META, "dataset": "imagenet"})

    cifar = root / "cifar"
    x, y = bundled_cifar10_arrays()
    write_torchvision_cifar_root(cifar, np.concatenate([x, x[:44, :, ::-1]]), np.concatenate([y, y[:44]]))

    results = root / "results.jsonl"
    threads = torch.get_num_threads()
    evaluate.main(["--checkpoint", str(good / "tiny.pt"), "--shared-data", str(root / "data"), "--indices", "0", "1",
                   "2", "--num-samples", "20", "--k", "1", "--keep", "50", "--batch-size", "20", "--threads", "1",
                   "--out", str(results)])
    torch.set_num_threads(threads)
    write_bad_results(root, results)
    return {"root": root, "good": good, "bad": bad, "other": other, "data": root / "data", "cifar": cifar,
            "results": results}


def write_bad_results(root: Path, results: Path) -> None:
    """Variants of a good results file, each broken in one way."""
    lines = results.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]

    def write(name: str, recs: list[dict]) -> None:
        (root / name).write_bytes(b"".join(record_line(r) for r in recs))

    (root / "corrupt_line.jsonl").write_bytes(lines[0] + lines[1][:30] + b"\n" + lines[2])
    write("counts_not_n.jsonl", [records[0], {**records[1], "counts": [5] * 10}])
    write("negative_count.jsonl", [{**records[0], "counts": [-1, 21] + [0] * 8}])
    write("all_zero.jsonl", [{**records[0], "n": 0, "counts": [0] * 10}])
    write("label_out_of_range.jsonl", [{**records[0], "label": 12}])
    write("wrong_length.jsonl", [records[0], {**records[1], "counts": [20] + [0] * 8}])
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 4)


@pytest.fixture()
def fake_sampling(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The app's sampler replaced by one that answers instantly (all votes for label 0) and records its calls."""
    calls: list[dict[str, Any]] = []

    def sample_counts(model, image, e, n, *, seed, batch_size, device, num_classes=None, progress=None):
        calls.append({"e": e, "n": n, "seed": seed})
        counts = np.zeros(10, dtype=np.int64)
        counts[0] = n
        return SamplingResult(counts=counts, n=n, batch_size=batch_size, device="cpu (fake)", seconds=0.001)

    monkeypatch.setattr(certcore.views.interactive, "sample_counts", sample_counts)
    return calls


@pytest.fixture(scope="module")
def _one_thread():
    """One torch thread: on this shared 2-core machine two threads make a tiny forward pass ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def fresh_streamlit_caches():
    """Rows share this process's Streamlit caches; clear them so fake counts never reach another test module."""
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


# ------------------------------------------------------------------------------------------------ the table


def certify_tiny(image: torch.Tensor | None = None, **changes: Any) -> Callable[[dict[str, Path]], Any]:
    """A certify() call on the world's tiny checkpoint, with ``changes`` to otherwise valid arguments."""
    args = {"e": 50, "k": 1, "n": 40, "alpha": 0.01, "seed": 0, **changes}
    return lambda world: certify(tiny_model(world["good"] / "tiny.pt"), IMG if image is None else image, **args)


@functools.cache
def tiny_model(path: Path) -> torch.nn.Module:
    return load_checkpoint(path)[0]


IMG = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
COUNTS = [80, 9, 5, 3, 1, 1, 1, 0, 0, 0]


EVAL = ["--checkpoint", "{good}/tiny.pt", "--shared-data", "{data}", "--indices", "0", "--num-samples", "20",
        "--k", "1", "--keep", "50", "--threads", "1", "--batch-size", "20", "--out", "{tmp}/out.jsonl"]


def from_counts(name: str) -> list[str]:
    """``--from-counts`` on one of the broken results files of the ``world`` fixture."""
    return ["--from-counts", f"{{root}}/{name}", "--k", "2", "--out", "{tmp}/re.jsonl"]

TRAIN = ["--data-root", "{cifar}", "--arch", "resnet20", "--e", "40", "--epochs", "1", "--batch-size", "16",
         "--val-size", "24", "--eval-repeats", "1", "--threads", "1", "--device", "cpu", "--out", "{tmp}/ck.pt",
         "--state", "{tmp}/state.pt"]

ROWS: list[Row] = [
    # ---- parameters: e, k, n, alpha
    Row("e_below_range", "evaluate", [*EVAL, "--e", "0"], Refused(r"--e must be >= 1, got 0")),
    Row("e_below_range", "train", [*TRAIN, "--e", "0"], Refused(r"--e must be in \[1, 1024\].*got 0")),
    Row("e_above_d", "evaluate", [*EVAL, "--e", "2000"], Refused(r"trained with e=50, requested e=2000")),
    Row("e_above_d", "train", [*TRAIN, "--e", "2000"], Refused(r"--e must be in \[1, 1024\].*got 2000")),
    Row("e_other_than_trained", "api",
        certify_tiny(e=100),
        Accepted(lambda cert: cert.e == 100)),  # allowed: the API has no record of the training e
    Row("e_other_than_trained", "certify-page", AppInput(query={"e": "100", "n": "20"}),
        Warned(r"trained with e = 50")),
    Row("k_below_1", "evaluate", [*EVAL, "--k", "0"], Refused(r"--k values must be >= 1")),
    Row("k_not_an_integer", "api",
        lambda w: certificate_from_counts(COUNTS, d=D, e=50, k=True, alpha=0.01),
        Refused(r"^k must be an integer \[1, 9\], got True")),
    Row("n_below_1", "evaluate", [*EVAL, "--n", "0"], Refused(r"--n must be >= 1, got 0")),
    Row("n_not_a_number", "evaluate", [*EVAL, "--n", "1e5"], Refused(r"argument --n.*invalid int value: '1e5'")),
    Row("n_too_small_to_certify", "api",
        lambda w: parameter_problems(d=D, e=50, k=1, n=5, alpha=0.001, num_classes=10),
        Accepted(lambda problems: any("use n >= 14" in p for p in problems))),
    Row("n_too_small_to_certify", "api",
        certify_tiny(n=5, alpha=0.001),
        Warned(r"n = 5 samples can never certify at alpha = 0.001.*use n >= 14")),
    Row("n_too_small_to_certify", "evaluate", [*EVAL, "--n", "5"],
        Warned(r"n = 5 samples can never certify.*use n >= \d+")),
    Row("n_too_small_to_certify", "certify-page", AppInput(query={"n": "3"}),
        Refused(r"n = 3 samples can never certify at alpha = 0.001.*use n >= \d+")),
    Row("n_too_small_to_certify", "what-if-page", AppInput("pages/what_if.py", state={"wi-n": 3}),
        Refused(r"n = 3 samples can never certify.*use n >= \d+")),
    Row("n_absurdly_large_from_a_link", "certify-page", AppInput(query={"n": str(10**12)}),
        Refused(r"n .*at most")),
    Row("alpha_outside_0_1", "evaluate", [*EVAL, "--alpha", "1.5"], Refused(r"--alpha must be in \(0, 1\), got 1.5")),
    Row("alpha_nan", "evaluate", [*EVAL, "--alpha", "nan"], Refused(r"--alpha must be in \(0, 1\), got nan")),
    Row("alpha_nan", "api", lambda w: certificate_from_counts(COUNTS, d=D, e=50, k=1, alpha=math.nan),
        Refused(r"^alpha must be a number in the open interval \(0, 1\), got nan")),
    Row("seed_outside_range", "evaluate", [*EVAL, "--seed", "-1"], Refused(r"--seed must be in \[0, 2\*\*63\)")),
    Row("seed_not_an_integer", "api", certify_tiny(seed=1.5),
        Refused(r"^seed must be an integer \[0, ")),
    Row("dataset_unknown", "evaluate", [*EVAL, "--dataset", "mnist"], Refused(r"invalid choice: 'mnist'")),
    Row("indices_out_of_range", "evaluate", [*EVAL, "--indices", "-1"], Refused(r"--indices \[-1\] out of range")),
    # ---- training options
    Row("arch_unknown", "train", [*TRAIN, "--arch", "resnet999"], Refused(r"--arch must be one of resnet20, ")),
    Row("learning_rate_not_positive", "train", [*TRAIN, "--lr", "-1"], Refused(r"--lr must be > 0")),
    Row("batch_size_below_1", "train", [*TRAIN, "--batch-size", "0"], Refused(r"--batch-size must be >= 1, got 0")),
    Row("threads_negative", "train", [*TRAIN, "--threads", "-1"], Refused(r"--threads must be >= 0, got -1")),
    Row("validation_split_too_large", "train", [*TRAIN, "--val-size", "500"],
        Refused(r"--val-size 500 leaves no training or validation images of 120")),
    Row("init_for_another_arch", "train", [*TRAIN, "--arch", "resnet56", "--init", "clean-resnet20"],
        Refused(r"--init clean-resnet20 needs --arch resnet20, got resnet56")),
    Row("resume_without_state", "train", [*TRAIN, "--resume"], Refused(r"--resume: neither .* exists")),
    # ---- label counts
    Row("counts_nan", "api", lambda w: certificate_from_counts([np.nan, 3.0, 2.0], d=D, e=50, k=1, alpha=0.01),
        Refused(r"^counts must be non-negative integers \(found NaN")),
    Row("counts_wrong_length", "api", lambda w: check_counts(COUNTS[:9], length=10),
        Refused(r"^counts must have one entry per class \(10\), got 9")),
    Row("counts_negative", "what-if-page",
        AppInput("pages/what_if.py", state={"wi-counts-10-0": {"edited_rows": {1: {"count": -5}}, "added_rows": [],
                                                                "deleted_rows": []}}),
        Refused(r"counts must be non-negative integers \(found a negative count\)")),
    Row("counts_all_zero", "what-if-page",
        AppInput("pages/what_if.py", state={"wi-counts-10-0": {"edited_rows": {i: {"count": 0} for i in range(10)},
                                                                "added_rows": [], "deleted_rows": []}}),
        Refused(r"All counts are zero: enter at least one positive count")),
    # ---- images given to the API
    Row("image_nan_pixel", "api",
        certify_tiny(IMG.clone().index_put_((torch.tensor(0),) * 3, torch.tensor(math.nan))),
        Refused(r"^image values must lie in \[0, 1\] \(found a value outside it, or NaN\)")),
    Row("image_4_channels", "api", certify_tiny(torch.rand(4, 32, 32)),
        Refused(r"^image of shape \(4, 32, 32\) does not fit the model.*\(3, H, W\) for RGB")),
    Row("image_1_channel_tensor", "api", certify_tiny(torch.rand(1, 32, 32)),
        Refused(r"^image of shape \(1, 32, 32\) does not fit the model")),
    Row("image_other_size_than_trained", "api",  # a fully convolutional model takes it: certified at d = 64 x 64
        certify_tiny(torch.rand(3, 64, 64)),
        Accepted(lambda cert: cert.d == 4096)),
    # ---- uploaded files
    Row("upload_not_an_image", "certify-page", AppInput(upload=("notes.png", b"%PDF-1.4 no image" * 9, "image/png")),
        Refused(r"That file cannot be used: uploaded file is not a readable image")),
    Row("upload_truncated_jpeg", "certify-page", AppInput(upload=("cut.jpg", NOISE_JPEG[: len(NOISE_JPEG) // 2],
                                                                  "image/jpeg")),
        Refused(r"uploaded file is not a readable image \(unknown format, corrupted or truncated\)")),
    Row("upload_decompression_bomb", "certify-page", AppInput(upload=("bomb.png", png_header(30_000, 30_000),
                                                                      "image/png")),
        Refused(r"That file cannot be used: .*at most 50,000,000 pixels are accepted")),
    Row("upload_decompression_bomb", "decoder", lambda: load_uploaded_image(png_header(8_000, 8_000), "cifar10"),
        Refused(r"uploaded image is 8000x8000 pixels; at most 50,000,000 are accepted")),
    Row("upload_10000x10000", "decoder", ten_thousand_squared, Accepted(bool)),
    Row("upload_too_many_bytes", "decoder", lambda: load_uploaded_image(b"\0" * (MAX_UPLOAD_BYTES + 1), "cifar10"),
        Refused(rf"uploaded file is {MAX_UPLOAD_BYTES + 1} bytes; at most {MAX_UPLOAD_BYTES} are accepted")),
    Row("upload_float_pixels_nan_inf", "decoder", lambda: load_uploaded_image(float_tiff(), "cifar10"),
        Accepted(is_model_input)),
    Row("upload_1x1", "certify-page", AppInput(upload=("one.png", encode(Image.new("RGB", (1, 1), (9, 99, 199))),
                                                       "image/png")), Accepted(lambda at: uploaded(at))),
    Row("upload_greyscale", "certify-page", AppInput(upload=("grey.png", encode(Image.new("L", (40, 30), 77)),
                                                             "image/png")), Accepted(lambda at: uploaded(at))),
    Row("upload_rgba", "certify-page", AppInput(upload=("alpha.png", encode(Image.new("RGBA", (33, 20),
                                                                                       (10, 20, 30, 40))),
                                                        "image/png")), Accepted(lambda at: uploaded(at))),
    # ---- uploads for the ImageNet model (224x224; "other" holds a checkpoint trained for ImageNet): accepted, with a
    # note on what decoding did to them
    Row("imagenet_upload_greyscale", "certify-page", IMAGENET_UPLOAD(upload=(
        "grey.png", encode(Image.new("L", (300, 200), 77)), "image/png")),
        Warned(r"greyscale image: its grey level is copied to the three colour channels")),
    Row("imagenet_upload_cmyk", "certify-page", IMAGENET_UPLOAD(upload=(
        "print.jpg", encode(Image.new("CMYK", (300, 200), (0, 50, 100, 0)), "JPEG"), "image/jpeg")),
        Warned(r"A CMYK image: converted to RGB")),
    Row("imagenet_upload_16x16", "certify-page", IMAGENET_UPLOAD(upload=(
        "icon.png", encode(Image.new("RGB", (16, 16), (9, 99, 199))), "image/png")),
        Warned(r"Only 16 pixels on its short side: enlarged 16x to 224x224")),
    Row("imagenet_upload_10000x10", "certify-page", IMAGENET_UPLOAD(upload=(
        "strip.png", encode(Image.new("RGB", (10_000, 10), (9, 99, 199))), "image/png")),
        Warned(r"A 10,000x10 image: the centre crop keeps its middle 9x9 pixels, 0\.08% of it")),
    Row("upload_16_bit", "certify-page",
        AppInput(upload=("deep.png", encode(Image.fromarray(np.full((32, 32), 40_000, np.uint16))), "image/png")),
        Accepted(lambda at: uploaded(at))),
    # ---- checkpoints
    Row("checkpoint_missing", "evaluate", [*EVAL, "--checkpoint", "{root}/nope.pt"],
        Refused(r"error: checkpoint '.*nope.pt' does not exist")),
    Row("checkpoint_truncated", "evaluate", [*EVAL, "--checkpoint", "{bad}/truncated.pt"],
        Refused(r"error: .*truncated.pt' is not a readable checkpoint \(truncated, corrupted, or unsafe pickle\)")),
    Row("checkpoint_not_a_checkpoint", "evaluate", [*EVAL, "--checkpoint", "{bad}/bare_state_dict.pt"],
        Refused(r"is not a certcore checkpoint \(expected metadata \+ state_dict\)")),
    Row("checkpoint_tampered", "evaluate", [*EVAL, "--checkpoint", "{bad}/tampered.pt"],
        Refused(r"weights do not match the SHA-256 in the metadata \(tampered or corrupted\)")),
    Row("checkpoint_other_dataset", "certify-page", AppInput(checkpoints="other"),
        Warned(r"No CIFAR10 checkpoint in")),
    Row("checkpoint_corrupt_in_folder", "certify-page", AppInput(checkpoints="bad"),
        Warned(r"No CIFAR10 checkpoint in")),
    Row("checkpoint_corrupt_in_folder", "certify-page", AppInput(checkpoints="bad"),
        Warned(r"truncated\.pt")),
    # ---- results files (re-certified with --from-counts)
    Row("results_corrupt_line", "evaluate", from_counts("corrupt_line.jsonl"),
        Refused(r"corrupt_line.jsonl:2: corrupt line \(not JSON")),
    Row("results_counts_not_summing_to_n", "evaluate", from_counts("counts_not_n.jsonl"),
        Refused(r"counts_not_n.jsonl:2: counts must be non-negative integers summing to n=20")),
    Row("results_negative_count", "evaluate", from_counts("negative_count.jsonl"),
        Refused(r"negative_count.jsonl:1: counts must be non-negative integers summing to n=20")),
    Row("results_all_zero_counts", "evaluate", from_counts("all_zero.jsonl"),
        Refused(r"all_zero.jsonl:1: counts must hold at least 2 labels and n >= 1 samples")),
    Row("results_label_out_of_range", "evaluate", from_counts("label_out_of_range.jsonl"),
        Refused(r"label_out_of_range.jsonl:1: label must be an integer in \[0, 9\]")),
    Row("results_counts_wrong_length", "evaluate", from_counts("wrong_length.jsonl"),
        Refused(r"wrong_length.jsonl:2: 9 label counts where line 1 has 10")),
    Row("results_not_text", "evaluate", from_counts("binary.jsonl"),
        Refused(r"binary.jsonl:1: corrupt line \(not JSON")),
    Row("results_missing", "evaluate", from_counts("missing.jsonl"),
        Refused(r"missing.jsonl: no such results file")),
    Row("results_corrupt_line", "accuracy-page", AppInput("pages/accuracy.py", results="corrupt_line.jsonl"),
        Refused(r"corrupt_line.jsonl cannot be read: .*corrupt_line.jsonl:2: corrupt line")),
    Row("results_all_zero_counts", "accuracy-page", AppInput("pages/accuracy.py", results="all_zero.jsonl"),
        Refused(r"all_zero.jsonl cannot be read: .*:1: counts must hold at least 2 labels and n >= 1 samples")),
    Row("results_counts_wrong_length", "accuracy-page", AppInput("pages/accuracy.py", results="wrong_length.jsonl"),
        Refused(r"wrong_length.jsonl cannot be read: .*:2: 9 label counts where line 1 has 10")),
    Row("results_out_is_the_input", "evaluate", ["--from-counts", "{results}", "--out", "{results}"],
        Refused(r"is the --from-counts file itself; choose another --out")),
    # ---- query parameters (links)
    Row("query_garbage_values", "certify-page",
        AppInput(query={"e": "abc", "k": "0", "n": "-5", "alpha": "2", "seed": "-1", "dataset": "mnist",
                        "image": "../../etc/passwd", "checkpoint": "/etc/shadow"}),
        Ignored({"e": lambda v: v == 50, "k": lambda v: 1 <= v <= 9, "n": lambda v: v >= 1,
                 "alpha": lambda v: 0 < v < 1, "seed": lambda v: v >= 0,
                 "dataset": lambda v: v in ("cifar10", "CIFAR10"),  # AppTest reports the radio's formatted label
                 "image": lambda v: v.startswith("cifar10-test-"), "checkpoint": lambda v: v == "tiny"})),
    Row("query_garbage_values", "certify-page", AppInput(query={"e": "abc", "alpha": "2"}),
        Warned(r"\be\b.*abc|alpha.*\b2\b")),
    Row("query_number_overflow", "certify-page", AppInput(query={"e": "1e400"}),
        Warned(r"\be\b")),
]


def test_the_catalogue_covers_at_least_30_kinds_across_all_layers() -> None:
    kinds = {row.kind for row in ROWS}
    assert len(kinds) >= 30, sorted(kinds)
    assert {row.layer for row in ROWS} == {"api", "decoder", "evaluate", "train", "certify-page", "what-if-page",
                                          "accuracy-page"}


# ------------------------------------------------------------------------------------------------ drivers


def uploaded(at: AppTest) -> bool:
    """The upload was decoded: the page asks for its true label (shown only for a usable image)."""
    return any(box.label.startswith("True label") for box in at.selectbox)


def run_api(row: Row, world: dict[str, Path]) -> None:
    call = (lambda: row.input(world)) if row.layer == "api" else row.input
    if isinstance(row.expect, Refused):
        with pytest.raises(row.expect.exception, match=row.expect.pattern):
            call()
    elif isinstance(row.expect, Warned):
        with pytest.warns(UserWarning, match=row.expect.pattern):
            call()
    else:
        assert row.expect.check(call())


def run_cli(row: Row, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [a.format(**{k: str(v) for k, v in world.items()}, tmp=tmp_path) for a in row.input]
    main = evaluate.main if row.layer == "evaluate" else train.main
    threads = torch.get_num_threads()
    try:
        if isinstance(row.expect, Warned):
            with pytest.warns(UserWarning, match=row.expect.pattern):
                main(argv)
            return
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        torch.set_num_threads(threads)
    code = exit_info.value.code
    message = f"{code if isinstance(code, str) else ''}\n{capsys.readouterr().err}"
    assert code not in (0, None), message
    assert re.search(row.expect.pattern, message), message
    assert "Traceback" not in message


def run_app(row: Row, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    spec: AppInput = row.input
    monkeypatch.setenv("CERTCORE_CHECKPOINTS", str(world[spec.checkpoints]))
    results = tmp_path / "results"
    results.mkdir()
    if spec.results is not None:
        shutil.copy(world["root"] / spec.results, results / spec.results)
    monkeypatch.setenv("CERTCORE_RESULTS", str(results))
    at = AppTest.from_file(str(REPO / spec.page), default_timeout=60)
    for key, value in spec.query.items():
        at.query_params[key] = value
    for key, value in {**spec.state, **({"source": "Upload"} if spec.upload else {})}.items():
        at.session_state[key] = value
    at.run()
    if spec.upload is not None:
        at.file_uploader[0].set_value(spec.upload).run()
    return at


def check_app(row: Row, at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    if isinstance(row.expect, Refused):
        assert any(re.search(row.expect.pattern, m) for m in errors), errors
        return
    assert not errors, errors
    if isinstance(row.expect, Warned):
        shown = [x.value for x in (*at.warning, *at.info)]
        assert any(re.search(row.expect.pattern, m) for m in shown), shown
    elif isinstance(row.expect, Ignored):
        got = {key: at.session_state[key] for key in row.expect.fallbacks}
        assert all(ok(got[key]) for key, ok in row.expect.fallbacks.items()), got
    else:
        assert row.expect.check(at)


@pytest.mark.parametrize("row", [row.param() for row in ROWS])
def test_bad_input(_one_thread, row: Row, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                   monkeypatch: pytest.MonkeyPatch, fake_sampling: list[dict[str, Any]]) -> None:
    if row.layer in ("api", "decoder"):
        run_api(row, world)
    elif row.layer in ("evaluate", "train"):
        run_cli(row, world, tmp_path, capsys)
    else:
        at = run_app(row, world, monkeypatch, tmp_path)
        check_app(row, at)
        if row.kind == "n_absurdly_large_from_a_link":
            assert all(call["n"] <= 10**7 for call in fake_sampling), fake_sampling


def test_results_file_made_by_the_cli_is_valid(world: dict[str, Path]) -> None:
    """The base of the broken results files is itself accepted (so each variant fails for its one defect)."""
    assert [r["index"] for r in read_results(world["results"])] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ elsewhere

ELSEWHERE = {  # kind -> tests that already cover it at some layer (not repeated above)
    "e_below_range": ["tests/test_sampling.py::test_invalid_parameters_are_refused_with_their_name_and_range",
                      "tests/test_ablation.py::test_e_outside_1_to_d_is_refused"],
    "e_above_d": ["tests/test_certify.py::test_invalid_parameters_are_refused_before_sampling",
                  "tests/test_radius.py::test_bad_input_names_the_parameter",
                  "tests/test_app_certify.py::test_bad_inputs_are_explained",
                  "tests/test_app_pages.py::test_what_if_imagenet_preset_and_bad_inputs"],
    "e_other_than_trained": ["tests/test_checkpoints.py::test_mismatch_raises",
                             "tests/test_evaluate.py::test_bad_inputs"],
    "k_below_1": ["tests/test_certify.py::test_invalid_parameters_are_refused_before_sampling"],
    "k_at_least_classes": ["tests/test_certify.py::test_certificate_from_counts_validates_its_inputs",
                           "tests/test_evaluate.py::test_bad_inputs",
                           "tests/test_app_certify.py::test_bad_inputs_are_explained",
                           "tests/test_app_pages.py::test_what_if_imagenet_preset_and_bad_inputs"],
    "n_too_small_to_certify": ["tests/test_app_certify.py::test_bad_inputs_are_explained"],
    "n_below_1": ["tests/test_certify.py::test_invalid_parameters_are_refused_before_sampling"],
    "alpha_outside_0_1": ["tests/test_radius.py::test_bad_input_names_the_parameter",
                          "tests/test_certify.py::test_invalid_parameters_are_refused_before_sampling"],
    "counts_negative": ["tests/test_radius.py::test_bad_input_names_the_parameter"],
    "counts_all_zero": ["tests/test_radius.py::test_bad_input_names_the_parameter"],
    "counts_wrong_length": ["tests/test_radius.py::test_bad_input_names_the_parameter"],
    "image_nan_pixel": ["tests/test_sampling.py::test_invalid_parameters_are_refused_with_their_name_and_range"],
    "image_values_above_1": ["tests/test_certify.py::test_invalid_parameters_are_refused_before_sampling"],
    "image_2d": ["tests/test_sampling.py::test_invalid_parameters_are_refused_with_their_name_and_range"],
    "image_integer_dtype": ["tests/test_sampling.py::test_invalid_parameters_are_refused_with_their_name_and_range"],
    "label_out_of_range": ["tests/test_certify.py::test_invalid_parameters_are_refused_before_sampling"],
    "model_in_training_mode": ["tests/test_sampling.py::test_a_model_in_training_mode_is_refused_before_it_runs"],
    "upload_not_an_image": ["tests/test_data.py::test_upload_errors"],
    "upload_truncated_png": ["tests/test_data.py::test_upload_errors"],
    "upload_empty": ["tests/test_data.py::test_upload_errors"],
    "upload_decompression_bomb": ["tests/test_data.py::test_upload_refuses_absurd_dimensions"],
    "upload_1x1": ["tests/test_data.py::test_upload_any_mode_and_size"],
    "upload_16_bit": ["tests/test_data.py::test_upload_16bit_is_scaled_not_clipped"],
    "upload_rgba": ["tests/test_data.py::test_upload_transparency_becomes_white"],
    "checkpoint_other_dataset": ["tests/test_checkpoints.py::test_mismatch_raises",
                                 "tests/test_evaluate.py::test_bad_inputs"],
    "checkpoint_truncated": ["tests/test_checkpoints.py::test_missing_and_truncated_files"],
    "checkpoint_tampered": ["tests/test_checkpoints.py::test_tampered_weights_are_detected"],
    "checkpoint_wrong_arch": ["tests/test_checkpoints.py::test_wrong_arch_in_metadata"],
    "checkpoint_malicious_pickle": ["tests/test_checkpoints.py::test_malicious_pickle_is_refused_and_not_run",
                                    "tests/test_safety.py::test_malicious_checkpoint_is_refused_everywhere"],
    "results_corrupt_line": ["tests/test_results.py::test_corrupt_middle_line_names_file_and_line",
                             "tests/test_evaluate.py::test_corrupt_middle_line_is_refused"],
    "results_other_parameters": ["tests/test_evaluate.py::test_mismatching_parameters_are_refused",
                                 "tests/test_results.py::test_mixed_parameters_and_missing_keys_are_refused"],
    "cifar_pickle_that_runs_code": ["tests/test_data.py::test_torchvision_cifar10_root_refuses_code"],
}


def test_elsewhere_still_exists() -> None:
    for kind, refs in ELSEWHERE.items():
        for ref in refs:
            path, name = ref.split("::")
            assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{kind}: {ref} is gone"
    assert len({row.kind for row in ROWS} | set(ELSEWHERE)) >= 40
