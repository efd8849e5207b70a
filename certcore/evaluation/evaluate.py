"""Certified top-k accuracy over a test set: ``python -m certcore.evaluate --checkpoint X.pt --out results/X.jsonl``.

For every image: n ablated samples (``sample_counts``, seeded per image from ``--seed`` and the image index, so
sharding and resuming never change a result; on CUDA the counts also depend on the batch size, see
``certcore.engine.sampling``), then the certified radius of its true label in the top-k for every requested k
(``certificate_from_counts``). One JSON line per image (see ``certcore.evaluation.results``).

Resumable: a re-run of the same command skips images already in the file; an interrupted run loses at most the
image in flight; an incomplete last line (interrupted write) is removed with a warning and redone; a file
written with other parameters is refused. ``--from-counts FILE`` re-certifies stored counts for other k or
alpha without a model. Under ``torchrun --nproc_per_node=G`` the images are sharded over the ranks (each on
cuda:LOCAL_RANK when CUDA is used), rank R appends to ``NAME.rankR.jsonl``, and rank 0 merges the shards into
``NAME.jsonl`` (sorted by index, no duplicates) after a barrier (gloo, also on CUDA: no GPU collective is needed).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from certcore.engine.certificate import certificate_from_counts, top_k_labels
from certcore.engine.compiled import CompiledClassifier, compile_for_cpu, compile_for_cuda
from certcore.engine.sampling import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, default_batch_size, sample_counts
from certcore.evaluation.results import (
    FORMAT,
    IncompleteLineWarning,
    Record,
    ResultsError,
    accuracy_table,
    atomic_write,
    check_same_run,
    format_accuracy_table,
    read_results,
    record_line,
    scan_results,
    shard_files,
)
from certcore.math.sample_size import warn_if_too_few_samples
from certcore.models.checkpoints import CheckpointError, checkpoint_sha256, load_checkpoint
from certcore.models.data import (
    DATASETS,
    bundled_samples,
    cifar10_offline,
    cifar10_torchvision,
    evaluation_indices,
    imagenet_folder,
)
from certcore.version import __version__

IMAGENET_EVAL_SIZE = 500
BARRIER_TIMEOUT = datetime.timedelta(hours=72)  # ranks wait at the final barrier for the slowest shard


class EvaluationError(ValueError):
    """An evaluation cannot run as asked (bad indices, k, device, data); the message says why."""


# ------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ImageSource:
    """Labelled test images addressed by index. ``data_source`` says what an index means (a run parameter);
    ``data_file`` records where the pixels came from."""

    dataset: str
    data_source: str
    data_file: str
    size: int
    default_indices: tuple[int, ...]
    get: Callable[[int], tuple[torch.Tensor, int]]


def open_image_source(dataset: str, data_root: str | None = None, shared_data: str | None = None) -> ImageSource:
    """The test images of ``dataset``.

    cifar10: original CIFAR-10 test indices; without ``data_root`` the exact pixels of test images 0..999 from
    the offline data (``shared_data``, default ``certcore.models.data.shared_data_dir()``), with it a torchvision root
    (all 10,000). The default indices are the project's evaluation set, 0, 2, ..., 998. imagenet: without
    ``data_root`` the 100 bundled samples, with it an ImageFolder (default: 500 images evenly spaced over it).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if dataset == "cifar10":
        if data_root:
            images = cifar10_torchvision(data_root, train=False)
        else:
            images = cifar10_offline(shared_data, "test-lossless")
        return ImageSource(dataset, "cifar10-test", images.source, len(images), tuple(evaluation_indices()),
                           lambda i: (images.images[i].float().div(255), int(images.labels[i])))
    if data_root is None:
        samples = bundled_samples("imagenet")
        return ImageSource(dataset, "imagenet-bundled-samples", "certcore/samples/imagenet", len(samples),
                           tuple(range(len(samples))), lambda i: (samples[i].image, samples[i].label))
    folder, _ = imagenet_folder(data_root, train=False)
    step = max(1, len(folder) // IMAGENET_EVAL_SIZE)
    root = str(Path(data_root).resolve())
    return ImageSource(dataset, f"imagenet-folder:{root}", root, len(folder),
                       tuple(range(0, len(folder), step))[:IMAGENET_EVAL_SIZE], lambda i: folder[i])


def select_indices(source: ImageSource, num_images: int | None, indices: Sequence[int] | None) -> list[int]:
    """Sorted, distinct indices: ``indices`` if given, else the first ``num_images`` default indices (all)."""
    if indices is not None and num_images is not None:
        raise EvaluationError("give --num-images or --indices, not both")
    if indices is None:
        available = len(source.default_indices)
        if num_images is not None and not 1 <= num_images <= available:
            raise EvaluationError(f"--num-images must be in [1, {available}] (the default evaluation images of "
                             f"{source.data_source}); use --indices for other images")
        return sorted(source.default_indices[:num_images])
    bad = [i for i in indices if not 0 <= i < source.size]
    if bad:
        raise EvaluationError(f"--indices {bad} out of range: {source.data_source} has indices 0..{source.size - 1}")
    return sorted(set(indices))


def image_seed(seed: int, index: int) -> int:
    """The sampling seed of image ``index``: 63 bits of SHA-256("certcore-evaluate:{seed}:{index}")."""
    digest = hashlib.sha256(f"certcore-evaluate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ------------------------------------------------------------------------------------------------- ranks


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.world > 1:
            dist.barrier()


def join_process_group() -> Ranks:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and, with several ranks, join a gloo group."""
    ranks = Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")))
    if ranks.world > 1:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return ranks


def pick_device(requested: str, ranks: Ranks) -> torch.device:
    """``auto``: CUDA if available; CUDA means cuda:LOCAL_RANK."""
    use_cuda = torch.cuda.is_available() if requested == "auto" else requested == "cuda"
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EvaluationError("--device cuda requested but CUDA is not available")
    device = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(device)
    return device


def own_file(out: Path, ranks: Ranks) -> Path:
    """The file this rank appends to: ``out`` itself for a single process, else ``NAME.rankR.jsonl``."""
    return out if ranks.world == 1 else out.with_name(f"{out.stem}.rank{ranks.rank}.jsonl")


# ------------------------------------------------------------------------------------------------- files


def _run_files(out: Path) -> list[Path]:
    return [out, *shard_files(out)]


def _check_file_run(path: Path, records: list[Record], expected: Record) -> None:
    if records:
        check_same_run(expected, records[0], f"{path}:1", reference="this run")


def repair_tail(path: Path, expected: Record) -> None:
    """Make ``path`` end with a complete line: an incomplete last line (an interrupted write) is cut off with a
    warning; a complete record that only lacks its newline gets it. Refuses files of another run."""
    scan = scan_results(path)
    _check_file_run(path, scan.records, expected)
    if not path.exists():
        return
    size = path.stat().st_size
    if scan.incomplete_line is not None:
        warnings.warn(f"{path}:{scan.incomplete_line}: incomplete last line (interrupted write) removed; "
                      "that image is redone", IncompleteLineWarning, stacklevel=2)
        os.truncate(path, scan.valid_bytes)
    elif size < scan.valid_bytes:
        with open(path, "ab") as f:
            f.write(b"\n")


def files_to_repair(out: Path, ranks: Ranks) -> list[Path]:
    """Each rank repairs its own file; rank 0 also every file of this run no live rank owns."""
    own = own_file(out, ranks)
    if ranks.rank != 0:
        return [own]
    live = {own_file(out, Ranks(r, ranks.world)) for r in range(ranks.world)}
    return [own, *(p for p in _run_files(out) if p not in live)]


def completed_records(out: Path, expected: Record) -> dict[int, Record]:
    """Every image already certified by this run, in ``out`` or any shard file (first occurrence wins)."""
    done: dict[int, Record] = {}
    for path in _run_files(out):
        scan = scan_results(path)
        _check_file_run(path, scan.records, expected)
        for record in scan.records:
            done.setdefault(record["index"], record)
    return done


def merge_run_files(out: Path, expected: Record) -> list[Record]:
    """Rank 0, after the final barrier: ``out`` + shard files -> ``out`` sorted by index without duplicates
    (written atomically), then the shard files are deleted. Returns the merged records."""
    shards = shard_files(out)
    records = sorted(completed_records(out, expected).values(), key=lambda r: r["index"])
    current = scan_results(out).records
    if shards or current != records:
        atomic_write(out, b"".join(record_line(r) for r in records))
    for shard in shards:
        shard.unlink()
    return records


def append_record(path: Path, record: Record) -> None:
    """Append one complete line and make it durable (flush + fsync) before the next image starts."""
    with open(path, "ab") as f:
        f.write(record_line(record))
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------- certify


def certify_image(model: torch.nn.Module, source: ImageSource, index: int, run: Record, *, num_classes: int,
                  batch_size: int | None, device: torch.device) -> Record:
    """Sample and certify one image; returns its results record (``run`` holds the run parameters)."""
    started = time.perf_counter()
    image, label = source.get(index)
    d = image.shape[1] * image.shape[2]
    if d != run["d"]:
        raise EvaluationError(f"image {index} has d={d} pixels, the run has d={run['d']}")
    seed = image_seed(run["seed"], index)
    sampled = sample_counts(model, image, run["e"], run["n"], seed=seed, batch_size=batch_size, device=device,
                            num_classes=num_classes)
    return {
        **run,
        "index": index,
        "label": int(label),
        "counts": [int(c) for c in sampled.counts],
        "image_seed": seed,
        **certified_fields(sampled.counts, int(label), run),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "device": sampled.device,
        "batch_size": sampled.batch_size,
        "inference": "compiled" if isinstance(model, CompiledClassifier) else "eager",
    }


def certified_fields(counts: Sequence[int], label: int, run: Record) -> dict[str, Any]:
    """``radii`` (true label, per k) and ``top_k`` of one image from its counts, at the run's d, e, k, alpha."""
    radii = {
        str(k): certificate_from_counts(counts, d=run["d"], e=run["e"], k=k, alpha=run["alpha"], label=label)
        .radius_of(label)
        for k in run["k"]
    }
    return {"radii": radii, "top_k": list(top_k_labels(counts, max(run["k"])))}


class ProgressLine:
    """Prints ``done/total images, images/s, ETA`` after each image (to stderr)."""

    def __init__(self, total: int, already_done: int, ranks: Ranks) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.prefix = f"[rank {ranks.rank}/{ranks.world}] " if ranks.world > 1 else ""
        print(f"{self.prefix}{total} images to certify ({already_done} of the run already done)",
              file=sys.stderr, flush=True)

    def update(self, record: Record) -> None:
        """Count one certified image and print the progress line."""
        self.done += 1
        rate = self.done / (time.perf_counter() - self.started)
        eta = datetime.timedelta(seconds=round((self.total - self.done) / rate))
        radii = " ".join(f"k={k}:{r}" for k, r in record["radii"].items())
        print(f"{self.prefix}{self.done}/{self.total} images | {rate:.3f} images/s | ETA {eta} | "
              f"index {record['index']} label {record['label']} radius {radii}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m certcore.evaluate", description=__doc__.split("\n\n")[0],
        epilog="Under torchrun write --num-samples and --keep for --n and --e: torchrun's own parser rejects "
               "--n and --e as ambiguous abbreviations of its options, even after the script name.")
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--checkpoint", help="certcore checkpoint (.pt) of an ablation-trained base classifier")
    p.add_argument("--num-images", type=int, default=None, help="first N default evaluation images (default all)")
    p.add_argument("--indices", type=int, nargs="+", default=None, help="certify these image indices instead")
    p.add_argument("--k", type=int, nargs="+", default=None, help="top-k values (default 1 2 3)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=100_000, help="ablated samples per image")
    p.add_argument("--alpha", type=float, default=None, help="failure probability (default 0.001)")
    p.add_argument("--e", "--keep", dest="e", type=int, default=None,
                   help="pixels kept per ablation (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="run seed; image i samples with image_seed(seed, i)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"ablated samples per forward pass (default {CPU_BATCH_SIZE} on CPU, "
                        f"{CUDA_BATCH_SIZE} on CUDA)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default torch's)")
    p.add_argument("--compile", action="store_true",
                   help="sample with the model compiled by certcore.engine.compiled (compile_for_cpu, or on "
                        "CUDA compile_for_cuda: CUDA graphs at the one batch size; faster; recorded per image)")
    p.add_argument("--data-root", default=None, help="torchvision CIFAR-10 root or ImageNet ImageFolder root")
    p.add_argument("--shared-data", default=None,
                   help="offline data folder (default CERTCORE_SHARED_DATA or ../shared/data)")
    p.add_argument("--from-counts", default=None, metavar="RESULTS",
                   help="re-certify the counts stored in RESULTS for --k / --alpha into --out (no model)")
    p.add_argument("--out", required=True, help="results file, e.g. results/NAME.jsonl")
    args = p.parse_args(argv)
    if args.from_counts is None and args.checkpoint is None:
        p.error("--checkpoint is required (or --from-counts RESULTS)")
    for name in ("n", "batch_size", "threads", "num_images", "e"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.k is not None and min(args.k) < 1:
        p.error(f"--k values must be >= 1, got {args.k}")
    if args.alpha is not None and not 0 < args.alpha < 1:
        p.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if not 0 <= args.seed < 2**63:
        p.error(f"--seed must be in [0, 2**63), got {args.seed}")
    return args


def recertify(source_path: Path, out: Path, ks: Sequence[int] | None, alpha: float | None) -> list[Record]:
    """``--from-counts``: the records of ``source_path`` re-certified at ``ks`` / ``alpha`` (default: the stored
    ones) from their counts alone, written atomically to ``out``. Counts and sampling details are kept."""
    if out.resolve() == source_path.resolve():
        raise ResultsError(f"--out {out} is the --from-counts file itself; choose another --out")
    stored = read_results(source_path)
    if not stored:
        raise ResultsError(f"{source_path}: no complete records to re-certify")
    num_classes = len(stored[0]["counts"])
    if ks and max(ks) >= num_classes:
        raise EvaluationError(f"--k must be below the number of classes ({num_classes}), got {sorted(ks)}")
    records = []
    for old in stored:
        run = {**old, "k": sorted(set(ks)) if ks else old["k"], "alpha": old["alpha"] if alpha is None else alpha}
        records.append({**run, **certified_fields(old["counts"], old["label"], run)})
    atomic_write(out, b"".join(record_line(r) for r in records))
    return records


def evaluate(args: argparse.Namespace, ranks: Ranks) -> list[Record] | None:
    """Certify the selected images (this rank's share) into the results file; rank 0 merges and returns all
    records of the run, other ranks return None."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, ranks)
    model, meta = load_checkpoint(args.checkpoint, dataset=args.dataset, e=args.e, device=device)
    num_classes = int(meta["num_classes"])
    ks = sorted(set(args.k or (1, 2, 3)))
    if ks[-1] >= num_classes:
        raise EvaluationError(f"--k must be below the number of classes ({num_classes}), got {ks}")
    source = open_image_source(args.dataset, args.data_root, args.shared_data)
    indices = select_indices(source, args.num_images, args.indices)
    first_image, _ = source.get(indices[0])
    if args.compile:
        compile_for = compile_for_cpu if device.type == "cpu" else compile_for_cuda
        model = compile_for(model, tuple(first_image.shape), args.batch_size or default_batch_size(device))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run: Record = {
        "format": FORMAT,
        "dataset": args.dataset,
        "data_source": source.data_source,
        "checkpoint": Path(args.checkpoint).stem,
        "checkpoint_sha256": checkpoint_sha256(args.checkpoint),
        "n": args.n,
        "e": int(meta["e"]),
        "d": first_image.shape[1] * first_image.shape[2],
        "alpha": 0.001 if args.alpha is None else args.alpha,
        "k": ks,
        "seed": args.seed,
        "torch_version": torch.__version__,
        "certcore_version": __version__,
        "data_file": source.data_file,
    }
    for k in ks:
        warn_if_too_few_samples(args.n, num_classes=num_classes, d=run["d"], e=run["e"], k=k, alpha=run["alpha"])

    for path in files_to_repair(out, ranks):
        repair_tail(path, run)
    ranks.barrier()  # every file ends with a complete line before anyone reads
    done = completed_records(out, run)
    pending = [i for i in indices if i not in done]
    mine = pending[ranks.rank :: ranks.world]
    ranks.barrier()  # everyone has read the same state before anyone appends

    progress = ProgressLine(len(mine), len(indices) - len(pending), ranks)
    target = own_file(out, ranks)
    for index in mine:
        record = certify_image(model, source, index, run, num_classes=num_classes, batch_size=args.batch_size,
                               device=device)
        append_record(target, record)
        progress.update(record)

    ranks.barrier()  # all shards complete
    if ranks.rank != 0:
        return None
    records = merge_run_files(out, run)
    missing = sorted(set(indices) - {r["index"] for r in records})
    if missing:  # a rank's shard file on a disk rank 0 cannot see (multi-node without a shared --out folder)
        warnings.warn(f"{out}: {len(missing)} requested images are missing after the merge (first: {missing[:5]}); "
                      "every rank must write --out on a filesystem rank 0 can read", stacklevel=2)
    print(f"{out}: {len(records)} images; certified top-k accuracy (rows k, columns #perturbed pixels):")
    print(format_accuracy_table(accuracy_table(records, ks)), end="")
    return records


def main(argv: list[str] | None = None) -> list[Record] | None:
    """Run the command line; returns the run's records on rank 0 (None on other ranks)."""
    args = parse_args(argv)
    if args.from_counts is not None:
        try:
            return recertify(Path(args.from_counts), Path(args.out), args.k, args.alpha)
        except (EvaluationError, ResultsError) as exc:
            raise SystemExit(f"error: {exc}") from None
    ranks = join_process_group()
    try:
        return evaluate(args, ranks)
    except (EvaluationError, ResultsError, CheckpointError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
