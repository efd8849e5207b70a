"""Base-classifier checkpoints: one file holding the weights and a JSON metadata record.

File layout: ``torch.save({"metadata": <JSON string>, "state_dict": <tensors>})``. Files are written atomically
(temp file + ``os.replace``) and always read with ``torch.load(..., weights_only=True)``, so a file whose pickle
would run code is refused instead of executed. The metadata carries the SHA-256 of the weights, which catches a
tampered or corrupted state dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certcore.models.architectures import build_model

FORMAT = "certcore-checkpoint-v1"
REQUIRED_KEYS = ("dataset", "arch", "e", "num_classes", "class_names", "encoding")


class CheckpointError(ValueError):
    """A file is not a valid certcore checkpoint, or not the one that was asked for."""


class CheckpointWarning(UserWarning):
    """A file in a checkpoint directory was skipped because it is not a valid checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A valid checkpoint found by ``list_checkpoints``."""

    path: Path
    name: str
    metadata: dict[str, Any]


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of all tensors (in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of the checkpoint file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the target directory, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """Save ``model``'s weights with ``metadata`` (JSON-serialisable) atomically; returns the stored metadata.

    ``format``, ``torch_version`` and ``weights_sha256`` are filled in here.
    """
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"metadata lacks required keys: {', '.join(missing)}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {
        **metadata,
        "format": FORMAT,
        "torch_version": torch.__version__,
        "weights_sha256": state_dict_sha256(state),
    }
    atomic_torch_save({"metadata": json.dumps(meta, sort_keys=True), "state_dict": state}, path)
    return meta


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint file; raise ``CheckpointError`` for anything that is not a valid one."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # any failure to unpickle safely means "not a checkpoint"
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated, corrupted, or unsafe pickle): {exc}"
        ) from exc
    if not (
        isinstance(blob, dict) and isinstance(blob.get("metadata"), str) and isinstance(blob.get("state_dict"), dict)
    ):
        raise CheckpointError(f"{str(path)!r} is not a certcore checkpoint (expected metadata + state_dict)")
    try:
        meta = json.loads(blob["metadata"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(path)!r}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r}: metadata format is not {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{str(path)!r}: metadata lacks {', '.join(missing)}")
    state = blob["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r}: state_dict holds non-tensor values")
    if state_dict_sha256(state) != meta.get("weights_sha256"):
        raise CheckpointError(
            f"{str(path)!r}: weights do not match the SHA-256 in the metadata (tampered or corrupted)"
        )
    return meta, state


def load_checkpoint(
    path: str | Path, *, dataset: str | None = None, e: int | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint as an eval-mode model on ``device`` plus its metadata.

    If ``dataset`` or ``e`` is given and differs from what the checkpoint was trained for, ``CheckpointError``
    is raised (certifying with a mismatched base classifier would silently give meaningless results).
    """
    path = Path(path)
    meta, state = _read(path)
    if dataset is not None and meta["dataset"] != dataset:
        raise CheckpointError(f"{path.name}: trained for dataset {meta['dataset']!r}, requested dataset {dataset!r}")
    if e is not None and meta["e"] != e:
        raise CheckpointError(f"{path.name}: trained with e={meta['e']}, requested e={e}")
    try:
        model = build_model(meta["arch"], int(meta["num_classes"]), int(meta.get("in_channels", 6)))
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name}: weights do not fit arch {meta['arch']!r}: {exc}") from exc
    return model.to(device).eval(), meta


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Valid checkpoints (``*.pt``) in ``directory``, sorted by name; each invalid file raises a CheckpointWarning."""
    found = []
    for path in sorted(Path(directory).glob("*.pt")):
        try:
            meta, _ = _read(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping {path.name}: {exc}", CheckpointWarning, stacklevel=2)
            continue
        found.append(CheckpointInfo(path=path, name=path.stem, metadata=meta))
    return found
