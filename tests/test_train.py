"""Trainer: kill-and-resume equals an uninterrupted run; ImageFolder (ImageNet) path; torchrun DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from certcore.models import training as train
from certcore.models.checkpoints import load_checkpoint
from tests.data_helpers import bundled_cifar10_arrays, write_imagefolder, write_torchvision_cifar_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout CIFAR-10 root with 144 images (120 train, 24 test) from the bundled samples."""
    root = tmp_path_factory.mktemp("cifar")
    x, y = bundled_cifar10_arrays()
    write_torchvision_cifar_root(root, np.concatenate([x, x[:44, :, ::-1]]), np.concatenate([y, y[:44]]))
    return root


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-root", str(root), "--arch", "resnet20", "--e", "40", "--epochs", "2", "--batch-size", "16",
        "--val-size", "24", "--eval-repeats", "1", "--threads", "1", "--log-every", "100", "--device", "cpu",
        "--out", str(out / "ck.pt"), "--state", str(out / "run" / "state.pt"), *extra,
    ]  # fmt: skip


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a / "ck.pt"), weights(b / "ck.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    ma, mb = (load_checkpoint(p / "ck.pt")[1] for p in (a, b))
    assert ma["accuracies"] == mb["accuracies"]
    assert [h["val_ablated_acc"] for h in ma["history"]] == [h["val_ablated_acc"] for h in mb["history"]]


DISTILL = ("--distill", "clean-resnet20", "--distill-weight", "0.7", "--lr-schedule", "constant")


@pytest.mark.parametrize("extra", [(), DISTILL], ids=["plain", "distill-constant-lr"])
def test_kill_and_resume_mid_epoch_equals_uninterrupted(
    cifar_root: Path, tmp_path: Path, extra: tuple[str, ...], request: pytest.FixtureRequest
) -> None:
    if extra:
        request.getfixturevalue("shared_data")  # the teacher's clean weights; skips without the offline folder
    full, cut = tmp_path / "full", tmp_path / "cut"
    meta = train.main(tiny_args(cifar_root, full, *extra))
    assert meta["training"]["train_size"] == 96 and meta["num_classes"] == 10 and len(meta["history"]) == 2
    assert 0 <= meta["accuracies"]["val_ablated"] <= 1 and "eval500_ablated" not in meta["accuracies"]
    distill = meta["training"]["distillation"]
    if extra:
        assert (distill["teacher"], distill["weight"], distill["temperature"]) == ("clean-resnet20", 0.7, 4.0)
    else:
        assert distill == "none"
    # 6 steps per epoch; state saved at steps 4, 6 (end of epoch 1) and 8; "killed" after step 10.
    copy = cut / "state-copy.pt"
    args = tiny_args(cifar_root, cut, "--save-every-steps", "4", "--state-copy", str(copy), *extra)
    assert train.main([*args, "--stop-after-steps", "10"]) is None
    assert not (cut / "ck.pt").exists()
    saved = torch.load(copy, weights_only=True)["position"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 2, 8)
    (cut / "run" / "state.pt").unlink()  # resume from the committable copy
    train.main([*args, "--resume"])
    assert_same_run(full, cut)


@pytest.mark.slow
def test_resume_at_epoch_boundary_equals_uninterrupted(cifar_root: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.main(tiny_args(cifar_root, full))
    assert train.main([*tiny_args(cifar_root, cut), "--stop-after-steps", "8"]) is None
    assert torch.load(cut / "run" / "state.pt", weights_only=True)["position"]["step_in_epoch"] == 0
    train.main([*tiny_args(cifar_root, cut), "--resume"])
    assert_same_run(full, cut)


def test_resume_refuses_changed_options(cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="neither"):
        train.main([*tiny_args(cifar_root, tmp_path), "--resume"])
    args = [*tiny_args(cifar_root, tmp_path), "--save-every-steps", "2"]
    assert train.main([*args, "--stop-after-steps", "3"]) is None
    with pytest.raises(SystemExit, match="options differ.*lr"):
        train.main([*args, "--lr", "0.2", "--resume"])
    with pytest.raises(SystemExit, match="options differ.*lr_schedule"):  # an option the saved config lacks
        train.main([*args, "--lr-schedule", "constant", "--resume"])


def test_resume_refuses_changed_distillation(cifar_root: Path, tmp_path: Path, shared_data: Path) -> None:
    args = [*tiny_args(cifar_root, tmp_path, *DISTILL), "--save-every-steps", "2"]
    assert train.main([*args, "--stop-after-steps", "3"]) is None
    with pytest.raises(SystemExit, match="options differ.*distill_temperature"):
        train.main([*args, "--distill-temperature", "2", "--resume"])
    with pytest.raises(SystemExit, match="options differ.*distill"):
        train.main([*tiny_args(cifar_root, tmp_path, "--lr-schedule", "constant"), "--resume"])


def test_distillation_loss_mixes_hard_and_soft_targets() -> None:
    s, t, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(train.distillation_loss(s, t, y, 0.0, 4.0), ce)
    assert torch.allclose(train.distillation_loss(s, s, y, 1.0, 4.0), torch.tensor(0.0), atol=1e-6)
    p_t, log_p_s = torch.softmax(t / 2, 1), torch.log_softmax(s / 2, 1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    torch.testing.assert_close(train.distillation_loss(s, t, y, 0.25, 2.0), 0.75 * ce + 0.25 * 4 * kl)


def test_random_crop_flip_is_a_crop_of_the_padded_image() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = train.random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        crops = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_smoke(cifar_root: Path, tmp_path: Path) -> None:
    """One epoch on the GPU (generators and data on the device); bit-identity is only claimed on CPU."""
    args = [a if a != "cpu" else "cuda" for a in tiny_args(cifar_root, tmp_path, "--epochs", "1")]
    meta = train.main(args)
    assert meta["device"] == torch.cuda.get_device_name() and len(meta["history"]) == 1


@pytest.mark.slow
def test_imagefolder_resnet50_smoke(tmp_path: Path) -> None:
    """One ResNet-50 step on a 6-image ImageFolder: the ImageNet path runs end to end (no accuracy claim)."""
    root = tmp_path / "imagenet"
    write_imagefolder(root)
    meta = train.main([
        "--dataset", "imagenet", "--arch", "resnet50", "--data-root", str(root), "--e", "1000", "--epochs", "1",
        "--batch-size", "4", "--val-size", "2", "--eval-repeats", "1", "--workers", "0", "--threads", "1",
        "--out", str(tmp_path / "in.pt"), "--state", str(tmp_path / "state.pt"),
    ])  # fmt: skip
    assert meta["num_classes"] == 1000 and len(meta["class_names"]) == 1000 and meta["arch"] == "resnet50"
    model, _ = load_checkpoint(tmp_path / "in.pt", dataset="imagenet", e=1000)
    assert model.net.conv1.in_channels == 6


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(cifar_root: Path, tmp_path: Path) -> None:
    """Two gloo processes: training, a mid-run kill and resume, one checkpoint written by rank 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "certcore.train",
    ]
    # torchrun's own parser rejects "--e" as an ambiguous abbreviation of its options: use the "--keep" alias.
    args = ["--keep" if a == "--e" else a for a in tiny_args(cifar_root, tmp_path, "--save-every-steps", "2")]
    first = subprocess.run([*base, *args, "--stop-after-steps", "5"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert len(state["generators"]) == 2 and json.loads(state["config"])["world_size"] == 2
    second = subprocess.run([*base, *args, "--resume"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    _, meta = load_checkpoint(tmp_path / "ck.pt")
    assert meta["training"]["world_size"] == 2 and len(meta["history"]) == 2


def test_snapshot_exports_an_unfinished_run_marked_as_such(cifar_root: Path, tmp_path: Path) -> None:
    args = tiny_args(cifar_root, tmp_path, "--bn-batches", "3")
    assert train.main([*args, "--stop-after-steps", "7"]) is None  # killed after the first epoch's state (6 steps)
    meta = train.main([*args, "--resume", "--snapshot"])
    assert meta["training"]["status"] == "snapshot at step 6 of 12 (1 of 2 epochs done; unfinished)"
    assert len(meta["history"]) == 1
    model, loaded = load_checkpoint(tmp_path / "ck.pt")
    assert loaded["training"]["status"] == meta["training"]["status"]
    with pytest.raises(SystemExit, match="--snapshot needs --resume"):
        train.main([*args, "--snapshot"])
    finished = train.main([*args, "--resume"])
    assert finished["training"]["status"] == "finished" and len(finished["history"]) == 2


def test_init_from_a_checkpoint_fine_tunes_it_at_another_e(cifar_root: Path, tmp_path: Path) -> None:
    train.main(tiny_args(cifar_root, tmp_path / "e40", "--epochs", "1"))
    source = tmp_path / "e40" / "ck.pt"
    cpu = train.Dist(0, 1, torch.device("cpu"))
    args = train.parse_args(tiny_args(cifar_root, tmp_path / "e20", "--e", "20", "--init", str(source)))
    start = train.build(args, 10, cpu).state_dict()
    saved = weights(source)
    assert start.keys() == saved.keys() and all(torch.equal(start[k], saved[k]) for k in saved)
    meta = train.main(tiny_args(cifar_root, tmp_path / "e20", "--e", "20", "--epochs", "1", "--init", str(source)))
    source_sha = json.loads(torch.load(source, weights_only=True)["metadata"])["weights_sha256"]
    assert meta["e"] == 20 and meta["training"]["init"] == f"{source} (weights sha256 {source_sha})"
    with pytest.raises(SystemExit, match="holds a resnet20, but --arch is resnet56"):
        train.build(train.parse_args(tiny_args(cifar_root, tmp_path, "--arch", "resnet56", "--init", str(source))),
                    10, cpu)
    with pytest.raises(SystemExit, match="--init: checkpoint .* does not exist"):
        train.build(train.parse_args(tiny_args(cifar_root, tmp_path, "--init", str(tmp_path / "none.pt"))), 10, cpu)
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(cifar_root, tmp_path, "--init", "imagenet-weights"))


def test_generator_states_from_another_device_type_reseed_instead_of_failing() -> None:
    """A CPU state restores exactly; a CUDA-sized (16-byte Philox) state cannot be set on a CPU generator, so the
    generators are reseeded from their seeds and the step: different per generator and per step, reproducible."""
    saved = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    for g in saved:
        torch.rand(5, generator=g)
    exact = [torch.Generator(), torch.Generator()]
    assert not train.restore_generators(exact, [g.get_state() for g in saved], [10, 11], 7)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(exact, saved, strict=True))

    cuda_like = [torch.zeros(16, dtype=torch.uint8)] * 2

    def reseeded(step: int) -> list[float]:
        gens = [torch.Generator(), torch.Generator()]
        assert train.restore_generators(gens, cuda_like, [10, 11], step)
        return [torch.rand(1, generator=g).item() for g in gens]

    first = reseeded(7)
    assert first == reseeded(7) and first[0] != first[1] and first != reseeded(8)
