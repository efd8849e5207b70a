"""The ImageNet distillation trainer: a resumed run equals an uninterrupted one; the export is a valid checkpoint.

Runs on a tiny fake train pool (random-noise JPEGs) written to a temporary folder, so no shared data is needed and
no real image is trained on.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from certcore.models import imagenet_training
from certcore.models.checkpoints import load_checkpoint

LABELS = (1, 2, 5, 15)  # two training images, two held out (classes 5 mod 10)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    folder = root / "imagenet" / "train_pool"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "class_index"])
        for label in LABELS:
            name = f"{label:03d}_fake.jpg"
            Image.fromarray(rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)).save(folder / "images" / name)
            writer.writerow([name, label])
    return root


def run(root: Path, tmp: Path, name: str, *extra: str) -> None:
    imagenet_training.main([
        "--data-root", str(root), "--state", str(tmp / f"{name}.state.pt"), "--out", str(tmp / f"{name}.pt"),
        "--images-per-step", "2", "--masks-per-image", "2", "--total-steps", "4", "--warmup-steps", "2",
        "--eval-every", "2", "--eval-repeats", "1", "--export-repeats", "1", "--bn-batches", "1",
        "--device", "cpu", *extra,
    ])  # fmt: skip


def test_split_holds_out_classes_five_mod_ten(fake_root: Path) -> None:
    train, held = imagenet_training.load_pool(fake_root)
    assert train.labels.tolist() == [1, 2] and held.labels.tolist() == [5, 15]


def test_resumed_run_equals_uninterrupted_run(fake_root: Path, tmp_path: Path) -> None:
    run(fake_root, tmp_path, "whole")
    run(fake_root, tmp_path, "cut", "--stop-at-step", "2")
    assert not (tmp_path / "cut.pt").exists()  # stopped early: state only
    with pytest.raises(SystemExit, match="exists"):
        run(fake_root, tmp_path, "cut")  # a fresh run refuses to overwrite a state
    with pytest.raises(SystemExit, match="options differ"):
        run(fake_root, tmp_path, "cut", "--resume", "--lr", "1e-3")
    run(fake_root, tmp_path, "cut", "--resume")
    whole = torch.load(tmp_path / "whole.state.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut.state.pt", weights_only=True)
    assert whole["step"] == cut["step"] == 4
    for part in ("model", "ema"):
        for key, value in whole[part].items():
            assert torch.equal(value, cut[part][key]), f"{part}.{key}"
    held = [[(h["step"], h["heldout"]) for h in json.loads(s["history"])] for s in (whole, cut)]
    assert held[0] == held[1] and len(held[0]) == 2
    for a, b in zip(whole["generators"], cut["generators"], strict=True):
        assert torch.equal(a, b)
    model, meta = load_checkpoint(tmp_path / "cut.pt", dataset="imagenet", e=1000)
    assert meta["arch"] == "effnetlite0" and meta["training"]["steps_done"] == 4
    assert "Apache" in meta["pretrained_weights"] and meta["training"]["status"] == "finished"
    floats = [v for v in torch.load(tmp_path / "cut.pt", weights_only=True)["state_dict"].values()
              if v.is_floating_point()]
    assert all((v.dtype == torch.float16) == (v.ndim >= 2) for v in floats)
    assert not model.training


def test_mix_blends_each_image_with_another_of_the_batch() -> None:
    x = torch.stack([torch.full((3, 4, 4), float(v)) for v in (0.0, 1.0, 10.0)])
    mixed = imagenet_training.mix(x, torch.Generator().manual_seed(0))
    for image in mixed:
        value = float(image[0, 0, 0])
        assert torch.all(image == value)  # one weight per image, the same at every pixel
        assert 0.0 <= value <= 10.0
    assert not torch.equal(mixed, x)


def test_crops_take_the_cifar_share_and_mix_them(fake_root: Path) -> None:
    args = imagenet_training.parse_args(["--images-per-step", "4", "--cifar-fraction", "0.5", "--mixup", "1"])
    trainer = imagenet_training.Trainer.__new__(imagenet_training.Trainer)  # only the parts crops() uses
    trainer.args, trainer.aug = args, torch.Generator().manual_seed(0)
    pool, _ = imagenet_training.load_pool(fake_root)
    extra = imagenet_training.Pool([torch.zeros(3, 32, 32, dtype=torch.uint8)] * 3, torch.full((3,), -1), ["c"] * 3)
    x, y = trainer.crops(pool, extra)
    assert x.shape == (4, 3, 224, 224) and y.tolist()[2:] == [-1, -1] and set(y.tolist()[:2]) <= {1, 2}
    unmixed = imagenet_training.parse_args(["--images-per-step", "4", "--cifar-fraction", "0.5"])
    trainer.args, trainer.aug = unmixed, torch.Generator().manual_seed(0)
    plain, _ = trainer.crops(pool, extra)
    assert torch.all(plain[2:] == 0) and not torch.all(x[2:] == 0)  # black CIFAR stand-ins, brightened by mixing


def test_trivial_augment_is_seeded_by_the_generator_and_leaves_global_randomness_alone() -> None:
    x = torch.rand(6, 3, 32, 32).mul(255).round().div(255)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = imagenet_training.trivial_augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, imagenet_training.trivial_augment(x, torch.Generator().manual_seed(7)))
    assert a.shape == x.shape and a.dtype == x.dtype and 0 <= a.min() and a.max() <= 1
    others = [imagenet_training.trivial_augment(x, torch.Generator().manual_seed(s)) for s in range(8, 11)]
    assert any(not torch.equal(a, b) for b in others)
    assert sum(not torch.equal(a[i], x[i]) for i in range(len(x))) >= 1  # some images were changed


def test_augment_option_is_recorded_and_resumes(fake_root: Path, tmp_path: Path) -> None:
    run(fake_root, tmp_path, "aug", "--augment", "trivialaugment", "--stop-at-step", "2")
    with pytest.raises(SystemExit, match="options differ"):
        run(fake_root, tmp_path, "aug", "--resume")
    run(fake_root, tmp_path, "aug", "--resume", "--augment", "trivialaugment")
    _, meta = load_checkpoint(tmp_path / "aug.pt", dataset="imagenet", e=1000)
    assert meta["training"]["augment"] == "trivialaugment" and "TrivialAugmentWide" in meta["training"]["augmentation"]


@pytest.mark.parametrize("option", [["--mixup", "0.5"], ["--cifar-fraction", "0.25"]])
def test_mixing_options_need_pure_distillation(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        imagenet_training.parse_args([*option, "--distill-weight", "0.5"])
    assert "need --distill-weight 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        imagenet_training.parse_args(["--mixup", "1.5"])


def test_train_stages_keeps_the_rest_pretrained_and_feature_loss_trains(fake_root: Path, tmp_path: Path) -> None:
    run(fake_root, tmp_path, "staged", "--train-stages", "2", "--feature-weight", "1", "--stop-at-step", "2")
    trained = torch.load(tmp_path / "staged.state.pt", weights_only=True)["model"]
    start = imagenet_training.build_imagenet_model("effnetlite0", pretrained=True).state_dict()
    changed = {k for k, v in start.items() if not torch.equal(v, trained[k])}
    trainable = ("net.conv_stem", "net.bn1", "net.blocks.0.", "net.blocks.1.")
    assert changed and all(k.startswith(trainable) for k in changed)
    assert any(k.startswith("net.blocks.1.") and k.endswith("weight") for k in changed)  # reached by the feature loss


def test_staged_model_splits_forward_and_keeps_frozen_batchnorm_in_eval_mode() -> None:
    model = imagenet_training.build_imagenet_model("effnetlite0").eval()
    x = torch.rand(2, 6, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.logits_from(model.features(x, 3), 3), model(x), atol=1e-5)
    model.freeze_after(3)
    model.train()
    assert model.net.blocks[2].training and not model.net.blocks[3].training and not model.net.bn2.training
    assert not any(p.requires_grad for p in model.net.classifier.parameters())


def test_feature_weight_needs_a_stage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        imagenet_training.parse_args(["--feature-weight", "1"])
    assert "--feature-weight needs --train-stages" in capsys.readouterr().err


def test_a_state_saved_before_later_options_resumes_with_their_defaults(fake_root: Path, tmp_path: Path) -> None:
    run(fake_root, tmp_path, "old", "--stop-at-step", "2")
    state = torch.load(tmp_path / "old.state.pt", weights_only=True)
    config = json.loads(state["config"])
    for later in ("mixup", "cifar_fraction", "train_stages", "feature_weight", "augment"):
        del config[later]
    state["config"] = json.dumps(config)
    torch.save(state, tmp_path / "old.state.pt")
    assert imagenet_training.saved_config(state)["train_stages"] == 0
    with pytest.raises(SystemExit, match="options differ"):
        run(fake_root, tmp_path, "old", "--resume", "--mixup", "0.5")
    run(fake_root, tmp_path, "old", "--resume")
    assert torch.load(tmp_path / "old.state.pt", weights_only=True)["step"] == 4
