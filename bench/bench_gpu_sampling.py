"""Benchmark: GPU sampling near the hardware's limit (issue 18): samples/s of ``sample_counts`` for eager fp32,
eager bf16 autocast and ``compile_for_cuda`` (encoding fused, CUDA graphs at one batch shape, bf16), side by side,
for the default ResNet-20 and the paper's ResNet-110, over batch sizes up to the largest that fits.

Per checkpoint: multiply-adds per sample counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
and the linear layer; FLOPs = 2 x multiply-adds); the largest batch found by trying eager bf16 at doubling sizes
(``sample_counts`` halves a batch that runs out of memory, so a size fits when it was kept) up to
``--max-batch``. Per (checkpoint, batch size), in priority order (the largest size first, then ``--sizes`` as
given) while ``--budget`` seconds last: each variant warmed up (compiled once per batch size), then ``--repeats``
rounds, variants in rotating order, each a ``torch.cuda.synchronize()``-bounded call of ``sample_counts`` over
whole batches (at least ``--samples``); reported are the median samples/s, the median within-round ratio to eager
fp32 and the fraction of the GPU's dense bf16 peak (``--peak-tflops``, default 989: NVIDIA's H200 SXM datasheet,
1,979 TFLOP/s bf16 "with sparsity", halved for dense; this workplace measured 769-798 TFLOP/s on an 8192^3 bf16
matrix product, /work/.library/device/KINDS.md). Then the counts of one seed (``--count-n`` samples, seed 0) of
every variant: against eager fp32 at the same batch size (same masks, so only numerics differ: bf16, folded
BatchNorm, other kernels move near-tie labels) and against the same variant at the first size measured (on CUDA
the masks themselves depend on the batch size, certcore.engine.sampling's docstring: the counts differ as two
independent samples do, so the top label's frequency is compared in standard errors; on the CPU they are equal).
"eager fp32" on CUDA lets cuDNN use TF32 (PyTorch's default for convolutions). On the CPU, where sampling has no
autocast, "eager bf16" is fp32 too and "compiled" is ``compile_for_cpu``: that is only a dry run of this script.

Writes gpu_sampling.json and gpu_sampling.md into ``--out`` after every measurement, so a run cut short keeps
what it measured.

    python bench/bench_gpu_sampling.py --out DIR [--device cuda] [--modes reduce-overhead] [--budget 300]
    python bench/bench_gpu_sampling.py --out /tmp/gpu_dry --device cpu --tiny    # CPU dry run, about a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore.engine.ablation import encoded_shape  # noqa: E402
from certcore.engine.compiled import CUDA_MODES, CompiledClassifier, compile_for_cpu, compile_for_cuda  # noqa: E402
from certcore.engine.sampling import describe_device, sample_counts  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402
from certcore.views.default_result import DEFAULT_CHECKPOINT, checkpoint_dir  # noqa: E402

CHECKPOINTS = (DEFAULT_CHECKPOINT, "cifar10_resnet110_e50.pt")
H200_DENSE_BF16_TFLOPS = 989.0


class Fp32(nn.Module):
    """``model`` with autocast switched off inside: sampling's bf16 autocast on CUDA does not reach it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.model(x.float())


def multiply_adds(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass per sample, counted by FlopCounterMode on a batch of 2 (FLOPs / 2)."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(2, *encoded_shape(image_shape), device=device))
    return counter.get_total_flops() // 4


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Drop compiled graphs (and their CUDA graph memory pools) and cached blocks before the next batch size."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_batch(model: nn.Module, image: torch.Tensor, e: int, start: int, cap: int) -> int:
    """The largest of start, 2 start, 4 start, ... <= cap at which eager bf16 sampling keeps its batch whole."""
    fits, size = 0, start
    while size <= cap:
        try:
            kept = sample_counts(model, image, e, size, seed=0, batch_size=size, num_classes=10, workers=1).batch_size
        except RuntimeError as exc:  # e.g. a kernel refusing a tensor that large
            print(f"batch {size}: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
            kept = 0
        free_memory(image.device if image.device.type == "cuda" else torch.device("cpu"))
        if kept != size:
            break
        fits, size = size, 2 * size
    return fits or start


def timed(model: nn.Module, image: torch.Tensor, e: int, n: int, batch: int, seed: int,
          device: torch.device) -> float:
    """Samples/s of one synchronize()-bounded sample_counts call."""
    synchronize(device)
    started = time.perf_counter()
    sample_counts(model, image, e, n, seed=seed, batch_size=batch, device=device, num_classes=10, workers=1)
    synchronize(device)
    return n / (time.perf_counter() - started)


def top_label_z(a: np.ndarray, b: np.ndarray) -> float:
    """Difference of the top label's frequency in two count vectors, in standard errors of the difference."""
    top, n1, n2 = int(a.argmax()), a.sum(), b.sum()
    p1, p2 = a[top] / n1, b[top] / n2
    pooled = (a[top] + b[top]) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(abs(p1 - p2) / se) if se > 0 else 0.0


def measure_size(name: str, eager: nn.Module, image: torch.Tensor, e: int, batch: int, macs: int,
                 args: argparse.Namespace, device: torch.device) -> list[dict]:
    """All variants of one checkpoint at one batch size: rows of the results table."""
    variants: dict[str, nn.Module] = {"eager fp32": Fp32(eager).eval(), "eager bf16 autocast": eager}
    compile_seconds: dict[str, float] = {}
    for mode in args.modes:
        label = f"compiled {mode}" if device.type == "cuda" else "compiled (CPU: compile_for_cpu)"
        fast = (compile_for_cuda(eager, tuple(image.shape), batch, mode) if device.type == "cuda"
                else compile_for_cpu(eager, tuple(image.shape), batch))
        if isinstance(fast, CompiledClassifier):
            variants[label], compile_seconds[label] = fast, fast.compile_seconds
        else:
            print(f"{name} batch {batch}: {label} fell back to eager (CompileWarning above); left out",
                  file=sys.stderr)
    n = batch * math.ceil(args.samples / batch)
    names = list(variants)
    for model in variants.values():  # warm-up: cuDNN algorithm choice, the first CUDA graph replays
        timed(model, image, e, batch, batch, 0, device)
    rates: dict[str, list[float]] = {v: [] for v in names}
    for r in range(args.repeats):
        for v in names[r % len(names):] + names[: r % len(names)]:
            rates[v].append(timed(variants[v], image, e, n, batch, r + 1, device))
    rows = []
    for v in names:
        counts = sample_counts(variants[v], image, e, args.count_n, seed=0, batch_size=batch, device=device,
                               num_classes=10, workers=1).counts
        rate = statistics.median(rates[v])
        rows.append({
            "checkpoint": name, "batch": batch, "variant": v, "samples_per_s": rate,
            "min": min(rates[v]), "max": max(rates[v]), "timed_samples": n,
            "ratio_to_eager_fp32": statistics.median(a / b for a, b in zip(rates[v], rates["eager fp32"],
                                                                             strict=True)),
            "tflops": rate * 2 * macs / 1e12, "fraction_of_peak": rate * 2 * macs / (args.peak_tflops * 1e12),
            "compile_s": compile_seconds.get(v), "counts": [int(c) for c in counts],
        })
    reference = np.array(rows[0]["counts"])
    for row in rows:  # same masks (same seed and batch size): at least this many samples got another label
        row["differing_vs_eager_fp32"] = int(np.abs(np.array(row["counts"]) - reference).sum() // 2)
    del variants
    free_memory(device)
    return rows


def compare_sizes(rows: list[dict]) -> None:
    """Each row's counts against the same checkpoint and variant at the first batch size measured."""
    first: dict[tuple[str, str], dict] = {}
    for row in rows:
        base = first.setdefault((row["checkpoint"], row["variant"]), row)
        a, b = np.array(base["counts"]), np.array(row["counts"])
        row["vs_batch"] = base["batch"]
        row["differing_vs_first_batch"] = int(np.abs(a - b).sum() // 2)
        row["top_label_z_vs_first_batch"] = top_label_z(a, b)


def write(out: Path, report: dict) -> None:
    """gpu_sampling.json and gpu_sampling.md in ``out``."""
    compare_sizes(report["rows"])
    (out / "gpu_sampling.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"{report['device']}, torch {report['torch']}, {report['python']}; n = {report['args']['count_n']:,} "
             f"for the counts (seed 0), timed calls of >= {report['args']['samples']:,} samples, "
             f"{report['args']['repeats']} rounds; peak {report['args']['peak_tflops']:g} TFLOP/s dense bf16", ""]
    for ckpt in report["checkpoints"]:
        lines.append(f"- {ckpt['name']} ({ckpt['arch']}, e = {ckpt['e']}): {ckpt['macs'] / 1e6:.1f} M multiply-adds "
                     f"per sample; largest batch that fits (eager bf16, <= {report['args']['max_batch']:,}): "
                     f"{ckpt['largest_batch']:,}")
    lines += ["", "| checkpoint | batch | variant | samples/s | x eager fp32 | TFLOP/s | % of peak | compile s | "
              "labels != eager fp32 (same masks) | counts vs first batch: differing, top-label z |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["checkpoint"], r["batch"])):
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(f"| {r['checkpoint']} | {r['batch']:,} | {r['variant']} | {r['samples_per_s']:,.0f} | "
                     f"{r['ratio_to_eager_fp32']:.2f}x | {r['tflops']:.3g} | {100 * r['fraction_of_peak']:.3g}% | "
                     f"{compile_s} | {r['differing_vs_eager_fp32']} of {sum(r['counts']):,} | "
                     f"{r['differing_vs_first_batch']} (batch {r['vs_batch']:,}), z = "
                     f"{r['top_label_z_vs_first_batch']:.1f} |")
    if report["skipped"]:
        lines += ["", "Not measured (budget): " + ", ".join(report["skipped"])]
    (out / "gpu_sampling.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``); ``--tiny`` sets small sizes for a CPU dry run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_sampling.json and gpu_sampling.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS))
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 1000],
                   help="batch sizes after the largest, in the order measured")
    p.add_argument("--max-batch", type=int, default=131_072, help="cap of the largest-batch search")
    p.add_argument("--modes", nargs="+", choices=CUDA_MODES, default=["reduce-overhead"],
                   help="compile_for_cuda modes, one compiled variant each")
    p.add_argument("--samples", type=int, default=200_000, help="samples per timed call (rounded up to batches)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--count-n", type=int, default=100_000)
    p.add_argument("--peak-tflops", type=float, default=H200_DENSE_BF16_TFLOPS)
    p.add_argument("--budget", type=float, default=float("inf"), help="seconds; no new measurement starts after")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="batch 16 only, a few samples: a CPU dry run")
    args = p.parse_args(argv)
    if args.tiny:
        args.sizes, args.max_batch, args.samples, args.repeats, args.count_n = [16], 16, 48, 2, 160
        args.modes = args.modes[:1]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = bundled_samples("cifar10")[0].image
    report = {"device": describe_device(device), "torch": torch.__version__, "python": platform.python_version(),
              "args": vars(args), "checkpoints": [], "rows": [], "skipped": []}
    models = {}
    for name in args.checkpoints:
        model, meta = load_checkpoint(checkpoint_dir() / name, device=device)
        model = model.to(memory_format=torch.channels_last)
        largest = largest_batch(model, image, meta["e"], max(args.sizes), args.max_batch)
        macs = multiply_adds(model, tuple(image.shape))
        models[name] = (model, meta["e"], macs)
        report["checkpoints"].append({"name": name, "arch": meta["arch"], "e": meta["e"], "macs": macs,
                                      "largest_batch": largest})
        print(f"{name}: {macs / 1e6:.1f} M multiply-adds per sample, largest batch {largest}", file=sys.stderr)
    plan = [(ckpt["name"], ckpt["largest_batch"]) for ckpt in report["checkpoints"]]
    plan += [(name, size) for size in args.sizes for name in args.checkpoints if (name, size) not in plan]
    for name, size in plan:
        if time.perf_counter() - started > args.budget:
            report["skipped"].append(f"{name} at batch {size:,}")
            continue
        model, e, macs = models[name]
        report["rows"] += measure_size(name, model, image, e, size, macs, args, device)
        write(out, report)
        print(f"[{time.perf_counter() - started:.0f} s] {name} batch {size}: done", file=sys.stderr)
    write(out, report)
    print((out / "gpu_sampling.md").read_text())


if __name__ == "__main__":
    main()
