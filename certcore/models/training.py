"""Train a randomized-ablation base classifier: ``python -m certcore.train --dataset cifar10 --arch resnet20 --e 50``.

Every training image gets a fresh random ablation (keep ``e`` pixels) at every step, drawn per image by
``certcore.engine.ablation.ablate`` from a seeded generator. The reference code of Levine & Feizi draws one mask per
minibatch; independent masks per image give training the same input distribution as certification (where each
ablation is independent), many more distinct masks per step, and therefore lower-variance gradients.

Resumable state (weights, optimizer, scheduler, position, and the RNG states of torch, numpy, python, the
augmentation and the ablation generators; the data order is a function of seed and epoch) is written atomically
after every epoch and every ``--save-every-steps`` steps; ``--resume`` continues bit-identically. Per-epoch
accuracy is measured on a held-out split of the training set; the project's 500 evaluation images are only used
for the final, reported accuracy. Multi-process training works under ``torchrun`` (DDP, gloo on CPU, nccl on CUDA).

``--distill clean-resnet20`` (or ``clean-resnet56``) adds knowledge distillation from a clean CIFAR-10 teacher
(see ``distillation_loss``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from certcore.engine.ablation import ablate
from certcore.models.architectures import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    clean_cifar_classifier,
    init_from_clean_cifar,
)
from certcore.models.checkpoints import CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint
from certcore.models.data import (
    ImageSet,
    cifar10_offline,
    cifar10_torchvision,
    evaluation_indices,
    imagenet_folder,
    shared_data_dir,
)

ENCODING = "levine-feizi-2c"
CLEAN_INITS = {
    "clean-resnet20": ("resnet20", "resnet20-12fca82f.th"),
    "clean-resnet56": ("resnet56", "resnet56-4bfd9763.th"),
}
EVAL_SEED = 20220425
CONFIG_KEYS = (
    "dataset", "arch", "e", "epochs", "batch_size", "lr", "weight_decay", "seed", "init", "val_size", "data_root",
    "train_limit",
)  # fmt: skip


IMAGE_PIXELS = {"cifar10": 32 * 32, "imagenet": 224 * 224}  # d of the model input


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m certcore.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("cifar10", "imagenet"), default="cifar10")
    p.add_argument("--arch", default="resnet20", help="resnet20, resnet56, resnet110 (CIFAR) or resnet50 (ImageNet)")
    p.add_argument(
        "--e", "--keep", dest="e", type=int, required=True, help="pixels kept per ablation (--keep: same, for torchrun)"
    )
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (split across DDP processes)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (cosine decay per step)")
    p.add_argument(
        "--lr-schedule", choices=("cosine", "constant"), default="cosine", help="cosine decay per step to 0, or flat"
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        default="none",
        help="clean-resnet20 / clean-resnet56 (clean weights from the shared data), a certcore checkpoint PATH.pt "
        "of the same dataset and arch (fine-tune it, e.g. at another --e), or none",
    )
    p.add_argument(
        "--distill", choices=(*CLEAN_INITS, "none"), default="none", help="clean CIFAR-10 teacher to distill from"
    )
    p.add_argument("--distill-weight", type=float, default=0.5, help="w: loss = (1-w) CE + w T^2 KL(teacher||student)")
    p.add_argument("--distill-temperature", type=float, default=4.0, help="T, softmax temperature of the KL term")
    p.add_argument(
        "--data-root",
        default=None,
        help="torchvision CIFAR-10 root or ImageNet ImageFolder root; cifar10 without it: shared npz files",
    )
    p.add_argument(
        "--shared-data", default=None, help="offline data folder (default: CERTCORE_SHARED_DATA or ../shared/data)"
    )
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (0 = all; tests)")
    p.add_argument("--val-size", type=int, default=5000, help="held-out images at the end of the training set")
    p.add_argument("--eval-repeats", type=int, default=10, help="ablations per image in the final accuracy")
    p.add_argument("--out", required=True, help="final checkpoint path (e.g. checkpoints/NAME.pt)")
    p.add_argument("--state", required=True, help="resumable training state path (e.g. runs/NAME/state.pt)")
    p.add_argument("--state-copy", default=None, help="second copy of the state (e.g. checkpoints/state/NAME.state.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --state (or --state-copy if --state is absent)")
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="with --resume: write --out from the saved state without training further (an unfinished run, "
        "marked as such in the metadata), e.g. while the run itself goes on in another process",
    )
    p.add_argument("--bn-batches", type=int, default=100, help="training batches used to recompute BN statistics")
    p.add_argument("--save-every-steps", type=int, default=0, help="also save state every N steps (0 = epochs only)")
    p.add_argument("--stop-after-steps", type=int, default=0, help="exit without saving after N steps (kill test)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for ImageFolder data")
    args = p.parse_args(argv)
    # Refuse impossible values here, with the option's name and range, rather than as a traceback mid-run.
    if args.arch not in ARCHS:
        p.error(f"--arch must be one of {', '.join(ARCHS)}; got {args.arch!r}")
    d = IMAGE_PIXELS[args.dataset]
    if not 1 <= args.e <= d:
        p.error(f"--e must be in [1, {d}] (pixels of a {args.dataset} model input), got {args.e}")
    for name in ("epochs", "batch_size", "eval_repeats", "log_every", "bn_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("threads", "train_limit", "val_size", "save_every_steps", "stop_after_steps", "workers"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not args.lr > 0 or not args.weight_decay >= 0:
        p.error(f"--lr must be > 0 and --weight-decay >= 0, got {args.lr} and {args.weight_decay}")
    if not 0 <= args.distill_weight <= 1 or not args.distill_temperature > 0:
        p.error(
            f"--distill-weight must be in [0, 1] and --distill-temperature > 0, "
            f"got {args.distill_weight} and {args.distill_temperature}"
        )
    if args.init not in (*CLEAN_INITS, "none") and not args.init.endswith(".pt"):
        p.error(f"--init must be one of {', '.join(CLEAN_INITS)}, none or a checkpoint PATH.pt; got {args.init!r}")
    if args.distill != "none" and args.dataset != "cifar10":
        p.error(f"--distill {args.distill} is a CIFAR-10 teacher; it needs --dataset cifar10")
    return args


@dataclass(frozen=True)
class Dist:
    """Process placement: rank and world size (1 without torchrun) and the device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def device_name(d: Dist) -> str:
    """The training device as recorded: the GPU's name, or ``cpu (N threads)``."""
    if d.device.type == "cuda":
        return torch.cuda.get_device_name(d.device)
    return f"cpu ({torch.get_num_threads()} threads)"


def setup_distributed(device: str) -> Dist:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group (nccl on CUDA, gloo on CPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, dev)


def log(d: Dist, msg: str) -> None:
    if d.main:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- data


@dataclass
class TrainData:
    """Training and validation data: in-memory ImageSets (CIFAR) or ImageFolder datasets (ImageNet)."""

    train: Any
    val: Any
    evaluation: ImageSet | None
    class_names: list[str]
    source: str


def load_data(args: argparse.Namespace) -> TrainData:
    """Training set minus its last ``val_size`` images, the held-out split, and the 500-image evaluation set."""
    shared = Path(args.shared_data) if args.shared_data else shared_data_dir()
    if args.dataset == "cifar10":
        if args.data_root:
            full, test = cifar10_torchvision(args.data_root, True), cifar10_torchvision(args.data_root, False)
        else:
            full, test = cifar10_offline(shared, "train"), cifar10_offline(shared, "test-lossless")
        if args.train_limit:
            full = full.subset(range(min(args.train_limit, len(full))), full.source + f"[:{args.train_limit}]")
        n_train = len(full) - args.val_size
        if n_train < 1 or args.val_size < 1:
            raise SystemExit(f"--val-size {args.val_size} leaves no training or validation images of {len(full)}")
        evaluation = test.subset(evaluation_indices(), test.source + ":even-0..998") if len(test) >= 1000 else None
        return TrainData(
            full.subset(range(n_train), full.source + f"[:{n_train}]"),
            full.subset(range(n_train, len(full)), full.source + f"[{n_train}:]"),
            evaluation,
            full.class_names,
            full.source,
        )
    if not args.data_root:
        raise SystemExit("--data-root (an ImageFolder root) is required for --dataset imagenet")
    train_set, names = imagenet_folder(args.data_root, train=True)
    eval_set, _ = imagenet_folder(args.data_root, train=False)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_train = len(order) - args.val_size
    if n_train < 1 or args.val_size < 1:
        raise SystemExit(f"--val-size {args.val_size} leaves no training or validation images of {len(order)}")
    return TrainData(
        torch.utils.data.Subset(train_set, order[:n_train]),
        torch.utils.data.Subset(eval_set, order[n_train:]),
        None,
        names,
        f"imagefolder:{args.data_root}",
    )


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop (zero padding ``pad``, same output size) and horizontal flip of a batch (B, C, H, W)."""
    b, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    out = padded[torch.arange(b, device=dev)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def batches_for_epoch(sampler: DistributedSampler, epoch: int, per_rank_batch: int) -> list[list[int]]:
    """This rank's full minibatches of ``epoch`` (the order depends only on the sampler seed and the epoch)."""
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i : i + per_rank_batch] for i in range(0, len(order) - per_rank_batch + 1, per_rank_batch)]


def iterate_batches(data: Any, batches: list[list[int]], args: argparse.Namespace, d: Dist, aug: torch.Generator):
    """Yield (images float in [0,1] on the device, labels) for each index list, with training augmentation."""
    if isinstance(data, ImageSet):
        for idx in batches:
            i = torch.tensor(idx)
            x = random_crop_flip(data.images[i].to(d.device), 4, aug)
            yield x.float().div_(255), data.labels[i].to(d.device)
        return
    loader = DataLoader(data, batch_sampler=batches, num_workers=args.workers, pin_memory=d.device.type == "cuda")
    for x, y in loader:
        yield x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)


def iterate_eval(data: Any, d: Dist, batch: int):
    """Yield (images, labels) of this rank's shard of an evaluation set, no augmentation."""
    shard = list(range(d.rank, len(data), d.world))
    if isinstance(data, ImageSet):
        for s in range(0, len(shard), batch):
            i = torch.tensor(shard[s : s + batch])
            yield data.images[i].to(d.device).float().div_(255), data.labels[i].to(d.device)
        return
    loader = DataLoader(torch.utils.data.Subset(data, shard), batch_size=batch, num_workers=0)
    for x, y in loader:
        yield x.to(d.device), y.to(d.device)


@torch.inference_mode()
def ablated_accuracy(model: nn.Module, data: Any, e: int, repeats: int, d: Dist, batch: int = 500) -> float:
    """Fraction of (image, ablation) pairs classified correctly; ``repeats`` independent ablations per image."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=d.device).manual_seed(EVAL_SEED + d.rank)
    counts = torch.zeros(2, dtype=torch.float64, device=d.device)
    for x, y in iterate_eval(data, d, batch):
        for _ in range(repeats):
            enc = ablate(x, e, gen).contiguous(memory_format=torch.channels_last)
            counts[0] += (model(enc).argmax(1) == y).sum()
            counts[1] += len(y)
    if d.world > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    return float(counts[0] / counts[1])


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Any, args: argparse.Namespace, d: Dist) -> None:
    """Recompute every BatchNorm's running mean/variance as a plain average over ``--bn-batches`` ablated,
    augmented training batches (seeded). During training the running statistics lag the weights while the
    learning rate is high; measured on this run's epoch-5 state: 44.6% ablated accuracy with batch statistics
    but 30% with the running ones. Recomputing them makes the eval-mode model match the weights it has."""
    per_rank = args.batch_size // d.world
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(EVAL_SEED)).tolist()
    batches = [order[i : i + per_rank] for i in range(0, len(order) - per_rank + 1, per_rank)][: args.bn_batches]
    gen = torch.Generator(device=d.device).manual_seed(EVAL_SEED + 1)
    inputs = (ablate(x, args.e, gen) for x, _ in iterate_batches(data, batches, args, d, gen))
    average_batchnorm_statistics(model, inputs)


def average_batchnorm_statistics(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Set every BatchNorm's running mean/variance to the plain average over the batches ``inputs`` (model inputs,
    fed in training mode without gradients); nothing changes when the model has no BatchNorm or ``inputs`` is empty."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    seen = 0
    with torch.no_grad():
        for x in inputs:
            model(x.contiguous(memory_format=torch.channels_last))
            seen += 1
    for m, (momentum, before) in zip(norms, saved, strict=True):
        m.momentum = momentum
        if not seen:
            m.load_state_dict(before)
    model.train(was_training)


# ------------------------------------------------------------------------------------------ state / RNG


def rng_snapshot() -> dict[str, Any]:
    """Global RNG states of torch (CPU and CUDA), numpy and python, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }


def rng_restore(snap: dict[str, Any]) -> None:
    """Inverse of ``rng_snapshot``."""
    torch.set_rng_state(snap["torch"])
    if snap["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    kind, keys, pos, has_gauss, gauss = snap["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = snap["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def run_config(args: argparse.Namespace, d: Dist) -> dict[str, Any]:
    """The options a resumed run must share with the run that wrote the state.

    Options added after states were first written (lr schedule, distillation) enter only when they differ from
    their defaults, so a state written before them still resumes with the unchanged command.
    """
    config = {**{k: getattr(args, k) for k in CONFIG_KEYS}, "world_size": d.world}
    if args.lr_schedule != "cosine":
        config["lr_schedule"] = args.lr_schedule
    if args.distill != "none":
        config.update({k: getattr(args, k) for k in ("distill", "distill_weight", "distill_temperature")})
    return config


def save_state(
    path_list: list[str],
    core: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    pos: dict[str, Any],
    gens: list[torch.Generator],
    history: list[dict],
    config: dict[str, Any],
    d: Dist,
) -> None:
    """Gather every rank's generator states and write the training state atomically (rank 0) to each path."""
    local = [g.get_state() for g in gens]
    all_gens = [local]
    if d.world > 1:
        all_gens = [None] * d.world
        dist.all_gather_object(all_gens, local)
    if d.main:
        state = {
            "config": json.dumps(config, sort_keys=True),
            "model": core.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "position": pos,
            "rng": rng_snapshot(),
            "generators": all_gens,
            "history": json.dumps(history),
        }
        for p in path_list:
            atomic_torch_save(state, p)
    if d.world > 1:
        dist.barrier()


def restore_generators(
    gens: list[torch.Generator], states: list[torch.Tensor], seeds: list[int], global_step: int
) -> bool:
    """Set ``gens`` to their saved ``states``; returns False when that is done exactly.

    A state written on another device type (a CPU Mersenne Twister state against a CUDA Philox state: they differ
    in size) cannot be set. Then generator i is reseeded from ``seeds[i]`` and the global step, so a run can move
    between CPU and GPU (e.g. finish on a lent GPU) without repeating its earlier random draws; returns True.
    """
    if all(g.get_state().numel() == s.numel() for g, s in zip(gens, states, strict=True)):
        for g, s in zip(gens, states, strict=True):
            g.set_state(s)
        return False
    for g, seed in zip(gens, seeds, strict=True):  # 32-bit seeds: a CPU generator uses only the low 32 bits
        g.manual_seed(int(np.random.SeedSequence([seed, global_step]).generate_state(1)[0]))
    return True


def load_state(args: argparse.Namespace) -> dict[str, Any]:
    """Read the resumable state from --state, or from --state-copy when --state does not exist."""
    for p in (args.state, args.state_copy):
        if p and Path(p).is_file():
            try:
                return torch.load(p, map_location="cpu", weights_only=True)
            except Exception as exc:  # any failure to unpickle safely means "not a training state"
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SystemExit(f"--resume: {p!r} is not a readable training state (truncated, corrupted, or "
                                 f"unsafe pickle): {first}") from None
    raise SystemExit(f"--resume: neither {args.state!r} nor {args.state_copy!r} exists")


# ------------------------------------------------------------------------------------------------ main


def build(args: argparse.Namespace, num_classes: int, d: Dist) -> nn.Module:
    """The model, initialised as requested, on the device (channels_last)."""
    model = build_model(args.arch, num_classes)
    if args.init.endswith(".pt"):
        init_from_checkpoint(model, args)
    elif args.init != "none":
        arch, file = CLEAN_INITS[args.init]
        if arch != args.arch:
            raise SystemExit(f"--init {args.init} needs --arch {arch}, got {args.arch}")
        shared = Path(args.shared_data) if args.shared_data else shared_data_dir()
        init_from_clean_cifar(model, shared / "checkpoints" / file)
    return model.to(d.device, memory_format=torch.channels_last)


def init_from_checkpoint(model: nn.Module, args: argparse.Namespace) -> None:
    """Copy the weights of the certcore checkpoint ``--init PATH.pt`` (same dataset, arch and classes) into ``model``;
    its e may differ: that is how a model for another e is fine-tuned from an existing one."""
    try:
        source, meta = load_checkpoint(args.init, dataset=args.dataset)
    except CheckpointError as exc:
        raise SystemExit(f"--init: {exc}") from None
    if meta["arch"] != args.arch:
        raise SystemExit(f"--init {args.init} holds a {meta['arch']}, but --arch is {args.arch}")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise SystemExit(f"--init {args.init} does not fit this model: {str(exc).splitlines()[0]}") from None
    args.init_weights_sha256 = meta["weights_sha256"]  # recorded in the new checkpoint's metadata


def build_teacher(args: argparse.Namespace, d: Dist) -> nn.Module | None:
    """The clean teacher of ``--distill`` (eval mode, frozen, channels_last on the device), or None."""
    if args.distill == "none":
        return None
    arch, file = CLEAN_INITS[args.distill]
    shared = Path(args.shared_data) if args.shared_data else shared_data_dir()
    teacher = clean_cifar_classifier(arch, shared / "checkpoints" / file).requires_grad_(False)
    return teacher.to(d.device, memory_format=torch.channels_last)


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """(1-w) CE(student, y) + w T^2 KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al. 2015).

    The student sees an ablated image, the teacher the same augmented image un-ablated. With e = 50 of 1024 pixels
    kept, an ablated image often lacks the evidence for its hard label, so the one-hot target asks the student for
    a certainty its input cannot support. The clean teacher's softened distribution says what the image is and
    what it resembles (a cat that looks like a dog): a richer, lower-variance target carrying the clean model's
    knowledge into a student that only sees 5% of the pixels. The T^2 factor keeps the soft term's gradient
    scale independent of T. The teacher was trained on exact pixels and here sees the JPEG training images, so
    its targets are somewhat worse than on exact pixels; the CE term keeps the true label in the loss.
    """
    ce = F.cross_entropy(logits, y) if weight < 1 else logits.new_zeros(())  # w = 1: y may be unknown (-1)
    kl = F.kl_div(
        F.log_softmax(logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * ce + weight * temperature**2 * kl


def fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class Run:
    """What the steps of one training run share: the model (DDP-wrapped when distributed) and its unwrapped
    ``core``, the teacher, optimiser and schedule, the data order and the seeded generators, the history, where
    the run stands (epoch, step in it, steps done) and the clock (training seconds of earlier sessions)."""

    model: nn.Module
    core: nn.Module
    teacher: nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    sampler: DistributedSampler
    per_rank: int
    steps_per_epoch: int
    total_steps: int
    first_seed: int
    aug: torch.Generator
    abl: torch.Generator
    config: dict[str, Any]
    state_paths: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed_before: float = 0.0
    session_start: float = 0.0
    session_steps: int = 0

    def position(self, step_in_epoch: int, now: float) -> dict[str, Any]:
        """The position record of the saved state at ``step_in_epoch`` of the current epoch, at time ``now``."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "elapsed_s": self.elapsed_before + now - self.session_start,
        }

    def save(self, position: dict[str, Any], d: Dist) -> None:
        """Write the resumable state at ``position`` (``save_state``)."""
        save_state(self.state_paths, self.core, self.opt, self.sched, position, [self.aug, self.abl], self.history,
                   self.config, d)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Train (or resume), evaluate and write the checkpoint; returns its metadata (None if stopped early).

    The steps, in order: parse the options, start the process (threads, seeds), read the state to resume (before
    the data: a wrong --resume fails fast), load the data, build the model and optimiser, restore the state, run
    the epochs, export the checkpoint, leave the process group.
    """
    args = parse_args(argv)
    d = start_process(args)
    config = run_config(args, d)
    saved_state = state_to_resume(args, config)
    data = load_data(args)
    log(
        d,
        f"data: {data.source}: {len(data.train)} train, {len(data.val)} held-out val"
        + (f", {len(data.evaluation)} evaluation" if data.evaluation else ""),
    )
    run = build_run(args, d, data, config)
    if saved_state is not None:
        resume(run, saved_state, d)
    meta = export(run, args, d, data) if train_epochs(run, args, d, data) else None
    end_process(d)
    return meta


def start_process(args: argparse.Namespace) -> Dist:
    """This process's place in the run (torchrun rank and device), its CPU threads and its seeds; SystemExit
    when the batch does not split evenly over the processes."""
    d = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size % d.world:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by the {d.world} processes")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    return d


def state_to_resume(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state with --resume (None without), after checking that it was saved with the same options."""
    saved_state = load_state(args) if args.resume else None
    if saved_state is not None:
        saved = json.loads(saved_state["config"])
        diff = {
            k: (saved.get(k), config.get(k))
            for k in sorted(saved.keys() | config.keys())
            if saved.get(k) != config.get(k)
        }
        if diff:
            raise SystemExit(f"--resume: options differ from the saved run (saved, now): {diff}")
    return saved_state


def build_run(args: argparse.Namespace, d: Dist, data: TrainData, config: dict[str, Any]) -> Run:
    """The model (and teacher), the data order, SGD with its schedule and the seeded augmentation and ablation
    generators of a run at its start."""
    per_rank = args.batch_size // d.world
    model = build(args, len(data.class_names), d)
    teacher = build_teacher(args, d)
    core = model
    if d.world > 1:
        model = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    sampler = DistributedSampler(data.train, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch < 1:
        raise SystemExit(f"fewer training images per process ({len(sampler)}) than the batch ({per_rank})")
    total_steps = steps_per_epoch * args.epochs
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        if args.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    first_seed = args.seed * 1000 + 2 * d.rank  # augmentation, then ablation
    aug = torch.Generator(device=d.device).manual_seed(first_seed)
    abl = torch.Generator(device=d.device).manual_seed(first_seed + 1)
    state_paths = [p for p in (args.state, args.state_copy) if p]
    return Run(model, core, teacher, opt, sched, sampler, per_rank, steps_per_epoch, total_steps, first_seed, aug, abl,
               config, state_paths)


def resume(run: Run, saved_state: dict[str, Any], d: Dist) -> None:
    """Put a saved state back: weights, optimiser, schedule, RNG states, history and position."""
    run.core.load_state_dict(saved_state["model"])
    run.opt.load_state_dict(saved_state["optimizer"])
    run.sched.load_state_dict(saved_state["scheduler"])
    rng_restore(saved_state["rng"])
    run.history = json.loads(saved_state["history"])
    pos = saved_state["position"]
    run.epoch, run.step_in_epoch, run.global_step, run.elapsed_before = (
        pos["epoch"],
        pos["step_in_epoch"],
        pos["global_step"],
        pos["elapsed_s"],
    )
    gen_states = saved_state["generators"][d.rank]
    moved = restore_generators([run.aug, run.abl], gen_states, [run.first_seed, run.first_seed + 1], run.global_step)
    log(d, f"resumed at epoch {run.epoch + 1}, step {run.step_in_epoch}/{run.steps_per_epoch} "
           f"(global step {run.global_step})")
    if moved:
        log(d, f"the state was written on another device type: augmentation and ablation generators on "
               f"{d.device.type} reseeded from (seed, global step); the run goes on, not bit-identical")


def train_epochs(run: Run, args: argparse.Namespace, d: Dist, data: TrainData) -> bool:
    """The epochs from the run's position to --epochs (none with --snapshot). False when --stop-after-steps
    stopped the run (nothing saved)."""
    log(
        d,
        f"training {args.arch} e={args.e} on {d.device} x{d.world}, {torch.get_num_threads()} threads, "
        f"{args.epochs} epochs x {run.steps_per_epoch} steps, batch {args.batch_size}",
    )
    run.session_start, run.session_steps = time.time(), 0
    run.model.train()
    if args.snapshot and not args.resume:
        raise SystemExit("--snapshot needs --resume (it exports the saved state of a run)")
    while run.epoch < args.epochs and not args.snapshot:
        if not train_epoch(run, args, d, data):
            return False
        end_epoch(run, args, d, data)
    return True


def train_epoch(run: Run, args: argparse.Namespace, d: Dist, data: TrainData) -> bool:
    """The steps of the current epoch from the run's step in it: logs every --log-every steps and saves the state
    every --save-every-steps steps. False when --stop-after-steps is reached."""
    batches = batches_for_epoch(run.sampler, run.epoch, run.per_rank)[: run.steps_per_epoch]
    window = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    t_window = time.time()
    for b, (x, y) in enumerate(
        iterate_batches(data.train, batches[run.step_in_epoch :], args, d, run.aug), start=run.step_in_epoch
    ):
        loss, logits = train_step(run, args, x, y)
        run.global_step += 1
        run.session_steps += 1
        window += torch.tensor(
            [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64
        )
        if args.stop_after_steps and run.global_step >= args.stop_after_steps:
            log(d, f"stopping after {run.global_step} steps without saving (--stop-after-steps)")
            return False
        now = time.time()
        if (b + 1) % args.log_every == 0 or b + 1 == run.steps_per_epoch:
            ips = window[2].item() * d.world / max(now - t_window, 1e-9)
            eta = (now - run.session_start) / run.session_steps * (run.total_steps - run.global_step)
            log(
                d,
                f"epoch {run.epoch + 1}/{args.epochs} step {b + 1}/{run.steps_per_epoch} "
                f"loss {window[0].item() / window[2].item():.4f} acc {window[1].item() / window[2].item():.4f} "
                f"lr {run.sched.get_last_lr()[0]:.5f} {ips:.0f} img/s ETA {fmt_time(eta)}",
            )
            window.zero_()
            t_window = now
        if args.save_every_steps and run.global_step % args.save_every_steps == 0 and b + 1 < run.steps_per_epoch:
            run.save(run.position(b + 1, now), d)
    return True


def train_step(run: Run, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One optimiser step on a batch: a fresh ablation per image, the loss (distilled with a teacher), backward,
    SGD and schedule steps. Returns (loss, logits)."""
    enc = ablate(x, args.e, run.abl).contiguous(memory_format=torch.channels_last)
    logits = run.model(enc)
    if run.teacher is None:
        loss = F.cross_entropy(logits, y)
    else:
        with torch.inference_mode():
            teacher_logits = run.teacher(x.contiguous(memory_format=torch.channels_last))
        loss = distillation_loss(logits, teacher_logits, y, args.distill_weight, args.distill_temperature)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.sched.step()
    return loss, logits


def end_epoch(run: Run, args: argparse.Namespace, d: Dist, data: TrainData) -> None:
    """After an epoch: held-out accuracy (1 ablation per image) into the history, then the state saved."""
    val_acc = ablated_accuracy(run.core, data.val, args.e, 1, d)
    run.epoch, run.step_in_epoch = run.epoch + 1, 0
    run.history.append(
        {
            "epoch": run.epoch,
            "val_ablated_acc": val_acc,
            "lr": run.sched.get_last_lr()[0],
            "elapsed_s": round(run.elapsed_before + time.time() - run.session_start, 1),
            "device": device_name(d),
        }
    )
    log(
        d,
        f"epoch {run.epoch}/{args.epochs} done: held-out val ablated acc {val_acc:.4f} "
        f"({len(data.val)} images, 1 ablation each)",
    )
    run.save(run.position(0, time.time()), d)


def export(run: Run, args: argparse.Namespace, d: Dist, data: TrainData) -> dict[str, Any] | None:
    """Recompute the BatchNorm statistics, measure the final accuracies and write the checkpoint (main process);
    returns its metadata (None on the other processes)."""
    train_time = run.elapsed_before + time.time() - run.session_start
    recalibrate_batchnorm(run.core, data.train, args, d)
    status = (
        "finished"
        if run.epoch >= args.epochs
        else f"snapshot at step {run.global_step} of {run.total_steps} ({run.epoch} of {args.epochs} epochs done; "
        f"unfinished)"
    )
    log(d, f"{status}; BN statistics recomputed on {args.bn_batches} training batches")
    accuracies: dict[str, Any] = {
        "eval_repeats": args.eval_repeats,
        "eval_seed": EVAL_SEED,
        "val_ablated": ablated_accuracy(run.core, data.val, args.e, args.eval_repeats, d),
    }
    if data.evaluation is not None:
        accuracies["eval500_ablated"] = ablated_accuracy(run.core, data.evaluation, args.e, args.eval_repeats, d)
    log(d, f"final accuracies: {accuracies}")
    meta = None
    if d.main:
        meta = save_checkpoint(args.out, run.core, metadata(args, d, data, accuracies, run.history, train_time, status))
        log(d, f"wrote {args.out} (weights sha256 {meta['weights_sha256'][:16]}...)")
    return meta


def end_process(d: Dist) -> None:
    """Leave the process group (torchrun), also after --stop-after-steps: a process that exits with the group
    still open can abort in its C++ teardown ("terminate called without an active exception")."""
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def metadata(
    args: argparse.Namespace,
    d: Dist,
    data: TrainData,
    accuracies: dict[str, Any],
    history: list[dict[str, Any]],
    train_time: float,
    status: str,
) -> dict[str, Any]:
    """The checkpoint metadata record (see checkpoints/README.md)."""
    device = device_name(d)
    return {
        "dataset": args.dataset,
        "arch": args.arch,
        "e": args.e,
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "encoding": ENCODING,
        "in_channels": 6,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": "SGD momentum 0.9 nesterov",
            "lr": args.lr,
            "lr_schedule": "cosine per step to 0, no warmup" if args.lr_schedule == "cosine" else "constant",
            "weight_decay": args.weight_decay,
            "seed": args.seed,
            "init": (
                f"{args.init} (weights sha256 {args.init_weights_sha256})" if args.init.endswith(".pt") else args.init
            ),
            "distillation": (
                "none"
                if args.distill == "none"
                else {
                    "teacher": args.distill,
                    "weight": args.distill_weight,
                    "temperature": args.distill_temperature,
                    "loss": "(1-w) CE(student(ablated x), y) + w T^2 KL(softmax(teacher(x)/T) || softmax(student/T))",
                    "teacher_input": "the same augmented image, not ablated, RGB with the ImageNet normalisation",
                }
            ),
            "augmentation": (
                "random crop 32 pad 4 + horizontal flip"
                if args.dataset == "cifar10"
                else "RandomResizedCrop 224 + horizontal flip"
            ),
            "ablation": "fresh uniform e-subset per image per step",
            "status": status,
            "bn_recalibration": f"running statistics recomputed on {args.bn_batches} ablated training batches",
            "train_data": data.train.source if isinstance(data.train, ImageSet) else data.source,
            "train_size": len(data.train),
            "val_size": len(data.val),
            "world_size": d.world,
        },
        "training_time_s": round(train_time, 1),
        "device": device,
        "accuracies": accuracies,
        "accuracy_sets": {
            "val_ablated": "held-out last val_size training images",
            "eval500_ablated": "CIFAR-10 test images 0,2,...,998 (exact pixels for the offline data)",
        },
        "history": history,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


if __name__ == "__main__":
    main(sys.argv[1:])
