"""Data: bundled sample images, uploaded images, offline CIFAR-10 (shared npz files) and torchvision layouts.

Images are returned as float tensors C x H x W in [0, 1] (single images) or uint8 tensors N x C x H x W (sets).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.transforms import v2

DATASETS = ("cifar10", "imagenet")
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"  # certcore/samples
CIFAR_SPLITS = ("train", "test", "test-lossless")
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_PIXELS = 50_000_000
EVALUATION_SIZE = 500


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``test_index`` is the original CIFAR-10 test index (None for ImageNet)."""

    dataset: str
    id: str
    label: int
    class_name: str
    image: torch.Tensor
    test_index: int | None = None


@dataclass(frozen=True)
class ImageSet:
    """An in-memory labelled image set: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int] | range | torch.Tensor, source: str) -> ImageSet:
        """The images at ``indices``, described as ``source``."""
        idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, source)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")


def shared_data_dir() -> Path:
    """The offline data folder: ``$CERTCORE_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("CERTCORE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


@cache
def _class_names(dataset: str) -> tuple[str, ...]:
    if dataset == "cifar10":
        return tuple((SAMPLES_DIR / "cifar10_classes.txt").read_text().split())
    index = json.loads((SAMPLES_DIR / "imagenet_class_index.json").read_text())
    return tuple(index[str(i)][1] for i in range(len(index)))


def class_names(dataset: str) -> list[str]:
    """Class names of ``dataset`` in label order (10 for cifar10, 1000 for imagenet)."""
    _check_dataset(dataset)
    return list(_class_names(dataset))


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet wnids in label order (sorted, as torchvision's ImageFolder orders them)."""
    index = json.loads((SAMPLES_DIR / "imagenet_class_index.json").read_text())
    return tuple(index[str(i)][0] for i in range(len(index)))


def imagenet_eval_transform() -> v2.Compose:
    """PIL image -> float tensor in [0, 1]: resize short side to 256, centre-crop 224."""
    return v2.Compose(
        [v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    )


def imagenet_train_transform() -> v2.Compose:
    """PIL image -> float tensor in [0, 1]: RandomResizedCrop 224 and horizontal flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(224, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def _cifar_transform() -> v2.Compose:
    return v2.Compose(
        [v2.Resize(32, antialias=True), v2.CenterCrop(32), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    )


def bundled_samples(dataset: str) -> list[Sample]:
    """The sample images shipped with the package (100 per dataset), in a fixed order.

    CIFAR-10: exact pixels of 10 test images per class, all with odd test indices (the even indices 0..998 are the
    evaluation set). ImageNet: one image per 10th class, resized to short side 256 and centre-cropped to 224.
    """
    _check_dataset(dataset)
    names = _class_names(dataset)
    if dataset == "cifar10":
        with np.load(SAMPLES_DIR / "cifar10_samples.npz", allow_pickle=False) as d:
            x, y, idx = d["x"], d["y"], d["orig_index"]
        images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
        return [
            Sample("cifar10", f"cifar10-test-{int(i):04d}", int(lab), names[int(lab)], img, int(i))
            for img, lab, i in zip(images, y, idx, strict=True)
        ]
    tf = imagenet_eval_transform()
    with open(SAMPLES_DIR / "imagenet_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        with Image.open(SAMPLES_DIR / "imagenet" / r["file"]) as im:
            img = tf(im.convert("RGB"))
        lab = int(r["class_index"])
        out.append(Sample("imagenet", r["file"], lab, names[lab], img))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: 16-bit greyscale is scaled (not clipped), transparency is composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_uploaded_image(data: bytes, dataset: str) -> torch.Tensor:
    """Decode an uploaded image file into the model's input size as float C x H x W in [0, 1].

    CIFAR-10: short side to 32, centre-crop 32x32. ImageNet: short side to 256, centre-crop 224x224. Raises
    ``ValueError`` naming the upload for empty, oversized, undecodable or truncated files.
    """
    _check_dataset(dataset)
    if not data:
        raise ValueError("uploaded file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"uploaded file is {len(data)} bytes; at most {MAX_UPLOAD_BYTES} are accepted")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > MAX_UPLOAD_PIXELS or min(w, h) < 1:
                    raise ValueError(f"uploaded image is {w}x{h} pixels; at most {MAX_UPLOAD_PIXELS:,} are accepted")
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own, larger limit
        raise ValueError(
            f"uploaded file is not a readable image: too large ({exc}); "
            f"at most {MAX_UPLOAD_PIXELS:,} pixels are accepted"
        ) from exc
    except (OSError, SyntaxError) as exc:
        raise ValueError(
            f"uploaded file is not a readable image (unknown format, corrupted or truncated): {exc}"
        ) from exc
    tf = _cifar_transform() if dataset == "cifar10" else imagenet_eval_transform()
    return tf(rgb)


# dataset -> (short side the image is resized to, side of the centre crop the model gets)
INPUT_GEOMETRY = {"cifar10": (32, 32), "imagenet": (256, 224)}


def upload_notes(data: bytes, dataset: str) -> list[str]:
    """What decoding an upload that ``load_uploaded_image`` accepted did to it, in words: colours converted to RGB
    (greyscale, CMYK, palette), enlarged beyond its pixels, or mostly cropped away (a very long image).

    >>> import io; buf = io.BytesIO(); Image.new("CMYK", (10_000, 10)).save(buf, "JPEG")
    >>> for note in upload_notes(buf.getvalue(), "imagenet"): print(note)
    A CMYK image: converted to RGB, so its colours may shift slightly.
    Only 10 pixels on its short side: enlarged 25.6x to 224x224, so the model sees a blurred image.
    A 10,000x10 image: the centre crop keeps its middle 9x9 pixels, 0.08% of it.
    """
    _check_dataset(dataset)
    with Image.open(io.BytesIO(data)) as img:
        mode, (w, h) = img.mode, img.size
    notes = []
    if mode in ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        notes.append("A greyscale image: its grey level is copied to the three colour channels (R = G = B).")
    elif mode == "CMYK":
        notes.append("A CMYK image: converted to RGB, so its colours may shift slightly.")
    resize, crop = INPUT_GEOMETRY[dataset]
    short = min(w, h)
    if short < resize:
        notes.append(f"Only {short:,} pixels on its short side: enlarged {resize / short:.3g}x to {crop}x{crop}, so "
                     "the model sees a blurred image.")
    kept = short * crop / resize  # the side of the crop, in the upload's pixels
    if kept * kept < 0.5 * w * h:
        notes.append(f"A {w:,}x{h:,} image: the centre crop keeps its middle {kept:,.0f}x{kept:,.0f} pixels, "
                     f"{kept * kept / (w * h):.2%} of it.")
    return notes


def _to_set(x_hwc: np.ndarray, y: np.ndarray, names: list[str], source: str) -> ImageSet:
    images = torch.from_numpy(np.ascontiguousarray(x_hwc)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.from_numpy(y.astype(np.int64)), names, source)


def cifar10_offline(root: str | Path | None = None, split: str = "train") -> ImageSet:
    """CIFAR-10 from the shared npz files under ``root`` (default ``shared_data_dir()``).

    ``train``: 50,000 training images (JPEG q75) in the original order. ``test``: 10,000 test images (JPEG q75),
    class-major order. ``test-lossless``: exact pixels of test images 0..999 in the original order.
    """
    if split not in CIFAR_SPLITS:
        raise ValueError(f"split must be one of {', '.join(CIFAR_SPLITS)}; got {split!r}")
    folder = Path(root if root is not None else shared_data_dir()) / "cifar10"
    file = {
        "train": "cifar10_train_jpeg.npz",
        "test": "cifar10_test_jpeg.npz",
        "test-lossless": "cifar10_test_first1000_lossless.npz",
    }[split]
    with np.load(folder / file, allow_pickle=False) as d:
        names = [str(n) for n in d["class_names"]]
        y = d["y"]
        if split == "train":
            buf, off = d["jpeg"], d["offsets"]
            x = np.stack(
                [
                    np.asarray(Image.open(io.BytesIO(buf[off[i] : off[i + 1]].tobytes())).convert("RGB"))
                    for i in range(len(off) - 1)
                ]
            )
        else:
            x = d["x"]
    return _to_set(x, y, names, f"offline:{file}")


def evaluation_indices() -> list[int]:
    """The project's evaluation set: the 500 even indices 0, 2, ..., 998 of the lossless CIFAR-10 test images."""
    return list(range(0, 2 * EVALUATION_SIZE, 2))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches that can build numpy arrays and nothing else."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def cifar10_torchvision(root: str | Path, train: bool) -> ImageSet:
    """CIFAR-10 from a torchvision root (``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``).

    ``torchvision.datasets.CIFAR10(root, download=False)`` raises "Dataset not found or corrupted" unless every
    file has the official MD5, so this reads the same files itself, through an unpickler that only builds numpy
    arrays. Whether the MD5s match the official ones is recorded in ``source`` ("verified" / "unverified").
    """
    tv = torchvision.datasets.CIFAR10
    folder = Path(root) / tv.base_folder
    files = tv.train_list if train else tv.test_list
    if not all((folder / name).is_file() for name, _ in files):
        raise FileNotFoundError(f"root {str(root)!r} lacks {tv.base_folder}/ with {', '.join(n for n, _ in files)}")
    xs, ys = [], []
    for name, _ in files:
        entry = _read_cifar_pickle(folder / name)
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(entry["labels"])
    names = [str(n) for n in _read_cifar_pickle(folder / tv.meta["filename"])[tv.meta["key"]]]
    verified = all(_md5(folder / name) == md5 for name, md5 in files)
    x = np.concatenate(xs).transpose(0, 2, 3, 1)
    return _to_set(x, np.asarray(ys), names, f"torchvision:{root}:{'verified' if verified else 'unverified'}")


def imagenet_folder(root: str | Path, train: bool) -> tuple[torchvision.datasets.ImageFolder, list[str]]:
    """ImageNet in ImageFolder layout (``root/<class>/*``) with the standard train or eval transform, and class names.

    If every folder is an ImageNet wnid, labels are the 1000-class ImageNet indices (so a partial tree still trains
    a 1000-way classifier) and the names are the 1000 ImageNet names; otherwise the folders are the classes.
    """
    tf = imagenet_train_transform() if train else imagenet_eval_transform()
    folder = torchvision.datasets.ImageFolder(str(root), transform=tf)
    wnid_index = {w: i for i, w in enumerate(imagenet_wnids())}
    if all(c in wnid_index for c in folder.classes):
        to_imagenet = [wnid_index[c] for c in folder.classes]
        folder.target_transform = to_imagenet.__getitem__
        return folder, list(_class_names("imagenet"))
    return folder, list(folder.classes)
