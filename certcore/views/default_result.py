"""The certificate the app shows before anyone clicks: computed once with a shipped checkpoint, stored in the repo.

One stored result per dataset (``STORED``). Regenerate one (CPU, so the counts equal what the app computes on a CPU
for the same inputs) with::

    python -m certcore.default_result                      # checkpoints/cifar10_resnet20_e50_distill56.pt, app defaults
    python -m certcore.default_result --dataset imagenet   # checkpoints/imagenet_effnetlite0_e1000.pt, n = 1,000
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

from certcore.evaluation.results import most_complete_run
from certcore.math.validation import BOUNDS
from certcore.models.checkpoints import checkpoint_sha256, load_checkpoint
from certcore.models.data import bundled_samples
from certcore.views.interactive import ProgressReporter, SampledCounts, sample_image

FORMAT = "certcore-default-result-v1"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # certcore/
REPO_ROOT = PACKAGE_DIR.parent


@dataclass(frozen=True)
class StoredDefault:
    """Where a dataset's stored result lives and what produces it: the default checkpoint file name, the bundled
    image, and the n of the app's form (also the stored result's n, so that pressing Certify unchanged reuses it)."""

    path: Path
    checkpoint: str
    image: str
    n: int


STORED = {
    # n = 10,000 instead of the paper's 100,000 so that a CPU run takes seconds, not minutes.
    "cifar10": StoredDefault(PACKAGE_DIR / "default_certificate.json", "cifar10_resnet20_e50_distill56.pt",
                             "cifar10-test-0061", 10_000),
    # n = 1,000: about 40 s at the 25 samples/s of the ImageNet classifier on a loaded 2-core CPU.
    "imagenet": StoredDefault(PACKAGE_DIR / "default_certificate_imagenet.json", "imagenet_effnetlite0_e1000.pt",
                              "120_n01980166.jpg", 1_000),
}
DEFAULT_PATH = STORED["cifar10"].path
DEFAULT_CHECKPOINT = STORED["cifar10"].checkpoint
DEFAULT_NAME = Path(DEFAULT_CHECKPOINT).stem  # how results files and checkpoint pickers name it
DEFAULT_IMAGE = STORED["cifar10"].image
# The paper's k and alpha; the n of CIFAR10 (app_defaults gives each dataset's).
APP_DEFAULTS = {"k": 3, "n": STORED["cifar10"].n, "alpha": 0.001, "seed": 0, "bounds": "anytime"}


def app_defaults(dataset: str) -> dict[str, int | float | str]:
    """The Certify form's k, n, alpha, seed and bounds (the live, anytime-valid mode) for ``dataset`` (n sized for a
    CPU run of a minute or less)."""
    return {**APP_DEFAULTS, "n": STORED[dataset].n}


def evaluate_command(dataset: str, n: int) -> str:
    """The shell command that certifies ``dataset``'s evaluation images (``certcore.evaluate``'s default: CIFAR10
    test images 0, 2, ..., 998; ImageNet the bundled samples) with its default checkpoint (``STORED``) at ``n``
    samples per image, the app's alpha and k = 1, 2, 3, into ``results/<checkpoint>_n<n>.jsonl``.

    >>> print(evaluate_command("imagenet", 1000))
    python -m certcore.evaluate --dataset imagenet --checkpoint checkpoints/imagenet_effnetlite0_e1000.pt \\
        --n 1000 --alpha 0.001 --k 1 2 3 --out results/imagenet_effnetlite0_e1000_n1000.jsonl
    """
    if dataset not in STORED:
        raise ValueError(f"dataset must be one of {', '.join(STORED)}; got {dataset!r}")
    checkpoint = STORED[dataset].checkpoint
    return (f"python -m certcore.evaluate --dataset {dataset} --checkpoint checkpoints/{checkpoint} \\\n"
            f"    --n {n} --alpha {APP_DEFAULTS['alpha']:g} --k 1 2 3 --out results/{Path(checkpoint).stem}_n{n}.jsonl")


def default_checkpoint_first(names: Iterable[str]) -> list[str]:
    """Checkpoint names (file names without ``.pt``) with a default checkpoint's (``STORED``) first, the others in
    their order: what a checkpoint picker preselects, whatever other files sort before it."""
    defaults = {Path(s.checkpoint).stem for s in STORED.values()}
    return sorted(names, key=lambda name: name not in defaults)


def checkpoint_dir() -> Path:
    """Where the app looks for checkpoints: ``$CERTCORE_CHECKPOINTS`` or ``<repo>/checkpoints``."""
    return Path(os.environ.get("CERTCORE_CHECKPOINTS", REPO_ROOT / "checkpoints"))


def results_dir() -> Path:
    """Where the app looks for (and writes) evaluation results: ``$CERTCORE_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("CERTCORE_RESULTS", REPO_ROOT / "results"))


def default_run(files: Iterable[str | Path]) -> Path | None:
    """The results file a page opens on: the most complete run of the CIFAR10 default checkpoint, else of the
    ImageNet one (``STORED``'s order), of exactly the file in ``checkpoint_dir()`` when it is there; None if no
    file holds a run of either."""
    files = list(files)
    for stored in STORED.values():
        path = checkpoint_dir() / stored.checkpoint
        run = most_complete_run(files, path.stem, checkpoint_sha256(path) if path.is_file() else None)
        if run is not None:
            return run
    return None


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
    """The stored default result (CIFAR10's unless ``path`` says otherwise), or None if there is none."""
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
                    batch_size: int = 500, progress: ProgressReporter | None = None,
                    dataset: str | None = None, bounds: str = APP_DEFAULTS["bounds"]) -> DefaultResult:
    """Certify bundled image ``image_id`` with ``checkpoint`` (trained for ``dataset`` if given) on the CPU at the
    checkpoint's e, to be certified with ``bounds``."""
    model, meta = load_checkpoint(checkpoint, dataset=dataset, device="cpu")
    samples = {s.id: s for s in bundled_samples(meta["dataset"])}
    if image_id not in samples:
        raise ValueError(f"image {image_id!r} is not a bundled {meta['dataset']} sample")
    sample = samples[image_id]
    sampled = sample_image(model, sample.image, e=int(meta["e"]), n=n, seed=seed, label=sample.label,
                           batch_size=batch_size, device="cpu", checkpoint=meta["weights_sha256"], progress=progress,
                           bounds=bounds)
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
    p.add_argument("--dataset", choices=list(STORED), default="cifar10",
                   help="whose stored result to write (sets the defaults of --checkpoint, --image, --n, --out)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="default: <checkpoints>/" + " or ".join(s.checkpoint for s in STORED.values()))
    p.add_argument("--image", default=None, help="bundled sample id; default: " + ", ".join(
        f"{s.image} ({name})" for name, s in STORED.items()))
    for name, value in APP_DEFAULTS.items():
        p.add_argument(f"--{name}", type=type(value), default=None if name == "n" else value,
                       choices=BOUNDS if name == "bounds" else None,
                       help=", ".join(f"{s.n:,} ({d})" for d, s in STORED.items()) if name == "n" else None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", type=Path, default=None, help="default: " + ", ".join(
        f"certcore/{s.path.name} ({name})" for name, s in STORED.items()))
    args = p.parse_args(argv)
    stored = STORED[args.dataset]
    checkpoint = args.checkpoint or checkpoint_dir() / stored.checkpoint
    args.image, args.n, args.out = args.image or stored.image, args.n or stored.n, args.out or stored.path

    def show(_fraction: float, text: str) -> None:
        print(f"\r{text}", end="", file=sys.stderr, flush=True)

    result = compute_default(checkpoint, args.image, k=args.k, n=args.n, alpha=args.alpha, seed=args.seed,
                             batch_size=args.batch_size, progress=ProgressReporter(show), dataset=args.dataset,
                             bounds=args.bounds)
    write_json_atomic(result.to_dict(), args.out)
    cert = result.sampled.certificate(result.k, result.alpha)
    print(f"\nwrote {args.out}: top-{cert.k} {list(cert.top_k)}, radii {[(x.label, x.radius) for x in cert.radii]}")


if __name__ == "__main__":
    main()
