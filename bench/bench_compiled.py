"""Benchmark: seconds to sample n = 10,000 ablations of one image, eager against compiled (certcore.compiled).

This is issue 5's speed goal for the default checkpoint: certify n = 10,000 in <= 10 s per image on the CPU.
Each bundled CIFAR-10 sample image is sampled once by each variant, back to back, the order alternating from
image to image so that load changes on a shared machine hit both alike; reported are the medians over images
and the median within-image ratio. The compile time (once per process) is reported separately. The counts of
both variants are compared on every image (they can differ only where two logits tie to within rounding).

    python bench/bench_compiled.py [--threads 2] [--images 10] [--n 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore.checkpoints import load_checkpoint  # noqa: E402
from certcore.compiled import compile_for_cpu  # noqa: E402
from certcore.data import bundled_samples  # noqa: E402
from certcore.default_result import DEFAULT_CHECKPOINT, checkpoint_dir  # noqa: E402
from certcore.sampling import CPU_BATCH_SIZE, describe_device, sample_counts  # noqa: E402

CHECKPOINT = checkpoint_dir() / DEFAULT_CHECKPOINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager, meta = load_checkpoint(CHECKPOINT)
    images = [s.image for s in bundled_samples("cifar10")[: args.images]]
    compiled = compile_for_cpu(eager, tuple(images[0].shape))
    variants = {"eager": eager, "compiled": compiled}
    for model in variants.values():  # warm-up: oneDNN primitives
        sample_counts(model, images[0], meta["e"], 2 * CPU_BATCH_SIZE, seed=0, num_classes=10)

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    differing = 0
    for i, image in enumerate(images):
        counts = {}
        for name in list(variants)[:: 1 if i % 2 == 0 else -1]:
            result = sample_counts(variants[name], image, meta["e"], args.n, seed=i, num_classes=10)
            seconds[name].append(result.seconds)
            counts[name] = result.counts
        differing += int(np.abs(counts["eager"] - counts["compiled"]).sum() // 2)

    ratio = statistics.median(a / b for a, b in zip(seconds["eager"], seconds["compiled"], strict=True))
    print(f"{CHECKPOINT.name} ({meta['arch']}), e = {meta['e']}, {describe_device(torch.device('cpu'))}, "
          f"torch {torch.__version__}; {len(images)} bundled images x n = {args.n:,}, batch {CPU_BATCH_SIZE}\n")
    print("| variant | median s per image | min | max |")
    print("|---|---|---|---|")
    for name, times in seconds.items():
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
    print(f"\nmedian within-image speed-up of compiled over eager: {ratio:.2f}x; "
          f"compile time {getattr(compiled, 'compile_seconds', float('nan')):.1f} s (once per process); "
          f"samples labelled differently: {differing} of {len(images) * args.n:,}")


if __name__ == "__main__":
    main()
