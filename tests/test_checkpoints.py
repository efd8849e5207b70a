"""Checkpoint format: round trip, listing, mismatch, corruption, tampering and unsafe pickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from certcore.models.architectures import build_model
from certcore.models.checkpoints import (
    CheckpointError,
    CheckpointWarning,
    checkpoint_sha256,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

META = {
    "dataset": "cifar10",
    "arch": "resnet20",
    "e": 50,
    "num_classes": 10,
    "class_names": [str(i) for i in range(10)],
    "encoding": "levine-feizi-2c",
}


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    path = tmp_path / "a.pt"
    save_checkpoint(path, model, META)
    return path, model


def test_round_trip(saved) -> None:
    path, model = saved
    loaded, meta = load_checkpoint(path, dataset="cifar10", e=50)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert meta["e"] == 50 and meta["torch_version"] == torch.__version__ and len(meta["weights_sha256"]) == 64
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), loaded(x))
    assert len(checkpoint_sha256(path)) == 64
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file


def test_save_requires_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encoding"):
        save_checkpoint(
            tmp_path / "x.pt", build_model("resnet20", 10), {k: v for k, v in META.items() if k != "encoding"}
        )


def test_mismatch_raises(saved) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError, match="dataset"):
        load_checkpoint(path, dataset="imagenet")
    with pytest.raises(CheckpointError, match="e=50"):
        load_checkpoint(path, e=10)


def test_missing_and_truncated_files(saved, tmp_path: Path) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(cut)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(build_model("resnet20", 10).state_dict(), plain)  # a bare state dict, no metadata
    with pytest.raises(CheckpointError, match="not a certcore checkpoint"):
        load_checkpoint(plain)


def test_tampered_weights_are_detected(saved, tmp_path: Path) -> None:
    path, _ = saved
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["net.linear.bias"] += 1.0
    bad = tmp_path / "tampered.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(bad)


def test_wrong_arch_in_metadata(saved, tmp_path: Path) -> None:
    path, _ = saved
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["metadata"])
    meta["arch"] = "resnet56"
    blob["metadata"] = json.dumps(meta)
    bad = tmp_path / "arch.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(bad)


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("via_torch_save", [False, True])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, via_torch_save: bool) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"metadata": "{}", "state_dict": {}, "x": _Exploit(marker)}
    if via_torch_save:
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="unsafe pickle|not a readable"):
        load_checkpoint(evil)
    with pytest.warns(CheckpointWarning):
        assert list_checkpoints(tmp_path) == []
    assert not marker.exists()


def test_list_checkpoints_skips_bad_files(saved, tmp_path: Path) -> None:
    path, _ = saved
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 10)
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(CheckpointWarning, match="broken.pt"):
        infos = list_checkpoints(tmp_path)
    assert [i.name for i in infos] == ["a"]
    assert infos[0].path == path and infos[0].metadata["arch"] == "resnet20"
