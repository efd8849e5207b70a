"""Benchmark: samples/s of the ImageNet base classifier (EfficientNet-Lite0 with its inpainting front end) through
the real sampling path (``certcore.engine.sampling.sample_counts``: mask drawing, encoding, classification, counting).

Issue 15's CPU goal: >= 50 samples/s on the 2-core CPU (n = 1,000 in about 20 s). Variants: eager with 1 and 2
workers (``sample_counts``'s CPU default is 2 on 2 threads) and, unless ``--no-compile``, the Inductor-compiled model
of ``certcore.engine.compiled`` with 2 workers. Each bundled ImageNet image is sampled by every variant back to back,
the order rotating from image to image so that load changes on a shared machine hit all alike; reported are medians
over images of samples/s (wall) and of samples per CPU-second (``time.process_time``, all threads: the less
contention-sensitive figure), and the median within-image ratio to the first variant.

    python bench/bench_imagenet.py [--threads 2] [--images 3] [--n 500] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore.engine.compiled import compile_for_cpu  # noqa: E402
from certcore.engine.sampling import CPU_BATCH_SIZE, describe_device, sample_counts  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "imagenet_effnetlite0_e1000.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager, meta = load_checkpoint(CHECKPOINT, dataset="imagenet")
    e = meta["e"]
    images = [s.image for s in bundled_samples("imagenet")[: args.images]]
    variants = {"eager, 1 worker": (eager, 1), "eager, 2 workers": (eager, 2)}
    compile_s = float("nan")
    if not args.no_compile:
        compiled = compile_for_cpu(eager, tuple(images[0].shape))
        compile_s = getattr(compiled, "compile_seconds", float("nan"))
        variants["compiled, 2 workers"] = (compiled, 2)
    for model, workers in variants.values():  # warm-up: oneDNN primitives, worker threads
        sample_counts(model, images[0], e, 2 * CPU_BATCH_SIZE, seed=0, num_classes=1000, workers=workers)

    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for i, image in enumerate(images):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            model, workers = variants[name]
            c0 = time.process_time()
            result = sample_counts(model, image, e, args.n, seed=i, num_classes=1000, workers=workers)
            wall[name].append(result.samples_per_second)
            cpu[name].append(args.n / (time.process_time() - c0))

    print(f"{CHECKPOINT.name} ({meta['arch']}), e = {e}, {describe_device(torch.device('cpu'))}, "
          f"torch {torch.__version__}; {len(images)} bundled images x n = {args.n:,}, batch {CPU_BATCH_SIZE}\n")
    print(f"| variant | median samples/s (wall) | min | max | ratio to {names[0]} | median samples per CPU-s |")
    print("|---|---|---|---|---|---|")
    for name in names:
        ratio = statistics.median(b / a for a, b in zip(wall[names[0]], wall[name], strict=True))
        w = wall[name]
        print(f"| {name} | {statistics.median(w):.1f} | {min(w):.1f} | {max(w):.1f} | {ratio:.2f}x | "
              f"{statistics.median(cpu[name]):.1f} |")
    if not args.no_compile:
        print(f"\ncompile time {compile_s:.1f} s (once per process)")


if __name__ == "__main__":
    main()
