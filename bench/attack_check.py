"""Empirical l0 attack check: try to break certified CIFAR-10 images with greedy pixel attacks.

For each bundled CIFAR-10 sample the smoothed classifier gets right, certify its true label in the top-k from n
ablated samples (the same SimuEM bounds and Theorem 1 radius as ``certcore.engine.certificate``), then attack it:
change up to m pixels to extreme colours (each channel 0 or 1), m in {r, 2r, 5r, 20r, 100} for the certified radius r.

Attack (greedy, on the smoothed classifier itself): a fixed set of ``--n-attack`` ablation masks stands in for the
smoothed classifier. One pixel at a time, up to ``--exact-pixels`` pixels, the next pixel and colour are the
candidate that lowers the true label's count over those masks the most (ties: its summed softmax probability);
the candidates are the ``--candidates`` pixels whose best corner colour the gradient ranks highest plus as many
random ones, each scored exactly by re-classifying only the masks that keep it. Past ``--exact-pixels`` pixels
(large budgets only) pixels are added in ``--chunks`` steps per budget: up to 96 gradient-ranked candidates plus
random ones are each scored exactly on their own and the best ones are applied together.

Success is judged on fresh samples: the ``n`` certification masks, re-classified where they keep a changed pixel.
An attack succeeds when the true label leaves the top-k of those counts. The theory says no attack within r can
succeed (with probability >= 1 - alpha); the figures at 2r..100 pixels show how far from vacuous the radius is.
"affected" is the share of samples that keep at least one changed pixel: the most any attack can move.

    nice -n 10 python bench/attack_check.py                       # the app's default checkpoint
    nice -n 10 python bench/attack_check.py --state checkpoints/state/cifar10_resnet20_e50.state.pt  # a snapshot

Writes a JSON report (``--out``) and prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import certcore  # noqa: E402
from certcore.engine.ablation import draw_keep_masks, encode_ablated  # noqa: E402
from certcore.engine.certificate import certificate_from_counts, top_k_labels  # noqa: E402
from certcore.engine.sampling import describe_device  # noqa: E402
from certcore.models.architectures import build_model  # noqa: E402
from certcore.models.checkpoints import checkpoint_sha256, load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402
from certcore.views.default_result import DEFAULT_CHECKPOINT, checkpoint_dir  # noqa: E402

BUDGETS = ("r", "2r", "5r", "20r", "100")


@dataclass
class ImageResult:
    """One certified image: its radius and, per budget, the pixels changed and whether the attack succeeded."""

    sample: str
    label: int
    counts: list[int]
    radius: int
    seconds: float = 0.0
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- classifier


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def labels_and_probs(model: nn.Module, image: torch.Tensor, masks: torch.Tensor, label: int,
                     batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The base classifier's label for each ablation mask of ``image`` and its softmax probability of ``label``."""
    labels, probs = [], []
    with torch.inference_mode():
        for part in _chunks(len(masks), batch):
            keep = masks[part]
            logits = model(encode_ablated(image.expand(len(keep), -1, -1, -1), keep)
                           .contiguous(memory_format=torch.channels_last))
            labels.append(logits.argmax(1))
            probs.append(torch.softmax(logits.float(), 1)[:, label])
    return torch.cat(labels), torch.cat(probs)


def label_gradient(model: nn.Module, image: torch.Tensor, masks: torch.Tensor, label: int,
                   batch: int = 128) -> torch.Tensor:
    """Gradient (C, H, W) of the summed softmax probability of ``label`` over ``masks`` with respect to the image."""
    x = image.detach().clone().requires_grad_(True)
    for part in _chunks(len(masks), batch):
        keep = masks[part]
        logits = model(encode_ablated(x.expand(len(keep), -1, -1, -1), keep)
                       .contiguous(memory_format=torch.channels_last))
        torch.softmax(logits, 1)[:, label].sum().backward()
    return x.grad.detach()


def best_corners(image: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the corner colour (each channel 0 or 1) the first-order model says lowers the label most, and
    that predicted change (H*W,), most negative = most promising."""
    corner = (grad < 0).to(image.dtype)  # raise a channel where raising it lowers the label's probability
    gain = (grad * (corner - image)).sum(0)
    return corner.flatten(1), gain.flatten()


# --------------------------------------------------------------------------------------------- attack


@dataclass
class AttackState:
    """The perturbed image and the base classifier's answers on the attack masks."""

    image: torch.Tensor  # (C, H, W) current perturbed image
    pixels: list[int]
    labels: torch.Tensor  # (N,) label per attack mask
    probs: torch.Tensor  # (N,) softmax prob of the true label per attack mask


def _apply(image: torch.Tensor, pixel: int, colour: torch.Tensor) -> torch.Tensor:
    out = image.clone()
    c, h, w = image.shape
    out.view(c, h * w)[:, pixel] = colour
    return out


def greedy_attack(model: nn.Module, image: torch.Tensor, label: int, e: int, budgets: list[int], *,
                  n_attack: int, candidates: int, exact_pixels: int, chunks: int, seed: int,
                  pool_cap: int = 96) -> dict[int, list]:
    """Pixels (and colours) to change for each budget in ``budgets`` (nested: a larger budget extends a smaller).

    Returns {budget: [(pixel, colour tuple), ...]}.
    """
    c, h, w = image.shape
    d = h * w
    gen = torch.Generator().manual_seed(seed)
    masks = draw_keep_masks(n_attack, h, w, e, gen)
    flat_masks = masks.view(n_attack, d)
    labels, probs = labels_and_probs(model, image, masks, label)
    state = AttackState(image.clone(), [], labels, probs)
    changes: list[tuple[int, tuple[float, ...]]] = []
    result: dict[int, list] = {}
    rng = np.random.default_rng(seed)
    grad_age = math.inf
    corner = gain = None

    def score(pixel: int, colour: torch.Tensor) -> tuple[int, float, torch.Tensor, torch.Tensor, torch.Tensor]:
        affected = flat_masks[:, pixel].nonzero().flatten()
        trial = _apply(state.image, pixel, colour)
        new_labels, new_probs = state.labels.clone(), state.probs.clone()
        if len(affected):
            lab, pr = labels_and_probs(model, trial, masks[affected], label)
            new_labels[affected], new_probs[affected] = lab, pr
        return int((new_labels == label).sum()), float(new_probs.sum()), trial, new_labels, new_probs

    for budget in sorted(set(budgets)):
        chunk = max(1, math.ceil((min(budget, d) - max(len(state.pixels), exact_pixels)) / chunks))
        while len(state.pixels) < min(budget, d):
            if len(state.pixels) < exact_pixels:
                if grad_age >= 4:
                    corner, gain = best_corners(state.image, label_gradient(model, state.image, masks, label))
                    grad_age = 0
                free = torch.ones(d, dtype=torch.bool)
                free[state.pixels] = False
                ranked = [int(p) for p in torch.argsort(gain) if free[p]]
                pool = ranked[:candidates]
                rest = ranked[candidates:]
                if rest:
                    pool += [int(p) for p in rng.choice(rest, size=min(candidates, len(rest)), replace=False)]
                best = None
                for pixel in pool:
                    colour = corner[:, pixel]
                    scored = score(pixel, colour)
                    if best is None or scored[:2] < best[1][:2]:
                        best = (pixel, scored)
                pixel, (_, _, trial, new_labels, new_probs) = best
                state = AttackState(trial, [*state.pixels, pixel], new_labels, new_probs)
                changes.append((pixel, tuple(float(v) for v in corner[:, pixel])))
                grad_age += 1
            else:  # large budgets: several pixels per step, each scored exactly on its own, the best kept
                size = min(chunk, min(budget, d) - len(state.pixels))
                corner, gain = best_corners(state.image, label_gradient(model, state.image, masks, label))
                grad_age = math.inf
                free = torch.ones(d, dtype=torch.bool)
                free[state.pixels] = False
                ranked = [int(p) for p in torch.argsort(gain) if free[p]]
                pool = ranked[: min(3 * size, pool_cap)]
                rest = ranked[len(pool):]
                if rest:
                    pool += [int(p) for p in rng.choice(rest, size=min(candidates, len(rest)), replace=False)]
                scored = sorted(pool, key=lambda p: score(p, corner[:, p])[:2])
                picked = scored[: max(size, 1)]
                image_now = state.image.clone()
                for pixel in picked:
                    image_now = _apply(image_now, pixel, corner[:, pixel])
                    changes.append((pixel, tuple(float(v) for v in corner[:, pixel])))
                new_labels, new_probs = labels_and_probs(model, image_now, masks, label)
                state = AttackState(image_now, [*state.pixels, *picked], new_labels, new_probs)
        result[budget] = list(changes[: min(budget, d)])
    return result


def perturb(image: torch.Tensor, changes: list[tuple[int, tuple[float, ...]]]) -> torch.Tensor:
    """``image`` with each (pixel, colour) of ``changes`` applied."""
    out = image.clone()
    for pixel, colour in changes:
        out = _apply(out, pixel, torch.tensor(colour, dtype=image.dtype))
    return out


def evaluate_attack(model: nn.Module, image: torch.Tensor, label: int, masks: torch.Tensor, clean_labels: torch.Tensor,
                    changes: list, k: int) -> dict[str, Any]:
    """Counts of the perturbed image on the evaluation masks (only masks keeping a changed pixel are re-classified)."""
    n, h, w = masks.shape
    num_classes = int(clean_labels.max()) + 1
    flat = masks.view(n, h * w)
    pixels = torch.tensor([p for p, _ in changes], dtype=torch.long)
    affected = flat[:, pixels].any(1).nonzero().flatten() if len(pixels) else torch.empty(0, dtype=torch.long)
    new_labels = clean_labels.clone()
    if len(affected):
        new_labels[affected], _ = labels_and_probs(model, perturb(image, changes), masks[affected], label)
    counts = torch.bincount(new_labels, minlength=max(num_classes, label + 1)).tolist()
    return {
        "pixels": len(changes),
        "affected": len(affected) / n,
        "true_label_count": counts[label],
        "counts": counts,
        "success": label not in top_k_labels(counts, k),
    }


# --------------------------------------------------------------------------------------------- driver


def load_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The base classifier and a description of where it came from (name, file SHA-256, e, training position)."""
    if args.state:
        blob = torch.load(args.state, map_location="cpu", weights_only=True)
        config = json.loads(blob["config"])
        model = build_model(config["arch"], 10)
        model.load_state_dict(blob["model"])
        pos = blob.get("position", {})
        return model.eval(), {"name": f"{Path(args.state).name} (training-state snapshot, epoch {pos.get('epoch')} "
                                      f"step {pos.get('step_in_epoch')}, global step {pos.get('global_step')})",
                              "sha256": checkpoint_sha256(args.state), "e": int(config["e"]),
                              "dataset": config["dataset"]}
    path = Path(args.checkpoint) if args.checkpoint else checkpoint_dir() / DEFAULT_CHECKPOINT
    if not path.is_file():
        raise SystemExit(f"error: no checkpoint at {path}; pass --checkpoint PATH or --state PATH")
    model, meta = load_checkpoint(path, dataset="cifar10")
    return model, {"name": path.name, "sha256": checkpoint_sha256(path), "e": int(meta["e"]), "dataset": "cifar10",
                   "weights_sha256": meta["weights_sha256"],
                   "status": meta.get("status") or meta.get("training", {}).get("status")}


def budget_values(radius: int, names: list[str], d: int) -> dict[str, int]:
    """Budget name -> number of pixels (r, 2r, ... scale with the radius; a plain number is that many pixels)."""
    out = {}
    for name in names:
        m = int(name[:-1] or 1) * radius if name.endswith("r") else int(name)
        out[name] = max(1, min(d, m))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, source = load_model(args)
    e = args.e or source["e"]
    samples = bundled_samples("cifar10")
    results: list[ImageResult] = []
    screened = skipped = 0
    started = time.perf_counter()
    for index, sample in enumerate(samples):
        if len(results) >= args.images or time.perf_counter() - started > args.max_seconds:
            break
        t0 = time.perf_counter()
        image, label = sample.image, sample.label
        h, w = image.shape[1:]
        d = h * w
        screened += 1
        quick, _ = labels_and_probs(model, image, draw_keep_masks(args.screen, h, w, e,
                                                                   torch.Generator().manual_seed(args.seed)), label)
        if label not in top_k_labels(torch.bincount(quick, minlength=10).tolist(), args.k):
            skipped += 1
            continue
        eval_masks = draw_keep_masks(args.n, h, w, e, torch.Generator().manual_seed(args.seed + 1 + index))
        clean, _ = labels_and_probs(model, image, eval_masks, label)
        counts = torch.bincount(clean, minlength=10).tolist()
        cert = certificate_from_counts(counts, d=d, e=e, k=args.k, alpha=args.alpha, label=label)
        radius = cert.radius_of(label)
        if radius < 1:
            skipped += 1
            continue
        budgets = budget_values(radius, args.budgets, d)
        changes = greedy_attack(model, image, label, e, list(budgets.values()), n_attack=args.n_attack,
                                candidates=args.candidates, exact_pixels=max(args.exact_pixels, 2 * radius + 1),
                                chunks=args.chunks, seed=args.seed + 1000 + index)
        item = ImageResult(sample.id, label, counts, radius)
        for name, m in budgets.items():
            item.budgets[name] = evaluate_attack(model, image, label, eval_masks, clean, changes[m], args.k)
        item.seconds = round(time.perf_counter() - t0, 1)
        results.append(item)
        row = " ".join(f"{name}={v['pixels']}:{'BROKEN' if v['success'] else 'held'}({v['true_label_count']})"
                       for name, v in item.budgets.items())
        print(f"{sample.id} label {label} r={radius} count {counts[label]}/{args.n} | {row} | {item.seconds}s",
              file=sys.stderr, flush=True)
    summary = {}
    for name in args.budgets:
        rows = [r.budgets[name] for r in results]
        summary[name] = {
            "attacked": len(rows),
            "succeeded": sum(r["success"] for r in rows),
            "mean_pixels": float(np.mean([r["pixels"] for r in rows])) if rows else None,
            "mean_affected": float(np.mean([r["affected"] for r in rows])) if rows else None,
        }
    return {
        "command": " ".join(sys.argv),
        "model": source,
        "device": describe_device(torch.device("cpu")),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "certcore_version": certcore.__version__,
        "params": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "e": e,
        "images_screened": screened,
        "images_skipped_not_certified": skipped,
        "seconds": round(time.perf_counter() - started, 1),
        "images": [asdict(r) for r in results],
        "summary": summary,
        "within_radius_broken": summary.get("r", {}).get("succeeded"),
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary table for bench/RESULTS.md."""
    lines = [
        "| budget | images attacked | attacks that succeeded | mean pixels changed | mean share of samples touched |",
        "|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        mean_px = "-" if s["mean_pixels"] is None else f"{s['mean_pixels']:.1f}"
        touched = "-" if s["mean_affected"] is None else f"{100 * s['mean_affected']:.0f}%"
        lines.append(f"| {name} | {s['attacked']} | {s['succeeded']} | {mean_px} | {touched} |")
    radii = [r["radius"] for r in report["images"]]
    lines.append("")
    lines.append(f"Model: {report['model']['name']} (file SHA-256 {report['model']['sha256'][:16]}...); device: "
                 f"{report['device']}; {len(radii)} certified images (radii {radii}) of {report['images_screened']} "
                 f"screened; {report['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="certcore checkpoint (default: the app's default CIFAR-10 checkpoint)")
    src.add_argument("--state", help="a training state file (python -m certcore.train --state): attack its weights")
    p.add_argument("--images", type=int, default=6, help="certified images to attack")
    p.add_argument("--k", type=int, default=1, help="top-k certified and attacked")
    p.add_argument("--n", type=int, default=1000, help="samples to certify and to judge each attack")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--e", type=int, default=None, help="pixels kept (default: the model's)")
    p.add_argument("--n-attack", type=int, default=128, help="ablation masks the greedy attack optimises over")
    p.add_argument("--candidates", type=int, default=8, help="gradient-ranked (and as many random) candidates/step")
    p.add_argument("--exact-pixels", type=int, default=12, help="pixels chosen one at a time by exact counts "
                                                                "(at least 2r + 1)")
    p.add_argument("--chunks", type=int, default=3, help="gradient re-computations per large budget")
    p.add_argument("--budgets", nargs="+", default=list(BUDGETS))
    p.add_argument("--screen", type=int, default=64, help="samples of the quick check that skips wrong images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=480, help="stop starting new images after this long")
    p.add_argument("--out", default=str(REPO / "bench" / "attack_check.json"))
    args = p.parse_args(argv)
    for name in ("images", "k", "n", "n_attack", "candidates", "chunks", "screen", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.alpha < 1:
        p.error("--alpha must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(args.out)
    print(markdown(report), end="")
    return report


if __name__ == "__main__":
    main()
