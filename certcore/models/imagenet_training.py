"""Adapt the pretrained EfficientNet-Lite0 to ablated ImageNet images by distillation (``python -m
certcore.models.imagenet_training``).

No labelled ImageNet training set is available offline, only the 900 ``train_pool`` images of the shared data (one
per class whose index is not a multiple of 10). The clean pretrained network is the teacher: it sees a randomly
resized, cropped and flipped 224 x 224 image; the student (``certcore.models.imagenet``, initialised from the same
weights) sees ablations of that same image, e of the 50,176 pixels kept, a fresh mask every time, and learns to
match the teacher's softened prediction (``certcore.models.training.distillation_loss``). Each teacher forward serves
``--masks-per-image`` student samples. Three options widen the 800 training images into many more points at which the
student learns the teacher's function (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent"): ``--mixup p`` blends a share p of the crops each with another crop of the batch (weight uniform in [0, 1];
teacher and student see the same blend), ``--augment trivialaugment`` gives each crop one random colour or geometric
operation first (torchvision's TrivialAugmentWide), ``--cifar-fraction`` draws that share of each step's crops from the
50,000 CIFAR-10 training images of the shared data, upsampled (the teacher's soft output is the target, so they need no
ImageNet label). ``--train-stages s`` trains only the stem and the first s of the network's 7 stages; the rest stays the
pretrained classifier (weights and BatchNorm statistics), so the student only learns to read ablated images, with far
fewer weights to overfit. ``--feature-weight w`` adds a dense target there: w times the mean squared difference between
the student's feature map after stage s and the clean network's on the clean image at the front end's internal
resolution, relative to the latter's mean square. The 100 train-pool images of classes 5, 15, ..., 995 are held out for
model selection; the 100 bundled evaluation samples are never touched here.

Schedule: linear warm-up, then cosine decay over ``--total-steps`` to ``--min-lr-ratio`` of the peak, plus an
exponential moving average (EMA) of the weights, so a run cut at any point still has a low-noise model to export.
The full state (model, EMA, optimiser, scheduler, step, generators, history) is written atomically every
``--save-minutes`` and on SIGTERM/SIGINT; ``--resume`` continues the same run, with the same options except
``--total-steps``, which may be changed to stretch the schedule when the CPU turns out faster or slower than planned
(the change is recorded in the history). ``--export`` writes the certcore
checkpoint from a state file (without disturbing a run that is still writing it).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from certcore.engine.ablation import ablate
from certcore.engine.sampling import describe_device
from certcore.models.checkpoints import atomic_torch_save, save_checkpoint
from certcore.models.data import (
    bundled_samples,
    cifar10_offline,
    class_names,
    imagenet_eval_transform,
    shared_data_dir,
)
from certcore.models.imagenet import (
    FRONT_ENDS,
    IMAGENET_SIZE,
    NUM_CLASSES,
    WEIGHTS_NOTICE,
    build_imagenet_model,
    clean_imagenet_classifier,
    early_stages,
)
from certcore.models.training import (
    ENCODING,
    average_batchnorm_statistics,
    distillation_loss,
    fmt_time,
    restore_generators,
    rng_restore,
    rng_snapshot,
)

HELDOUT_EVERY = 10  # train-pool classes 5, 15, ..., 995 are held out (the bundled samples are 0, 10, ..., 990)
HELDOUT_OFFSET = 5
EVAL_SEED = 20220425
CONFIG_KEYS = (
    "arch", "e", "images_per_step", "masks_per_image", "lr", "weight_decay", "warmup_steps", "total_steps",
    "min_lr_ratio", "ema_decay", "temperature", "distill_weight", "crop_scale", "seed", "mixup", "cifar_fraction",
    "train_stages", "feature_weight", "augment",
)


@dataclass(frozen=True)
class Pool:
    """Decoded train-pool images (uint8 C x H x W, sizes vary) with their ImageNet labels."""

    images: list[torch.Tensor]
    labels: torch.Tensor
    files: list[str]


def load_pool(data_root: str | Path) -> tuple[Pool, Pool]:
    """The 900 train-pool images under ``data_root/imagenet/train_pool``, split into (train 800, held-out 100)."""
    folder = Path(data_root) / "imagenet" / "train_pool"
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    parts: dict[bool, tuple[list, list, list]] = {True: ([], [], []), False: ([], [], [])}
    for r in rows:
        label = int(r["class_index"])
        with Image.open(folder / "images" / r["file"]) as im:
            img = TF.pil_to_tensor(im.convert("RGB"))
        images, labels, files = parts[label % HELDOUT_EVERY == HELDOUT_OFFSET]
        images.append(img)
        labels.append(label)
        files.append(r["file"])
    train, held = (Pool(i, torch.tensor(lab), fl) for i, lab, fl in (parts[False], parts[True]))
    return train, held


def cifar10_pool(data_root: str | Path) -> Pool:
    """The 50,000 CIFAR-10 training images (32 x 32) as extra, unlabelled distillation images (labels -1)."""
    images = cifar10_offline(data_root, "train").images
    return Pool(list(images), torch.full((len(images),), -1), [f"cifar10-train-{i}" for i in range(len(images))])


def mix(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mixup within the batch: image i becomes lam_i x_i + (1 - lam_i) x_perm(i), lam_i uniform in [0, 1]."""
    perm = torch.randperm(len(x), generator=generator)
    lam = torch.rand(len(x), 1, 1, 1, generator=generator)
    return lam * x + (1 - lam) * x[perm]


def trivial_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's TrivialAugmentWide applied to each image of ``x`` (float in [0, 1], made from uint8 crops):
    one random colour or geometric operation of random strength per image. Its randomness is drawn from
    ``generator`` (through a seed for a forked global generator, which TrivialAugmentWide uses)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    op = v2.TrivialAugmentWide()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = x.mul(255).round_().to(torch.uint8)
        return torch.stack([op(image) for image in images]).float().div_(255)


def heldout_images(pool: Pool) -> torch.Tensor:
    """The held-out images as the evaluation transform makes them: float (N, 3, 224, 224), centre crop."""
    tf = imagenet_eval_transform()
    return torch.stack([tf(img) for img in pool.images])


def random_resized_crops(
    pool: Pool, count: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random images of ``pool`` (with replacement), each randomly resized-cropped to 224 x 224 (area
    fraction in ``scale``, aspect ratio in [3/4, 4/3]) and flipped with probability 1/2: float images in [0, 1] and
    labels. All randomness comes from ``generator``."""
    idx = torch.randint(len(pool.images), (count,), generator=generator)
    u = torch.rand(count, 4, generator=generator, dtype=torch.float64)
    out = []
    for i, (ua, ur, ux, uy) in zip(idx.tolist(), u.tolist(), strict=True):
        img = pool.images[i]
        h, w = img.shape[-2:]
        area = h * w * (scale[0] + ua * (scale[1] - scale[0]))
        ratio = math.exp(math.log(3 / 4) + ur * (math.log(4 / 3) - math.log(3 / 4)))
        ch = min(h, round(math.sqrt(area / ratio)))
        cw = min(w, round(math.sqrt(area * ratio)))
        top, left = round(uy * (h - ch)), round(ux * (w - cw))
        out.append(TF.resized_crop(img, top, left, ch, cw, [IMAGENET_SIZE, IMAGENET_SIZE], antialias=True))
    x = torch.stack(out).float().div_(255)
    flips = torch.rand(count, generator=generator) < 0.5
    x[flips] = x[flips].flip(-1)
    return x, pool.labels[idx]


@torch.inference_mode()
def ablated_topk(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, e: int, repeats: int, batch: int = 50
) -> dict[str, float]:
    """Single-ablation top-1 and top-5 accuracy: ``repeats`` ablations per image from a fixed seed (EVAL_SEED)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    top1 = top5 = 0
    for _ in range(repeats):
        for s in range(0, len(images), batch):
            x, y = images[s : s + batch], labels[s : s + batch]
            top = model(ablate(x, e, gen).contiguous(memory_format=torch.channels_last)).topk(5, dim=1).indices
            top1 += int((top[:, 0] == y).sum())
            top5 += int((top == y[:, None]).any(dim=1).sum())
    model.train(was_training)
    n = repeats * len(images)
    return {"top1": top1 / n, "top5": top5 / n}


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, cosine to ``min_ratio`` at ``total``, then flat."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m certcore.imagenet_training", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=tuple(FRONT_ENDS), default="effnetlite0")
    p.add_argument("--e", type=int, default=1000, help="pixels kept per ablation (of 224 x 224 = 50,176)")
    p.add_argument("--images-per-step", type=int, default=16, help="augmented images (teacher forwards) per step")
    p.add_argument("--masks-per-image", type=int, default=2, help="ablations of each augmented image per step")
    p.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--total-steps", type=int, default=10_000, help="steps of the cosine schedule and of the run")
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="lr at --total-steps, as a fraction of --lr")
    p.add_argument("--ema-decay", type=float, default=0.998, help="decay of the weights' moving average per step")
    p.add_argument("--temperature", type=float, default=2.0, help="T of the distillation softmax")
    p.add_argument("--distill-weight", type=float, default=1.0, help="w: loss = (1-w) CE + w T^2 KL")
    p.add_argument("--crop-scale", type=float, default=0.25, help="smallest area fraction of a random crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixup", type=float, default=0.0,
                   help="probability that a crop is blended with another crop of the batch (needs --distill-weight 1)")
    p.add_argument("--train-stages", type=int, default=0,
                   help="train only the stem and the first S of the 7 stages, the rest stays pretrained (0: train all)")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of the feature-map loss after stage --train-stages (needs --train-stages)")
    p.add_argument("--cifar-fraction", type=float, default=0.0,
                   help="share of each step's crops taken from the CIFAR-10 training images (needs --distill-weight 1)")
    p.add_argument("--augment", choices=("none", "trivialaugment"), default="none",
                   help="extra augmentation of each crop before mixup (teacher and student see the same image)")
    p.add_argument("--data-root", default=None,
                   help="shared data folder (default: CERTCORE_SHARED_DATA or ../shared/data)")
    p.add_argument("--state", default="checkpoints/state/imagenet_effnetlite0_e1000.state.pt")
    p.add_argument("--out", default="checkpoints/imagenet_effnetlite0_e1000.pt", help="certcore checkpoint to export")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --state")
    p.add_argument("--export", action="store_true", help="only write --out from the saved --state, no training")
    p.add_argument("--save-minutes", type=float, default=10.0, help="write the state at least this often")
    p.add_argument("--eval-every", type=int, default=300, help="held-out accuracy every N steps")
    p.add_argument("--eval-repeats", type=int, default=2, help="ablations per held-out image in the periodic check")
    p.add_argument("--export-repeats", type=int, default=10, help="ablations per held-out image at export")
    p.add_argument("--bn-batches", type=int, default=20,
                   help="with --export: ablated training batches of 32 to recompute the EMA's BN statistics on")
    p.add_argument("--with-bundled", action="store_true",
                   help="with --export: also report accuracy on the 100 bundled evaluation samples (after selection)")
    p.add_argument("--stop-at-step", type=int, default=0, help="save the state and stop at this step (0: run on)")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = p.parse_args(argv)
    if not 1 <= args.e <= IMAGENET_SIZE**2:
        p.error(f"--e must be in [1, {IMAGENET_SIZE**2}], got {args.e}")
    for name in ("images_per_step", "masks_per_image", "total_steps", "warmup_steps", "eval_every", "eval_repeats",
                 "export_repeats", "bn_batches", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.lr > 0 and args.weight_decay >= 0 and 0 <= args.min_lr_ratio <= 1 and 0 <= args.ema_decay < 1):
        p.error("--lr must be > 0, --weight-decay >= 0, --min-lr-ratio in [0, 1], --ema-decay in [0, 1)")
    if not (args.temperature > 0 and 0 <= args.distill_weight <= 1 and 0 < args.crop_scale <= 1):
        p.error("--temperature must be > 0, --distill-weight in [0, 1], --crop-scale in (0, 1]")
    if not (0 <= args.mixup <= 1 and 0 <= args.cifar_fraction <= 1):
        p.error("--mixup and --cifar-fraction must be in [0, 1]")
    if not (0 <= args.train_stages <= 7 and args.feature_weight >= 0):
        p.error(f"--train-stages must be in [0, 7] and --feature-weight >= 0, got {args.train_stages}, "
                f"{args.feature_weight}")
    if args.feature_weight and not 1 <= args.train_stages < 7:
        p.error("--feature-weight needs --train-stages in [1, 6]: the stage whose output is matched")
    if (args.mixup or args.cifar_fraction) and args.distill_weight != 1:
        p.error("--mixup and --cifar-fraction need --distill-weight 1: their images have no single true label")
    return args


def pick_device(requested: str) -> torch.device:
    """``cuda`` when asked for or (``auto``) available, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device("cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu")


class Trainer:
    """Student, EMA, teacher, optimiser and generators of one run; ``state``/``load`` make it resumable."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.model = build_imagenet_model(args.arch, pretrained=True).to(device, memory_format=torch.channels_last)
        if args.train_stages:
            self.model.freeze_after(args.train_stages)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
        self.teacher = clean_imagenet_classifier().requires_grad_(False).to(device, memory_format=torch.channels_last)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, args.warmup_steps, args.total_steps, args.min_lr_ratio)
        )
        self.seeds = [args.seed * 1000, args.seed * 1000 + 1]  # augmentation, ablation
        self.aug = torch.Generator().manual_seed(self.seeds[0])  # crops are made on the CPU
        self.abl = torch.Generator(device=device).manual_seed(self.seeds[1])
        self.step, self.elapsed = 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.devices: list[str] = []
        self.config = {k: getattr(args, k) for k in CONFIG_KEYS}

    def crops(self, pool: Pool, extra: Pool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's augmented images: crops of ``pool`` and (``--cifar-fraction``) of ``extra``, then
        (``--augment``) TrivialAugmentWide, then mixup."""
        a = self.args
        n_extra = round(a.images_per_step * a.cifar_fraction) if extra is not None else 0
        parts = [random_resized_crops(p, n, (a.crop_scale, 1.0), self.aug)
                 for p, n in ((pool, a.images_per_step - n_extra), (extra, n_extra)) if n > 0]
        x, y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
        if a.augment == "trivialaugment":
            x = trivial_augment(x, self.aug)
        if a.mixup:
            blend = torch.rand(len(x), generator=self.aug) < a.mixup
            x = torch.where(blend[:, None, None, None], mix(x, self.aug), x)
        return x, y

    def train_step(self, pool: Pool, extra: Pool | None = None) -> float:
        """One optimiser step on fresh crops and fresh masks; returns the loss."""
        a = self.args
        x, y = self.crops(pool, extra)
        x, y = x.to(self.device), y.to(self.device)
        with torch.inference_mode():
            teacher_logits = self.teacher(x.contiguous(memory_format=torch.channels_last))
            if a.feature_weight:
                small = F.interpolate(x, size=FRONT_ENDS[a.arch][0], mode="area")
                scaled = self.teacher[0](small).contiguous(memory_format=torch.channels_last)
                teacher_features = early_stages(self.teacher[1], scaled, a.train_stages)
        x, y = x.repeat(a.masks_per_image, 1, 1, 1), y.repeat(a.masks_per_image)
        enc = ablate(x, a.e, self.abl).contiguous(memory_format=torch.channels_last)
        if a.feature_weight:
            h = self.model.features(enc, a.train_stages)
            logits = self.model.logits_from(h, a.train_stages)
            target = teacher_features.repeat(a.masks_per_image, 1, 1, 1)
            feature_loss = F.mse_loss(h, target) / target.square().mean()
        else:
            logits, feature_loss = self.model(enc), 0.0
        loss = distillation_loss(logits, teacher_logits.repeat(a.masks_per_image, 1), y, a.distill_weight,
                                 a.temperature) + a.feature_weight * feature_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return float(loss.detach())

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs, in a ``weights_only``-loadable form."""
        return {
            "config": json.dumps(self.config, sort_keys=True),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed,
            "generators": [self.aug.get_state(), self.abl.get_state()],
            "rng": rng_snapshot(),
            "history": json.dumps(self.history),
            "devices": json.dumps(self.devices),
        }

    def load(self, state: dict[str, Any]) -> bool:
        """Continue from ``state``; returns True when the generators had to be reseeded (other device type)."""
        saved = saved_config(state)
        diff = {k: (saved.get(k), self.config.get(k)) for k in saved.keys() | self.config.keys()
                if saved.get(k) != self.config.get(k) and k != "total_steps"}
        if diff:
            raise SystemExit(f"--resume: options differ from the saved run (saved, now): {diff}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed_s"])
        self.history, self.devices = json.loads(state["history"]), json.loads(state["devices"])
        if saved["total_steps"] != self.config["total_steps"]:  # the schedule is extended (or shortened) from here
            self.history.append({"step": self.step, "total_steps": [saved["total_steps"], self.config["total_steps"]]})
        rng_restore(state["rng"])
        return restore_generators([self.aug, self.abl], state["generators"], self.seeds, self.step)


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """The run options a state was saved with; an option added after the state was written reads as its default
    (what that run did without it)."""
    defaults = vars(parse_args([]))
    return {**{k: defaults[k] for k in CONFIG_KEYS}, **json.loads(state["config"])}


def read_state(path: str | Path) -> dict[str, Any]:
    """A training state written by this module, loaded with ``weights_only=True``."""
    if not Path(path).is_file():
        raise SystemExit(f"--state {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to unpickle safely means "not a training state"
        raise SystemExit(f"--state {str(path)!r} is not a readable training state: {exc}") from None


def log(msg: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


def train(args: argparse.Namespace) -> None:
    """Train (or resume) until --total-steps, --stop-at-step or a signal; the state is saved at each of these."""
    device = pick_device(args.device)
    trainer = Trainer(args, device)
    if args.resume:
        if trainer.load(read_state(args.state)):
            log("state written on another device type: generators reseeded from (seed, step); not bit-identical")
        log(f"resumed at step {trainer.step}")
    elif Path(args.state).exists():
        raise SystemExit(f"--state {args.state!r} exists: pass --resume to continue it, or another --state")
    train_pool, held = load_pool(args.data_root or shared_data_dir())
    extra = cifar10_pool(args.data_root or shared_data_dir()) if args.cifar_fraction else None
    held_x, held_y = heldout_images(held).to(device), held.labels.to(device)
    where = describe_device(device)
    trainer.devices.append(f"from step {trainer.step}: {where}")
    log(f"{len(train_pool.images)} train-pool images, {len(held.images)} held out; {where}; "
        f"{args.images_per_step} x {args.masks_per_image} samples/step; steps {trainer.step}..{args.total_steps}")

    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    end = min(args.total_steps, args.stop_at_step) if args.stop_at_step else args.total_steps
    t0 = last_save = time.time()
    elapsed0, window_loss, window_steps, t_window = trainer.elapsed, 0.0, 0, t0

    def save() -> None:
        trainer.elapsed = elapsed0 + time.time() - t0
        atomic_torch_save(trainer.state(), args.state)
        log(f"state saved at step {trainer.step} -> {args.state}")

    trainer.model.train()
    while trainer.step < end and stop["signal"] is None:
        window_loss += trainer.train_step(train_pool, extra)
        window_steps += 1
        now = time.time()
        if trainer.step % args.log_every == 0:
            rate = window_steps * args.images_per_step * args.masks_per_image / (now - t_window)
            log(f"step {trainer.step}/{args.total_steps} loss {window_loss / window_steps:.4f} "
                f"lr {trainer.sched.get_last_lr()[0]:.2e} {rate:.1f} samples/s elapsed "
                f"{fmt_time(elapsed0 + now - t0)}")
            window_loss, window_steps, t_window = 0.0, 0, now
        if trainer.step % args.eval_every == 0:
            accs = {name: ablated_topk(m, held_x, held_y, args.e, args.eval_repeats)
                    for name, m in (("model", trainer.model), ("ema", trainer.ema.module))}
            trainer.history.append({"step": trainer.step, "elapsed_s": round(elapsed0 + now - t0, 1),
                                    "lr": trainer.sched.get_last_lr()[0], "heldout": accs})
            log(f"held-out single-ablation ({args.eval_repeats} masks x {len(held_y)} images): {accs}")
            t_window = time.time()
        if now - last_save >= 60 * args.save_minutes:
            save()
            last_save = time.time()
    save()
    if stop["signal"] is not None:
        log(f"stopped by signal {stop['signal']} at step {trainer.step}; resume with --resume")
    elif trainer.step >= args.total_steps:
        export(args)


def recomputed_batchnorm(
    model: nn.Module, arch: str, pool: Pool, e: int, crop_scale: float, batches: int
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are averaged over ``batches`` seeded batches of 32 ablated
    training crops (the running statistics of training, or their EMA, need not fit the weights they come with)."""
    copy = build_imagenet_model(arch)
    copy.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(EVAL_SEED + 1)
    crops = (random_resized_crops(pool, 32, (crop_scale, 1.0), gen)[0] for _ in range(batches))
    average_batchnorm_statistics(copy, (ablate(x, e, gen) for x in crops))
    return copy.eval()


def compact_copy(model: nn.Module, arch: str) -> nn.Module:
    """A copy of ``model`` with its conv/linear weights (tensors of 2+ dimensions, 99% of the bytes) in float16;
    biases and BatchNorm tensors stay float32. ``load_checkpoint`` loads it into a float32 model."""
    copy = build_imagenet_model(arch)
    copy.load_state_dict(model.state_dict())
    for p in copy.parameters():
        if p.ndim >= 2:
            p.data = p.data.half()
    return copy.eval()


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Write --out from --state: of the raw weights and their EMA, each as trained and with its BatchNorm statistics
    recomputed, the one with the best held-out single-ablation accuracy, conv weights in float16."""
    state = read_state(args.state)
    config = saved_config(state)
    arch, e, repeats = config["arch"], config["e"], args.export_repeats
    ema = AveragedModel(build_imagenet_model(arch), use_buffers=True)
    ema.load_state_dict(state["ema"])
    raw = build_imagenet_model(arch)
    raw.load_state_dict(state["model"])
    train_pool, held = load_pool(args.data_root or shared_data_dir())
    held_x, held_y = heldout_images(held), held.labels
    candidates = {"raw": raw.eval(), "ema": ema.module.eval()}
    for name in list(candidates):
        candidates[f"{name}_bn_recomputed"] = recomputed_batchnorm(
            candidates[name], arch, train_pool, e, config["crop_scale"], args.bn_batches
        )
    scores = {name: ablated_topk(m, held_x, held_y, e, repeats) for name, m in candidates.items()}
    chosen_name = max(scores, key=lambda k: (scores[k]["top1"], scores[k]["top5"]))
    stored = compact_copy(candidates[chosen_name], arch)
    reloaded = build_imagenet_model(arch).eval()
    reloaded.load_state_dict(stored.state_dict())  # what load_checkpoint will rebuild
    fp16 = ablated_topk(reloaded, held_x, held_y, e, repeats)
    log(f"held-out single-ablation ({repeats} masks x {len(held_y)} images): {scores}; chosen {chosen_name}; "
        f"with float16 conv weights {fp16}")
    accuracies = {"heldout_ablated": fp16, "heldout_ablated_candidates_fp32": scores,
                  "eval_repeats": repeats, "eval_seed": EVAL_SEED,
                  "note": "single-ablation (base-classifier) accuracies of the stored weights, not certified ones"}
    if args.with_bundled:  # measured after the weights were chosen: a report, never a selection criterion
        samples = bundled_samples("imagenet")
        bx, by = torch.stack([s.image for s in samples]), torch.tensor([s.label for s in samples])
        accuracies["bundled_ablated"] = ablated_topk(reloaded, bx, by, e, repeats)
        log(f"bundled evaluation samples, single-ablation ({repeats} masks x 100 images): "
            f"{accuracies['bundled_ablated']}")
    history = json.loads(state["history"])
    feature_term = (f" + {config['feature_weight']} MSE(student features after stage {config['train_stages']}, "
                    "clean network's on the clean image at the internal resolution) / mean square of the latter"
                    if config["feature_weight"] else "")
    meta = {
        "dataset": "imagenet",
        "arch": config["arch"],
        "e": e,
        "num_classes": NUM_CLASSES,
        "class_names": class_names("imagenet"),
        "encoding": ENCODING,
        "in_channels": 6,
        "front_end": {"kind": "normalised convolution (Gaussian) inpainting",
                      "internal_resolution": FRONT_ENDS[config["arch"]][0],
                      "sigma_internal_px": FRONT_ENDS[config["arch"]][1], "input_scaling": "(x - 0.5) / 0.5"},
        "weights_dtype": "conv/linear weights stored in float16, biases and BatchNorm in float32; loaded as float32",
        "pretrained_weights": WEIGHTS_NOTICE,
        "license": "Apache-2.0",
        "software": {"timm": timm.__version__, "torch": torch.__version__,
                     "network": "timm tf_efficientnet_lite0 (TF 'same' padding)"},
        "training": {
            **config,
            "steps_done": state["step"],
            "status": "finished" if state["step"] >= config["total_steps"] else
                      f"snapshot at step {state['step']} of {config['total_steps']} (run unfinished)",
            "method": "distillation: teacher = clean pretrained EfficientNet-Lite0 on the augmented 224 x 224 image; "
                      "student = this model on ablations of the same image (fresh uniform e-subset per sample)",
            "loss": "(1-w) CE(student, y) + w T^2 KL(softmax(teacher/T) || softmax(student/T))" + feature_term,
            "trained_weights": (f"stem and stages 1-{config['train_stages']}; the rest as pretrained"
                                if config["train_stages"] else "all"),
            "optimizer": "AdamW", "schedule": "linear warm-up, cosine to min_lr_ratio at total_steps",
            "augmentation": "random resized crop 224 (area in [crop_scale, 1], aspect [3/4, 4/3]) + horizontal flip"
                            + (f"; mixup with probability {config['mixup']} (blend weight uniform in [0, 1])"
                               if config["mixup"] else "")
                            + ("; torchvision TrivialAugmentWide on each crop, before mixup"
                               if config["augment"] == "trivialaugment" else ""),
            "train_data": "shared data imagenet/train_pool: the 800 images of classes not = 0 or 5 mod 10"
                          + (f"; a {config['cifar_fraction']} share of each step's crops from the 50,000 CIFAR-10 "
                             "training images (shared data, JPEG q75), upsampled" if config["cifar_fraction"] else ""),
            "heldout_data": "imagenet/train_pool images of classes 5, 15, ..., 995 (100), used for model selection",
            "never_used": "the 100 bundled evaluation samples (classes 0, 10, ..., 990)",
            "weights_exported": chosen_name,
            "bn_recomputed_on": f"{args.bn_batches} batches of 32 ablated train-pool crops (seed {EVAL_SEED + 1})",
        },
        "training_time_s": round(float(state["elapsed_s"]), 1),
        "device": "; ".join(json.loads(state["devices"])),
        "accuracies": accuracies,
        "history": history,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    saved = save_checkpoint(args.out, stored, meta)
    log(f"wrote {args.out} (step {state['step']}, weights sha256 {saved['weights_sha256'][:16]}...)")
    return saved


def main(argv: list[str] | None = None) -> None:
    """Train/resume, or export with --export."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main(sys.argv[1:])
