"""Benchmark: samples/s of ``sample_counts`` against the batch size, on the shipped default checkpoint.

On a CPU the counts do not depend on the batch size (tested), so the batch size is a pure speed knob there; this
measures which one to default to. Each round certifies the same image once per batch size (``--samples`` samples),
in a rotating order so that load changes on a shared machine hit every size alike; reported are the median
samples/s and the median within-round ratio to the reference size (``--reference``, the old default 1000).

    python bench/bench_batch_size.py [--threads 2] [--rounds 6] [--samples 2000] [--sizes 50 100 128 256 500 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore.engine.sampling import describe_device, sample_counts  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402
from certcore.views.default_result import DEFAULT_CHECKPOINT, checkpoint_dir  # noqa: E402

CHECKPOINT = checkpoint_dir() / DEFAULT_CHECKPOINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 128, 256, 500, 1000])
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = sorted(set(args.sizes) | {args.reference})
    model, meta = load_checkpoint(CHECKPOINT, device=args.device)
    image = bundled_samples("cifar10")[0].image
    # workers=1: one batch at a time, so the batch size alone varies (and the only choice on a GPU)
    sample_counts(model, image, meta["e"], 2 * max(sizes), seed=0, batch_size=max(sizes), device=args.device,
                  workers=1)

    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for r in range(args.rounds):
        for size in sizes[r % len(sizes):] + sizes[: r % len(sizes)]:
            started = time.perf_counter()
            sample_counts(model, image, meta["e"], args.samples, seed=r, batch_size=size, device=args.device,
                          workers=1)
            rates[size].append(args.samples / (time.perf_counter() - started))

    device = describe_device(torch.device(args.device))
    print(f"{CHECKPOINT.name} ({meta['arch']}), e = {meta['e']}, {device}, {args.rounds} rounds x "
          f"{args.samples} samples per size; medians, ratios paired within a round\n")
    print(f"| batch size | samples/s | ratio to batch {args.reference} |")
    print("|---|---|---|")
    for size in sizes:
        ratio = statistics.median(a / b for a, b in zip(rates[size], rates[args.reference], strict=True))
        print(f"| {size} | {statistics.median(rates[size]):.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
