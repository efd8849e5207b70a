"""Benchmark: seconds to sample n = 10,000 ablations of one image: eager, compiled (certcore.engine.compiled), and
compiled with 2 workers (two batches classified at once, ``sample_counts``'s CPU default on 2 threads).

This is issue 5's speed goal for the default checkpoint: certify n = 10,000 in <= 10 s per image on the CPU.
Each bundled CIFAR-10 sample image is sampled once by each variant, back to back, the order rotating from
image to image so that load changes on a shared machine hit all alike; reported are the medians over images
and the median within-image ratios to eager. The compile time (once per process) is reported separately. The
counts of every variant are compared with eager's on every image (compiled logits can differ in the last bits,
so a sample whose top two logits tie to within rounding may get another label; workers never change counts).

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

from certcore.engine.compiled import compile_for_cpu  # noqa: E402
from certcore.engine.sampling import CPU_BATCH_SIZE, describe_device, sample_counts  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402
from certcore.views.default_result import DEFAULT_CHECKPOINT, checkpoint_dir  # noqa: E402

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
    variants = {  # name: (model, workers)
        "eager, 1 worker": (eager, 1),
        "compiled, 1 worker": (compiled, 1),
        "compiled, 2 workers": (compiled, 2),
    }
    for model, workers in variants.values():  # warm-up: oneDNN primitives, worker threads
        sample_counts(model, images[0], meta["e"], 4 * CPU_BATCH_SIZE, seed=0, num_classes=10, workers=workers)

    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    differing = dict.fromkeys(names, 0)
    for i, image in enumerate(images):
        counts = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            model, workers = variants[name]
            result = sample_counts(model, image, meta["e"], args.n, seed=i, num_classes=10, workers=workers)
            seconds[name].append(result.seconds)
            counts[name] = result.counts
        for name in names:
            differing[name] += int(np.abs(counts[names[0]] - counts[name]).sum() // 2)

    print(f"{CHECKPOINT.name} ({meta['arch']}), e = {meta['e']}, {describe_device(torch.device('cpu'))}, "
          f"torch {torch.__version__}; {len(images)} bundled images x n = {args.n:,}, batch {CPU_BATCH_SIZE}\n")
    print(f"| variant | median s per image | min | max | median speed-up over {names[0]} | samples labelled "
          f"otherwise than {names[0]} |")
    print("|---|---|---|---|---|---|")
    for name, times in seconds.items():
        ratio = statistics.median(a / b for a, b in zip(seconds[names[0]], times, strict=True))
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {ratio:.2f}x | "
              f"{differing[name]} of {len(images) * args.n:,} |")
    print(f"\ncompile time {getattr(compiled, 'compile_seconds', float('nan')):.1f} s (once per process)")


if __name__ == "__main__":
    main()
