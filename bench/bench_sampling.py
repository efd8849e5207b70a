"""Benchmark: sample_counts against (a) the bare model forward on pre-made encodings, (b) a re-implementation of
the randomized-ablation reference sampling loop and (c) a per-sample CPU randperm loop, side by side in one run.

ResNet-20 (certcore.models.architectures, untrained: the forward costs the same), CIFAR-size image 3x32x32, e = 50,
batch 1000. sample_counts is given num_classes, as certify passes it (otherwise it reads c from one extra 1-image
forward). Each round times one batch of every variant back to back (rotating order), so a noisy shared machine hits all
of them alike; ratios are taken within a round and their median is reported.

    python bench/bench_sampling.py [--rounds 10] [--batch 1000]

(b) follows the algorithm of alevine0/randomizedAblation (utils_color.py), re-implemented here from a reading of
it (its licence forbids copying): the image is repeat_interleave'd to the batch; the e kept pixel indices are drawn
one position at a time for the whole batch (randint over the d - i pixels left, then shifted past the indices
already drawn by a fixed-point iteration); two zero tensors get the kept values by advanced indexing in a
channels-last view and are permuted back and concatenated; votes are one-hot scattered and summed; no_grad.
(c) is the naive loop: torch.randperm(d)[:e] per sample on the CPU, a mask per sample, stack, copy to the device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore.engine.ablation import draw_keep_masks, encode_ablated  # noqa: E402
from certcore.engine.sampling import describe_device, sample_counts  # noqa: E402
from certcore.models.architectures import build_model  # noqa: E402

C, H, W, E, CLASSES = 3, 32, 32, 50, 10
D = H * W
WALL, CPU = 0, 1  # index into a (wall, CPU) time pair


def reference_choose(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(b) e distinct pixel indices per row, drawn one position at a time for the whole batch."""
    picks = torch.zeros(batch, E, dtype=torch.long)
    for i in range(E):
        draw = torch.randint(0, D - i, (batch,), generator=generator)
        shift = torch.zeros(batch, dtype=torch.long)
        while True:  # index = draw + number of earlier picks <= index
            new_shift = (picks[:, :i] <= (draw + shift).unsqueeze(1)).sum(dim=1)
            if torch.equal(new_shift, shift):
                break
            shift = new_shift
        picks[:, i] = draw + shift
    return picks


def reference_encode(images: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """(b) the encoding built by advanced indexing into zero tensors in a channels-last view."""
    b = images.shape[0]
    flat = images.permute(0, 2, 3, 1).reshape(b, D, C)
    rows = torch.arange(b).unsqueeze(1)
    kept, complement = torch.zeros_like(flat), torch.zeros_like(flat)
    kept[rows, picks] = flat[rows, picks]
    complement[rows, picks] = 1.0 - flat[rows, picks]
    return torch.cat([t.reshape(b, H, W, C).permute(0, 3, 1, 2) for t in (kept, complement)], dim=1)


def reference_batch(image: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    return reference_encode(image.unsqueeze(0).repeat_interleave(b, 0), reference_choose(b, generator))


def randperm_batch(image: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    """(c) one CPU randperm and one mask per sample, stacked, then copied to the image's device."""
    masks = []
    for _ in range(b):
        mask = torch.zeros(D, dtype=torch.bool)
        mask[torch.randperm(D, generator=generator)[:E]] = True
        masks.append(mask)
    keep = torch.stack(masks).view(b, H, W).to(image.device)
    return encode_ablated(image.expand(b, -1, -1, -1), keep)


def ours_batch(image: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    """The encodings sample_counts feeds the model, made as it makes them (draw, encode, channels_last)."""
    keep = draw_keep_masks(b, H, W, E, generator)
    return encode_ablated(image.unsqueeze(0), keep).contiguous(memory_format=torch.channels_last)


def loop_counts(model: nn.Module, image: torch.Tensor, n: int, batch: int, make_batch: Callable) -> torch.Tensor:
    """(b)/(c): their batch maker, forward under no_grad, one-hot votes summed."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(CLASSES)
    with torch.no_grad():
        for start in range(0, n, batch):
            b = min(batch, n - start)
            votes = model(make_batch(image, b, generator)).argmax(dim=1)
            counts += torch.zeros(b, CLASSES).scatter_(1, votes.unsqueeze(1), 1.0).sum(dim=0)
    return counts


def forward_only(model: nn.Module, inputs: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for x in inputs:
            model(x)


def seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one call; CPU time (all threads of this process) is less sensitive to
    other processes competing for the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def check_reference_choose() -> None:
    picks = reference_choose(2000, torch.Generator().manual_seed(1))
    assert all(len(set(row)) == E for row in picks.tolist()) and 0 <= int(picks.min()) and int(picks.max()) < D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    batch = args.batch
    check_reference_choose()

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=CLASSES).eval()
    image = torch.rand(C, H, W, generator=torch.Generator().manual_seed(0))
    premade = ours_batch(image, batch, torch.Generator().manual_seed(0))
    premade_contiguous = premade.contiguous()
    forward_only(model, [premade[:100], premade_contiguous[:100]])  # warm-up (oneDNN primitives)

    base = "forward only, pre-made encodings (channels_last)"
    variants: dict[str, Callable[[], object]] = {
        base: lambda: forward_only(model, [premade]),
        "forward only, pre-made encodings (contiguous NCHW)": lambda: forward_only(model, [premade_contiguous]),
        # workers=1: one batch at a time, like the bare forward it is compared with
        "sample_counts": lambda: sample_counts(model, image, E, batch, seed=0, batch_size=batch, num_classes=CLASSES,
                                               workers=1),
        "(b) reference-style loop": lambda: loop_counts(model, image, batch, batch, reference_batch),
        "(c) per-sample randperm loop": lambda: loop_counts(model, image, batch, batch, randperm_batch),
    }
    makers = {
        "sample_counts inputs (draw, encode, channels_last)": ours_batch,
        "(b) reference-style inputs": reference_batch,
        "(c) per-sample randperm inputs": randperm_batch,
    }

    def input_seconds(make: Callable) -> tuple[float, float]:
        """Producing one batch of encodings alone, no model: (wall, CPU) medians of 5."""
        generator = torch.Generator().manual_seed(0)
        runs = [seconds(lambda: make(image, batch, generator)) for _ in range(5)]
        return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)

    # Each round times one batch of every variant back to back, in a rotating order, so load changes on a
    # shared machine hit all variants alike; ratios are taken within a round.
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in (*variants, *makers)}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(seconds(variants[name]))
        for name, make in makers.items():
            times[name].append(input_seconds(make))

    def median(name: str, clock: int) -> float:
        return statistics.median(t[clock] for t in times[name])

    def ratio(name: str, over: str, clock: int) -> float:
        return statistics.median(a[clock] / b[clock] for a, b in zip(times[name], times[over], strict=True))

    print(f"device: {describe_device(torch.device('cpu'))}, torch {torch.__version__}")
    print(f"ResNet-20, {C}x{H}x{W}, e={E}, batch={batch}, {args.rounds} rounds of one batch per variant")
    print(f"(n = {args.rounds * batch} samples per variant); medians over rounds, ratios paired within a round\n")
    print("| variant | wall s per batch | samples/s | ratio to sample_counts: wall | CPU time |")
    print("|---|---|---|---|---|")
    for name in variants:
        wall = median(name, WALL)
        row = f"{wall:.2f} | {batch / wall:,.0f} | {ratio(name, 'sample_counts', WALL):.3f}"
        print(f"| {name} | {row} | {ratio(name, 'sample_counts', CPU):.3f} |")
    overhead = [100 * (ratio("sample_counts", base, clock) - 1) for clock in (WALL, CPU)]
    print(f"\noverhead of sample_counts over the bare forward: {overhead[0]:+.1f}% wall, {overhead[1]:+.1f}% CPU time")
    ours = next(iter(makers))
    print(f"\n| one batch of {batch} encodings, no model | wall ms | CPU ms | ratio to ours: wall | CPU time |")
    print("|---|---|---|---|---|")
    for name in makers:
        row = f"{1e3 * median(name, WALL):.1f} | {1e3 * median(name, CPU):.1f}"
        print(f"| {name} | {row} | {ratio(name, ours, WALL):.1f} | {ratio(name, ours, CPU):.1f} |")


if __name__ == "__main__":
    main()
