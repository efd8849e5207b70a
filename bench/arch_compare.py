"""Choose the CPU-first CIFAR-10 base classifier (e = 50) by measurement: for each candidate, (a) CPU inference
samples/s of the ablated model and (b) single-ablation accuracy after the same fixed training budget.

(b) Every candidate is trained by ``certcore.models.training.main`` (no second training loop) with the same budget: the
same number of epochs over the same training images (by default the offline 45,000-image JPEG training split), batch,
peak lr, seed 0 and schedule shape (cosine over the budget's steps unless the candidate says otherwise). A candidate is
a name and the trainer options that make it (architecture, init, distillation, lr schedule). Its accuracy is measured
on held-out data only, never on the 500 evaluation images (test images 0, 2, ..., 998; the trainer still computes that
number into the candidate's checkpoint, this script neither reads nor reports it):
  * the validation split (last ``--val-size`` training images, JPEG like the training images);
  * test images 1, 3, ..., 999 twice, as exact pixels and as their JPEG (q75) versions: on the same images, the
    difference is the JPEG shift between the JPEG training data and the exact pixels the app certifies.
(a) The trained model is timed on the path certification takes (``certcore.engine.sampling.sample_counts``: masks drawn
in one shot, encoding fed channels_last, ``torch.inference_mode``), one batch per candidate per round, the order
rotating every round so that load changes on a shared machine hit every candidate alike; medians are reported.

    python bench/arch_compare.py [--budget-epochs 2] [--candidates NAME ... | 'NAME=TRAIN OPTIONS'] [--threads 2]
    python bench/arch_compare.py --smoke     # tiny run (tests): 1 candidate, a few steps, 1 timing round

Checkpoints and resumable states go to ``--work-dir``; a candidate whose state exists there is resumed (so an
interrupted comparison continues), so delete the folder to retrain from scratch. Results:
``--out-dir``/arch_compare.{md,json} (arch_compare_smoke.* with --smoke).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from certcore.engine.sampling import default_batch_size, describe_device, sample_counts  # noqa: E402
from certcore.models import training as train  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import ImageSet, cifar10_offline, shared_data_dir  # noqa: E402

CLEAN20 = ("--arch", "resnet20", "--init", "clean-resnet20")
CANDIDATES: dict[str, tuple[str, ...]] = {
    "resnet20-scratch": ("--arch", "resnet20"),
    "resnet20-clean": CLEAN20,
    "resnet20-clean-distill20": (*CLEAN20, "--distill", "clean-resnet20"),
    "resnet20-clean-distill56": (*CLEAN20, "--distill", "clean-resnet56"),
    "resnet20-clean-constant-lr": (*CLEAN20, "--lr-schedule", "constant"),
    "resnet56-clean": ("--arch", "resnet56", "--init", "clean-resnet56"),
}
SMOKE = {
    "budget_epochs": 1,
    "train_limit": 320,
    "val_size": 64,
    "batch_size": 64,
    "bn_batches": 2,
    "eval_repeats": 1,
    "heldout_images": 20,
    "rounds": 1,
    "batch": 100,
    "candidates": ["resnet20-clean-distill20"],
}
CPU = torch.device("cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; with --smoke the SMOKE values become the defaults (explicit options still win)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny run that only checks the script works")
    p.add_argument(
        "--candidates",
        nargs="+",
        default=list(CANDIDATES),
        help=f"names from {', '.join(CANDIDATES)}, or 'NAME=TRAIN OPTIONS' (e.g. 'r20-lr01=--arch resnet20 --lr 0.1')",
    )
    p.add_argument("--budget-epochs", type=int, default=2, help="training budget of every candidate, in epochs")
    p.add_argument("--e", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak lr (a candidate's own --lr overrides it)")
    p.add_argument("--train-limit", type=int, default=0, help="first N training images only (0 = all 50,000)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--bn-batches", type=int, default=100)
    p.add_argument("--eval-repeats", type=int, default=10, help="ablations per held-out image")
    p.add_argument("--heldout-images", type=int, default=500, help="how many of test images 1, 3, ..., 999")
    p.add_argument("--rounds", type=int, default=5, help="inference timing rounds (one call per candidate each)")
    p.add_argument("--batch", type=int, default=1000, help="samples per timed sample_counts call (CPU default batch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for training and timing (0 = default)")
    p.add_argument("--shared-data", type=Path, default=None, help="offline data folder (default: shared_data_dir())")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "arch_compare")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    smoke, _ = p.parse_known_args(argv)
    if smoke.smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


def candidate(spec: str) -> tuple[str, tuple[str, ...]]:
    """A built-in candidate's name, or 'NAME=TRAIN OPTIONS', as (name, trainer options)."""
    if "=" in spec:
        name, options = spec.split("=", 1)
        return name, tuple(shlex.split(options))
    if spec not in CANDIDATES:
        raise SystemExit(f"unknown candidate {spec!r}: use one of {', '.join(CANDIDATES)} or 'NAME=TRAIN OPTIONS'")
    return spec, CANDIDATES[spec]


def train_argv(args: argparse.Namespace, name: str, options: tuple[str, ...]) -> list[str]:
    """certcore.train options of one candidate under the shared budget (its own options come last and win)."""
    run = args.work_dir / name
    shared = ["--shared-data", str(args.shared_data)] if args.shared_data else []
    threads = ["--threads", str(args.threads)] if args.threads else []
    return [
        "--dataset", "cifar10", "--e", str(args.e), "--epochs", str(args.budget_epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", "0",
        "--train-limit", str(args.train_limit), "--val-size", str(args.val_size), "--bn-batches", str(args.bn_batches),
        "--eval-repeats", str(args.eval_repeats), "--device", "cpu", "--save-every-steps", "100", "--log-every", "50",
        "--out", str(run / "ck.pt"), "--state", str(run / "state.pt"), *shared, *threads, *options,
        *(["--resume"] if (run / "state.pt").exists() else []),
    ]  # fmt: skip


def heldout_test_sets(shared: Path, count: int) -> dict[str, ImageSet]:
    """Test images 1, 3, ..., 999 (the first ``count``; the evaluation set is the even ones) as exact pixels and
    as their JPEG q75 versions, in the same order."""
    odd = list(range(1, 1000, 2))[:count]
    exact = cifar10_offline(shared, "test-lossless")
    jpeg = cifar10_offline(shared, "test")
    with np.load(shared / "cifar10" / "cifar10_test_jpeg.npz", allow_pickle=False) as d:
        row = {int(o): r for r, o in enumerate(d["orig_index"]) if o >= 0}
    sets = {
        "test_odd_exact": exact.subset(odd, exact.source + ":odd"),
        "test_odd_jpeg": jpeg.subset([row[i] for i in odd], jpeg.source + ":odd"),
    }
    if not torch.equal(sets["test_odd_exact"].labels, sets["test_odd_jpeg"].labels):
        raise SystemExit("the JPEG and exact test images do not line up (labels differ)")
    return sets


def time_inference(models: dict[str, torch.nn.Module], image: torch.Tensor, args: argparse.Namespace) -> dict:
    """Median samples/s of one sample_counts batch per model, rounds interleaved in rotating order."""

    def seconds(model: torch.nn.Module) -> float:
        start = time.perf_counter()
        # one batch at a time (workers=1): the architectures compared on equal terms, as in README's table
        sample_counts(model, image, args.e, args.batch, seed=0, num_classes=10, workers=1)
        return time.perf_counter() - start

    names = list(models)
    for model in models.values():  # warm-up: oneDNN primitives
        seconds(model)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(seconds(models[n]))
    return {n: {"samples_per_s": args.batch / statistics.median(t), "seconds": t} for n, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and measure every candidate, write the markdown and JSON reports; returns the JSON record."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = args.shared_data or shared_data_dir()
    candidates = dict(candidate(s) for s in args.candidates)
    load_before = os.getloadavg()
    rows: dict[str, dict[str, Any]] = {}
    models = {}
    for name, options in candidates.items():
        print(f"== {name}: {' '.join(options)}", flush=True)
        start = time.perf_counter()
        meta = train.main(train_argv(args, name, options))
        wall = time.perf_counter() - start
        t = meta["training"]
        seen = t["epochs"] * (t["train_size"] // t["batch_size"]) * t["batch_size"]
        rows[name] = {
            "options": " ".join(options),
            "arch": meta["arch"],
            "init": t["init"],
            "distillation": t["distillation"],
            "lr_schedule": t["lr_schedule"],
            "val_ablated": meta["accuracies"]["val_ablated"],
            "training_time_s": meta["training_time_s"],
            "images_seen": seen,
            "train_images_per_s": seen / meta["training_time_s"],
            "call_wall_s": round(wall, 1),
        }
        models[name], _ = load_checkpoint(args.work_dir / name / "ck.pt", dataset="cifar10", e=args.e)
    heldout = heldout_test_sets(shared, args.heldout_images)
    one = train.Dist(0, 1, CPU)
    for name, model in models.items():
        for key, images in heldout.items():
            rows[name][key] = train.ablated_accuracy(model, images, args.e, args.eval_repeats, one)
        rows[name]["jpeg_minus_exact"] = rows[name]["test_odd_jpeg"] - rows[name]["test_odd_exact"]
    image = heldout["test_odd_exact"].images[0].float().div(255)
    for name, speed in time_inference(models, image, args).items():
        rows[name]["inference"] = speed
    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", "bench/arch_compare.py", *(sys.argv[1:] if argv is None else argv)],
        "device": describe_device(CPU),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_before_after": [load_before, os.getloadavg()],
        "budget": {
            "epochs": args.budget_epochs,
            "train_images": t["train_size"],
            "images_seen": seen,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": 0,
            "e": args.e,
            "train_data": t["train_data"],
        },
        "heldout": {
            "val_ablated": f"last {t['val_size']} training images (JPEG), {args.eval_repeats} ablations each",
            "test_odd": f"test images 1, 3, ... ({args.heldout_images} images), exact and JPEG q75, "
            f"{args.eval_repeats} ablations each",
        },
        "inference": {
            "samples": args.batch,
            "batch_size": default_batch_size(CPU),
            "rounds": args.rounds,
            "path": "certcore.engine.sampling.sample_counts",
        },
        "candidates": rows,
    }
    write_reports(record, args.out_dir / ("arch_compare_smoke" if args.smoke else "arch_compare"))
    return record


def write_reports(record: dict[str, Any], stem: Path) -> None:
    """``stem``.json (everything) and ``stem``.md (the table)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    b, inf = record["budget"], record["inference"]
    lines = [
        f"# Architecture comparison (CIFAR-10, e = {b['e']})",
        "",
        f"`{shlex.join(record['command'])}` ({record['created']})",
        "",
        f"Device: {record['device']}, torch {record['torch']}; load average (1, 5, 15 min) before / after: "
        + " / ".join(", ".join(f"{x:.1f}" for x in la) for la in record["loadavg_before_after"]),
        "",
        f"Budget per candidate: {b['epochs']} epochs = {b['images_seen']:,} training images seen "
        f"({b['train_images']:,} images of {b['train_data']}), batch {b['batch_size']}, peak lr {b['lr']}, seed 0. "
        f"Inference: `sample_counts`, {inf['samples']:,} samples per call at batch {inf['batch_size']}, "
        f"median of {inf['rounds']} interleaved rounds.",
        "",
        "| candidate | trainer options | inference samples/s | val acc | test-odd exact | test-odd JPEG | "
        "JPEG - exact | training time | train images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in record["candidates"].items():
        lines.append(
            f"| {name} | `{r['options']}` | {r['inference']['samples_per_s']:,.0f} | {100 * r['val_ablated']:.1f}% | "
            f"{100 * r['test_odd_exact']:.1f}% | {100 * r['test_odd_jpeg']:.1f}% | "
            f"{100 * r['jpeg_minus_exact']:+.1f} pp | {train.fmt_time(r['training_time_s'])} | "
            f"{r['train_images_per_s']:,.0f} |"
        )
    h = record["heldout"]
    lines += [
        "",
        f"Accuracies are single-ablation base-classifier accuracies on held-out data only: val = {h['val_ablated']}; "
        f"test-odd = {h['test_odd']} (the 500 evaluation images are the even ones and are not used). "
        "One seed per candidate: differences of a point or two are within training noise and the sampling error of "
        "the held-out sets (about 0.7 pp standard error for 5,000 images, 2 pp for 500).",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
