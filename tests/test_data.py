"""Data layer: class names, bundled samples, upload decoding, offline CIFAR-10 and the torchvision layouts."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from certcore.models.data import (
    SAMPLES_DIR,
    bundled_samples,
    cifar10_offline,
    cifar10_torchvision,
    class_names,
    evaluation_indices,
    imagenet_folder,
    load_uploaded_image,
)
from tests.data_helpers import bundled_cifar10_arrays, write_imagefolder, write_torchvision_cifar_root


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_class_names() -> None:
    assert class_names("cifar10") == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    names = class_names("imagenet")
    assert len(names) == 1000 and names[0] == "tench"
    with pytest.raises(ValueError, match="dataset"):
        class_names("mnist")


def test_bundled_cifar10_samples_avoid_the_evaluation_set() -> None:
    samples = bundled_samples("cifar10")
    assert len(samples) == 100
    assert all(s.test_index % 2 == 1 for s in samples)
    assert not {s.test_index for s in samples} & set(evaluation_indices())
    assert np.bincount([s.label for s in samples], minlength=10).tolist() == [10] * 10
    s = samples[0]
    assert s.image.shape == (3, 32, 32) and s.image.dtype == torch.float32
    assert 0 <= s.image.min() and s.image.max() <= 1
    assert s.class_name == class_names("cifar10")[s.label]


def test_bundled_cifar10_pixels_are_exact(shared_data: Path) -> None:
    with np.load(shared_data / "cifar10" / "cifar10_test_first1000_lossless.npz") as d:
        x, y = d["x"], d["y"]
    for s in bundled_samples("cifar10"):
        assert s.label == y[s.test_index]
        exact = torch.from_numpy(x[s.test_index]).permute(2, 0, 1)
        assert torch.equal((s.image * 255).round().to(torch.uint8), exact)


def test_bundled_imagenet_samples() -> None:
    samples = bundled_samples("imagenet")
    assert len(samples) == 100
    assert [s.label for s in samples] == list(range(0, 1000, 10))
    assert all(s.image.shape == (3, 224, 224) for s in samples)
    assert sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*")) < 5_000_000


def test_evaluation_indices() -> None:
    idx = evaluation_indices()
    assert len(idx) == 500 and idx[0] == 0 and idx[-1] == 998 and all(i % 2 == 0 for i in idx)


@pytest.mark.parametrize(
    ("mode", "fmt", "size"),
    [("RGB", "PNG", (50, 37)), ("RGB", "JPEG", (301, 199)), ("L", "PNG", (32, 32)), ("RGBA", "PNG", (7, 90)),
     ("P", "GIF", (40, 40)), ("RGB", "WEBP", (64, 48)), ("1", "BMP", (33, 33)), ("CMYK", "JPEG", (40, 30)),
     ("RGB", "PNG", (1, 1))],
)  # fmt: skip
@pytest.mark.parametrize(("dataset", "side"), [("cifar10", 32), ("imagenet", 224)])
def test_upload_any_mode_and_size(mode: str, fmt: str, size: tuple[int, int], dataset: str, side: int) -> None:
    img = Image.new(mode, size, color=1 if mode in ("1", "P") else None)
    out = load_uploaded_image(_encode(img, fmt), dataset)
    assert out.shape == (3, side, side) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1


def test_upload_16bit_is_scaled_not_clipped() -> None:
    arr = np.full((32, 32), 32768, dtype=np.uint16)
    arr[:, 16:] = 65535
    out = load_uploaded_image(_encode(Image.fromarray(arr), "PNG"), "cifar10")
    assert abs(out[0, 5, 5].item() - 0.5) < 0.01  # a naive convert("L") would clip 32768 to 255 -> 1.0
    assert out[:, 5, 30].tolist() == [1.0, 1.0, 1.0]


def test_upload_transparency_becomes_white() -> None:
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    out = load_uploaded_image(_encode(img, "PNG"), "cifar10")
    assert torch.all(out == 1.0)


def test_upload_keeps_colours_exactly_at_native_size() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = load_uploaded_image(_encode(Image.fromarray(arr), "PNG"), "cifar10")
    assert torch.equal((out * 255).round().to(torch.uint8), torch.from_numpy(arr).permute(2, 0, 1))


def test_upload_errors() -> None:
    with pytest.raises(ValueError, match="uploaded file is empty"):
        load_uploaded_image(b"", "cifar10")
    with pytest.raises(ValueError, match="uploaded file is not a readable image"):
        load_uploaded_image(b"%PDF-1.4 definitely not an image" * 10, "cifar10")
    rng = np.random.default_rng(0)
    png = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    jpg = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    for data in (png[: len(png) // 2], jpg[: len(jpg) // 2]):
        with pytest.raises(ValueError, match="uploaded file is not a readable image"):
            load_uploaded_image(data, "imagenet")
    with pytest.raises(ValueError, match="dataset"):
        load_uploaded_image(png, "mnist")


def test_upload_refuses_absurd_dimensions() -> None:
    png = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
    png[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height: 10^10 pixels
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    with pytest.raises(ValueError, match="uploaded (image is 100000x100000|file is not a readable image)"):
        load_uploaded_image(bytes(png), "cifar10")


def test_offline_cifar10_test_sets(shared_data: Path) -> None:
    lossless = cifar10_offline(shared_data, "test-lossless")
    assert lossless.images.shape == (1000, 3, 32, 32) and lossless.images.dtype == torch.uint8
    assert lossless.labels[:5].tolist() == [3, 8, 8, 0, 6]
    jpeg = cifar10_offline(shared_data, "test")
    assert len(jpeg) == 10_000 and jpeg.labels[:1000].eq(0).all()  # class-major order
    with pytest.raises(ValueError, match="split"):
        cifar10_offline(shared_data, "val")


@pytest.mark.slow
def test_offline_cifar10_train_set(shared_data: Path) -> None:
    train = cifar10_offline(shared_data, "train")
    assert train.images.shape == (50_000, 3, 32, 32)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(train.labels).tolist() == [5000] * 10


def test_torchvision_cifar10_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = bundled_cifar10_arrays()
    write_torchvision_cifar_root(tmp_path, x[:12], y[:12])
    train = cifar10_torchvision(tmp_path, train=True)
    test = cifar10_torchvision(tmp_path, train=False)
    assert torch.equal(train.images, torch.from_numpy(x[:10])) and train.labels.tolist() == y[:10].tolist()
    assert torch.equal(test.images, torch.from_numpy(x[10:12])) and test.class_names == class_names("cifar10")
    assert train.source.endswith("unverified")
    # torchvision itself refuses the root: download=False still checks the official MD5 of every file ...
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    # ... and with the MD5s of these files it reads exactly what we read (same format).
    folder = tmp_path / "cifar-10-batches-py"
    md5 = {p.name: __import__("hashlib").md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setitem(cls.meta, "md5", md5["batches.meta"])
    tv = cls(str(tmp_path), train=True, download=False)
    assert np.array_equal(tv.data, train.images.permute(0, 2, 3, 1).numpy()) and tv.targets == train.labels.tolist()
    assert cifar10_torchvision(tmp_path, train=True).source.endswith(":verified")


def test_torchvision_cifar10_root_refuses_code(tmp_path: Path) -> None:
    write_torchvision_cifar_root(tmp_path, *bundled_cifar10_arrays())
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        cifar10_torchvision(tmp_path, train=True)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        cifar10_torchvision(tmp_path / "empty", train=True)


def test_imagenet_folder(tmp_path: Path) -> None:
    labels = write_imagefolder(tmp_path)
    folder, names = imagenet_folder(tmp_path, train=False)
    assert len(names) == 1000 and len(folder) == 6
    img, label = folder[5]
    assert img.shape == (3, 224, 224) and label == labels[2] and names[label] == class_names("imagenet")[labels[2]]
    train, _ = imagenet_folder(tmp_path, train=True)
    assert train[0][0].shape == (3, 224, 224)
    (tmp_path / "not_a_wnid").mkdir()
    shutil.copy(tmp_path / "n01440764" / "0.JPEG", tmp_path / "not_a_wnid" / "0.JPEG")
    folder, names = imagenet_folder(tmp_path, train=False)
    assert names == [*sorted(p.name for p in tmp_path.iterdir() if p.name != "not_a_wnid"), "not_a_wnid"]
    assert folder[0][1] == 0 and folder[6][1] == 3
