"""Builders for tiny datasets on disk (torchvision CIFAR-10 pickles, ImageNet ImageFolder) used by the tests."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np

from certcore.models.data import SAMPLES_DIR, bundled_samples, class_names


def bundled_cifar10_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 100 bundled CIFAR-10 samples as uint8 (N, 3, 32, 32) and labels (N,)."""
    samples = bundled_samples("cifar10")
    x = np.stack([(s.image * 255).round().byte().numpy() for s in samples])
    return x, np.array([s.label for s in samples])


def write_torchvision_cifar_root(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write x (N, 3, 32, 32), y (N,) as ``root/cifar-10-batches-py``: data_batch_1..5 then test_batch, N/6 each."""
    per_batch = len(x) // 6
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        entry = {"batch_label": name, "labels": y[sl].tolist(), "data": x[sl].reshape(per_batch, -1),
                 "filenames": [f"{i}.png" for i in range(per_batch)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": class_names("cifar10"), "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_imagefolder(root: Path, per_class: int = 2, classes: int = 3) -> list[int]:
    """A tiny ImageNet-style ImageFolder (wnid folders) from the bundled sample images; returns the labels used."""
    labels = []
    for path in sorted((SAMPLES_DIR / "imagenet").glob("*.jpg"))[:classes]:
        label, wnid = path.stem.split("_")
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            shutil.copy(path, root / wnid / f"{i}.JPEG")
        labels.append(int(label))
    return labels
