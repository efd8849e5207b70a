"""The certificate the app shows before anyone clicks: computed once with a shipped checkpoint, stored in the repo.

Regenerate it (CPU, so the counts equal what the app computes on a CPU for the same inputs) with::

    python -m certcore.default_result                      # checkpoints/cifar10_resnet20_e50_distill56.pt, app defaults
    python -m certcore.default_result --checkpoint PATH --image cifar10-test-0061 --n 100000

The file records what produced it (checkpoint name and weights hash, image id, every parameter, the counts, the
device, versions) and is written to a temporary file and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certcore.models.checkpoints import load_checkpoint
from certcore.models.data import bundled_samples
from certcore.views.interactive import ProgressReporter, SampledCounts, sample_image

FORMAT = "certcore-default-result-v1"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # certcore/
DEFAULT_PATH = PACKAGE_DIR / "default_certificate.json"
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_CHECKPOINT = "cifar10_resnet20_e50_distill56.pt"
DEFAULT_NAME = Path(DEFAULT_CHECKPOINT).stem  # how results files and checkpoint pickers name it
DEFAULT_IMAGE = "cifar10-test-0061"
# The paper's k and alpha; n = 10,000 instead of its 100,000 so that a CPU run takes seconds, not minutes.
APP_DEFAULTS = {"k": 3, "n": 10_000, "alpha": 0.001, "seed": 0}


def default_checkpoint_first(names: Iterable[str]) -> list[str]:
    """Checkpoint names (file names without ``.pt``) with ``DEFAULT_CHECKPOINT``'s first, the others in their
    order: what a checkpoint picker preselects, whatever other files sort before it."""
    return sorted(names, key=lambda name: name != DEFAULT_NAME)


def checkpoint_dir() -> Path:
    """Where the app looks for checkpoints: ``$CERTCORE_CHECKPOINTS`` or ``<repo>/checkpoints``."""
    return Path(os.environ.get("CERTCORE_CHECKPOINTS", REPO_ROOT / "checkpoints"))


def results_dir() -> Path:
    """Where the app looks for (and writes) evaluation results: ``$CERTCORE_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("CERTCORE_RESULTS", REPO_ROOT / "results"))


@dataclass(frozen=True)
class DefaultResult:
    """A stored certification: which image and checkpoint, the k and alpha shown, and the sampled counts."""

    dataset: str
    image: str
    checkpoint: str
    weights_sha256: str
    k: int
    alpha: float
    sampled: SampledCounts
    created: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, including the certificate itself for readers without certcore."""
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "image": self.image,
            "checkpoint": self.checkpoint,
            "weights_sha256": self.weights_sha256,
            "k": self.k,
            "alpha": self.alpha,
            "sampled": self.sampled.to_dict(),
            "certificate": self.sampled.certificate(self.k, self.alpha).to_dict(),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DefaultResult:
        """The stored result ``to_dict`` produced (the redundant certificate is recomputed, not read)."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        fields = {k: data[k] for k in ("dataset", "image", "checkpoint", "weights_sha256", "k", "alpha", "created")}
        return cls(**fields, sampled=SampledCounts.from_dict(data["sampled"]))


def load_default(path: str | Path = DEFAULT_PATH) -> DefaultResult | None:
    """The stored default result, or None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return DefaultResult.from_dict(json.loads(path.read_text()))


def write_json_atomic(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON to a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compute_default(checkpoint: Path, image_id: str, *, k: int, n: int, alpha: float, seed: int,
                    batch_size: int = 500, progress: ProgressReporter | None = None) -> DefaultResult:
    """Certify bundled image ``image_id`` with ``checkpoint`` on the CPU at the checkpoint's e."""
    model, meta = load_checkpoint(checkpoint, device="cpu")
    samples = {s.id: s for s in bundled_samples(meta["dataset"])}
    if image_id not in samples:
        raise ValueError(f"image {image_id!r} is not a bundled {meta['dataset']} sample")
    sample = samples[image_id]
    sampled = sample_image(model, sample.image, e=int(meta["e"]), n=n, seed=seed, label=sample.label,
                           batch_size=batch_size, device="cpu", checkpoint=meta["weights_sha256"], progress=progress)
    return DefaultResult(
        dataset=meta["dataset"],
        image=image_id,
        checkpoint=checkpoint.name,
        weights_sha256=meta["weights_sha256"],
        k=k,
        alpha=alpha,
        sampled=sampled,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: compute and store the default result."""
    p = argparse.ArgumentParser(prog="python -m certcore.default_result", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help=f"default: <checkpoints>/{DEFAULT_CHECKPOINT}")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="bundled sample id")
    for name, value in APP_DEFAULTS.items():
        p.add_argument(f"--{name}", type=type(value), default=value)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = p.parse_args(argv)
    checkpoint = args.checkpoint or checkpoint_dir() / DEFAULT_CHECKPOINT

    def show(_fraction: float, text: str) -> None:
        print(f"\r{text}", end="", file=sys.stderr, flush=True)

    result = compute_default(checkpoint, args.image, k=args.k, n=args.n, alpha=args.alpha, seed=args.seed,
                             batch_size=args.batch_size, progress=ProgressReporter(show))
    write_json_atomic(result.to_dict(), args.out)
    cert = result.sampled.certificate(result.k, result.alpha)
    print(f"\nwrote {args.out}: top-{cert.k} {list(cert.top_k)}, radii {[(x.label, x.radius) for x in cert.radii]}")


if __name__ == "__main__":
    main()
