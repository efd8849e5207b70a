"""The expensive half of a certificate: label counts of a base classifier over n ablated copies of an image.

One image is copied to the model's device once; every batch of keep masks is then drawn there in one shot
from a ``torch.Generator`` seeded by the caller, encoded (``certcore.engine.ablation``), classified and counted with
``torch.bincount`` into a counts tensor that stays on the device until the end. No Python loop runs per
sample and nothing is copied from the host per sample.

Mask stream: on the CPU the masks depend on the seed only, not on the batch size (``torch.rand`` draws from
the CPU generator sequentially and a mask is a function of its own row of keys), so a seeded run gives the
same counts for every batch size (tested). On CUDA the generator's stream is laid out per kernel launch, so
there the masks, hence the counts, depend on the seed *and* the batch size.

Concurrent callers (app sessions are threads of one server sharing one cached model) on the same GPU take
turns batch by batch (``device_lock``): each session's progress keeps moving, and the GPU holds one batch's
activations at a time instead of one per session. On the CPU no lock is taken.

On the CPU, consecutive batches are classified by ``workers`` threads at once (``default_workers``): the masks
are still drawn one batch after the other from the one generator in the calling thread, and counts are sums,
so the counts do not depend on ``workers`` either (tested). On a 2-core CPU bench/bench_compiled.py measured 2
workers at 1.06-1.15x the samples/s of 1 when idle, and 4.4x with a training run on the same cores: a
multi-threaded operator waits at its end for its slowest thread, two independent batches do not wait for each other.
"""

from __future__ import annotations

import contextlib
import itertools
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certcore.engine.ablation import draw_keep_masks, encode_ablated, encoded_shape
from certcore.math.validation import check_d_e, check_int

# Samples per forward pass when the caller gives none. On a CPU the counts do not depend on it and small batches
# are faster (their activations stay in the caches): bench/bench_batch_size.py measured batch 100 at 1.9x the
# samples/s of batch 1000 on a 2-core AMD EPYC. A GPU wants large batches: on an NVIDIA H200 the same benchmark
# measured batch 10,000 at 1.50x the samples/s of batch 1000 (159,000 against 106,000 for the default ResNet-20;
# 20,000 gave 1.58x). Larger inputs that do not fit halve the batch on the out-of-memory error.
CPU_BATCH_SIZE = 100
CUDA_BATCH_SIZE = 10_000
MAX_SEED = 2**64 - 1

Progress = Callable[[int, int], bool | None]
CountsProgress = Callable[[int, int, np.ndarray], bool | None]  # progress(done, n, running counts): with_counts=True


@dataclass(frozen=True, eq=False)
class SamplingResult:
    """Label counts of ``samples`` ablated copies of one image (``n`` requested) and how they were obtained.

    ``partial`` is True only for the result carried by ``SamplingCancelled``; its ``counts`` sum to fewer
    than ``n``. ``batch_size`` is the one used in the end (smaller than requested after a CUDA OOM).
    """

    counts: np.ndarray
    n: int
    batch_size: int
    device: str
    seconds: float
    partial: bool = False

    @property
    def samples(self) -> int:
        """Number of samples actually classified (``n`` unless ``partial``)."""
        return int(self.counts.sum())

    @property
    def samples_per_second(self) -> float:
        """Throughput of the whole call, set-up included."""
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


class SamplingCancelled(Exception):
    """Raised by ``sample_counts`` when ``progress`` returns False; ``result`` holds the partial counts."""

    def __init__(self, result: SamplingResult) -> None:
        super().__init__(f"sampling cancelled after {result.samples} of {result.n} samples")
        self.result = result


def check_image(image: object) -> torch.Tensor:
    """An image as a float tensor (C, H, W) with every value in [0, 1]; ValueError otherwise."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor (C, H, W) in [0, 1], got {type(image).__name__}")
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image must have shape (C, H, W) with C, H, W >= 1, got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor with values in [0, 1], got {image.dtype}")
    if not bool(((image >= 0) & (image <= 1)).all()):
        raise ValueError("image values must lie in [0, 1] (found a value outside it, or NaN)")
    return image


def resolve_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """The device to sample on: ``device`` if given, else that of the model's parameters (CPU if none).

    The model is never moved (that would change the caller's object): a ``device`` other than the one
    holding the model's parameters is a ValueError.
    """
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    model_device = tensor.device if tensor is not None else None
    if device is None:
        return model_device or torch.device("cpu")
    wanted = torch.device(device)
    if wanted.type == "cuda" and wanted.index is None:
        wanted = torch.device("cuda", torch.cuda.current_device())
    if model_device is not None and model_device != wanted:
        raise ValueError(f"device is {wanted} but the model lives on {model_device}; move the model first")
    return wanted


def default_batch_size(device: torch.device | str) -> int:
    """Samples per forward pass when none is given: ``CUDA_BATCH_SIZE`` on a GPU, ``CPU_BATCH_SIZE`` otherwise."""
    return CUDA_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_BATCH_SIZE


def default_workers(device: torch.device | str) -> int:
    """Batches classified at once when none is given: 2 on a CPU running more than one torch thread, else 1.

    Measured only on a 2-core CPU (bench/RESULTS.md); a GPU classifies one batch at a time (``device_lock``).
    """
    return 2 if torch.device(device).type == "cpu" and torch.get_num_threads() > 1 else 1


def describe_device(device: torch.device) -> str:
    """A device as recorded in results: ``cuda:0 (NVIDIA H100 ...)`` or ``cpu (AMD EPYC, 2 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({_cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"
    return str(device)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported), nothing elsewhere (tests/test_cuda.py checks labels)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _logits(model: nn.Module, encoded: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """The model's logits for a batch of encodings, fed channels_last (faster on CPU, bench/RESULTS.md)."""
    with autocast_for(encoded.device):
        logits = model(encoded.contiguous(memory_format=torch.channels_last))
    return _checked_logits(logits, num_classes)


def ablated_logits(model: nn.Module, image: torch.Tensor, keep: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The model's logits for the ablations of ``image`` (1, C, H, W) under keep masks ``keep`` (B, H, W).

    A model with a method ``ablated_logits(image, keep)`` builds the encoding itself (``compile_for_cuda``'s
    classifier fuses it into its compiled graph); any other model gets ``encode_ablated(image, keep)``.
    """
    fused = getattr(model, "ablated_logits", None)
    if fused is None:
        return _logits(model, encode_ablated(image, keep), num_classes)
    with autocast_for(image.device):
        return _checked_logits(fused(image, keep), num_classes)


def _checked_logits(logits: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """``logits`` if they have shape (batch, num_classes), else the ValueError that says what the model returned."""
    if logits.ndim != 2 or (num_classes is not None and logits.shape[1] != num_classes):
        want = f"num_classes={num_classes}" if num_classes is not None else "num_classes"
        raise ValueError(f"the model must return logits of shape (batch, {want}), got {tuple(logits.shape)}")
    return logits


def _check_eval_mode(model: nn.Module) -> None:
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()): the base classifier must be deterministic")


def num_classes_of(model: nn.Module, image: torch.Tensor, device: torch.device | str | None = None) -> int:
    """The number of classes c of ``model``, read from its logits for one fully ablated copy of ``image``."""
    _check_eval_mode(model)
    dev = resolve_device(model, device)
    return _num_classes_unchecked(model, check_image(image), dev)


def _num_classes_unchecked(model: nn.Module, image: torch.Tensor, dev: torch.device) -> int:
    """``num_classes_of`` for a checked model (eval mode), image and device."""
    c, h, w = image.shape
    try:
        with torch.inference_mode():
            logits = _logits(model, torch.zeros(1, *encoded_shape((c, h, w)), device=dev), None)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:  # e.g. a 4-channel or greyscale image fed to an RGB model
        raise ValueError(
            f"image of shape {(c, h, w)} does not fit the model, which refused its {2 * c}-channel ablation encoding "
            f"(give the number of channels the model was trained on, e.g. (3, H, W) for RGB): {exc}"
        ) from exc
    if logits.shape[1] < 2:
        raise ValueError(f"the model must have at least 2 classes, got {logits.shape[1]}")
    return int(logits.shape[1])


_DEVICE_LOCKS: dict[torch.device, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device) -> contextlib.AbstractContextManager:
    """The lock one batch of sampling holds on ``device``: one shared ``threading.Lock`` per CUDA device, so
    concurrent sessions interleave batch by batch and never stack their activations in GPU memory; a no-op
    context on the CPU, where threads share the cores anyway."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def count_labels(
    model: nn.Module, image: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor, batch_size: int
) -> int:
    """Add the labels predicted for the encodings of ``keep`` to ``counts``, in chunks of ``batch_size``.

    ``image`` is (1, C, H, W) and broadcasts against the masks, so 1 - x is computed once, not per sample.

    A CUDA out-of-memory error halves the chunk and retries the same masks (no sample is lost or drawn
    twice); returns the chunk size that worked. The retry runs after the ``except`` block, once the failed
    attempt's tensors are released.
    """
    start = 0
    while start < len(keep):
        part = keep[start : start + batch_size]
        try:
            logits = ablated_logits(model, image, part, len(counts))
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            continue
        counts += torch.bincount(logits.argmax(dim=1), minlength=len(counts))
        start += len(part)
    return batch_size


def _counts_concurrently(
    model: nn.Module, image: torch.Tensor, keeps: Iterable[torch.Tensor], num_classes: int, workers: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (samples, label counts) of each batch of keep masks, in order, classifying up to ``workers``
    batches at once on threads (CPU only: no out-of-memory retry). ``keeps`` is consumed in the calling
    thread, so the masks are drawn in the same order as sequentially. Closing the iterator early drops the
    batches still in flight."""

    def classify(keep: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # thread-local: each worker enters it itself
            logits = ablated_logits(model, image, keep, num_classes)
            return torch.bincount(logits.argmax(dim=1), minlength=num_classes)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="certcore-sampling")
    pending: deque = deque()
    try:
        for keep in keeps:
            pending.append((len(keep), pool.submit(classify, keep)))
            if len(pending) > workers:  # at most one batch waits beyond those running: bounded memory
                samples, future = pending.popleft()
                yield samples, future.result()
        while pending:
            samples, future = pending.popleft()
            yield samples, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """A checked sampling request: the model, the image as a (1, C, H, W) float32 batch on ``device``, and the
    parameters every batch needs. ``plan_sampling`` builds it (the one place its arguments are checked);
    ``sample_counts``, ``certify`` and the shared sampling queue (``certcore.engine.queue``) run it."""

    model: nn.Module
    image: torch.Tensor
    e: int
    n: int
    seed: int
    batch_size: int
    device: torch.device
    num_classes: int

    @property
    def d(self) -> int:
        """Pixels of the image, H * W."""
        return self.image.shape[2] * self.image.shape[3]

    def generator(self) -> torch.Generator:
        """A fresh generator on the device, seeded with ``seed``: the start of this request's mask stream."""
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """The next ``batch`` keep masks of the stream ``generator`` (``draw_keep_masks``)."""
        _, _, height, width = self.image.shape
        return draw_keep_masks(batch, height, width, self.e, generator, self.device)

    def result(self, counts: torch.Tensor, batch_size: int, started: float, partial: bool) -> SamplingResult:
        """The ``SamplingResult`` of ``counts``, timed from ``started`` (a ``time.perf_counter`` reading)."""
        return SamplingResult(
            counts=counts.cpu().numpy(),
            n=self.n,
            batch_size=batch_size,
            device=describe_device(self.device),
            seconds=time.perf_counter() - started,
            partial=partial,
        )


def plan_sampling(
    model: nn.Module,
    image: torch.Tensor,
    e: int,
    n: int,
    *,
    seed: int,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
) -> SamplingPlan:
    """Check a sampling request as ``sample_counts`` documents it (ValueError naming the parameter) and return
    it as a ``SamplingPlan``; reads the number of classes from the model when not given."""
    dev = resolve_device(model, device)
    image = check_image(image)
    _, height, width = image.shape
    _, e = check_d_e(height * width, e)
    n = check_int(n, "n", 1)
    batch_size = default_batch_size(dev) if batch_size is None else check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed", 0, MAX_SEED)
    _check_eval_mode(model)
    c = _num_classes_unchecked(model, image, dev) if num_classes is None else check_int(num_classes, "num_classes", 2)
    x = image.to(dev, torch.float32).unsqueeze(0)
    return SamplingPlan(model, x, e, n, seed, batch_size, dev, c)


def check_workers(workers: int | None, device: torch.device) -> int:
    """``workers`` for sampling on ``device`` (``default_workers`` when None); ValueError naming it otherwise."""
    workers = default_workers(device) if workers is None else check_int(workers, "workers", 1)
    if workers > 1 and device.type != "cpu":
        raise ValueError(f"workers must be 1 on {device.type} (batches take turns on a GPU), got {workers}")
    return workers


def sample_counts(
    model: nn.Module,
    image: torch.Tensor,
    e: int,
    n: int,
    *,
    seed: int,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    progress: Progress | CountsProgress | None = None,
    workers: int | None = None,
    with_counts: bool = False,
) -> SamplingResult:
    """Counts n_1..n_c of the labels ``model`` predicts for ``n`` ablations of ``image`` keeping ``e`` pixels.

    ``model`` maps the 2C-channel encoding (B, 2C, H, W) to logits (B, c) and must be in eval mode: the
    theory needs a deterministic base classifier (a BatchNorm in training mode makes a sample's label depend
    on its batch). ``image`` is (C, H, W) in [0, 1]; d = H * W. ``device`` defaults to the model's;
    ``num_classes`` (c) is read from the model when not given; ``batch_size`` defaults to
    ``default_batch_size``. Runs under ``torch.inference_mode``, on CUDA also under bf16/fp16 autocast (that
    path is tested on an NVIDIA H200 by tests/test_cuda.py).
    Encodings are fed channels_last, measured faster on CPU (bench/RESULTS.md), so the model must not
    ``view`` its raw input (``reshape`` is fine); on a GPU, converting the model once with
    ``model.to(memory_format=torch.channels_last)`` saves a weight conversion per batch. Threads: the caller's
    ``torch.set_num_threads`` is respected.

    ``progress(done, n)`` is called after every batch with increasing ``done`` ending at ``n``; returning
    False (None does not count) before the end raises ``SamplingCancelled`` carrying the partial counts.
    With ``with_counts=True`` it is called as ``progress(done, n, counts)`` instead, ``counts`` a fresh int64
    array of the label counts of those ``done`` samples (for a live view; the counts are the same either way).
    Same seed and device -> identical counts; the module docstring says when the batch size matters.
    ``workers`` (CPU only, default ``default_workers``) is the number of batches classified at once; it does
    not change the counts. On a GPU it must be 1.
    """
    plan = plan_sampling(model, image, e, n, seed=seed, batch_size=batch_size, device=device, num_classes=num_classes)
    return run_plan(plan, progress, check_workers(workers, plan.device), with_counts=with_counts)


def run_plan(plan: SamplingPlan, progress: Progress | CountsProgress | None, workers: int,
             with_counts: bool = False) -> SamplingResult:
    """The sampling loop of ``sample_counts`` for a checked plan and worker count; the clock starts here.
    ``with_counts``: ``progress(done, n, counts)`` (see ``sample_counts``)."""
    started = time.perf_counter()
    model, dev, n, batch_size = plan.model, plan.device, plan.n, plan.batch_size
    generator = plan.generator()
    counts = torch.zeros(plan.num_classes, dtype=torch.int64, device=dev)
    done = 0

    def report(samples: int) -> None:
        nonlocal done
        done += samples
        if progress is None:
            return
        go_on = progress(done, n, counts.cpu().numpy().copy()) if with_counts else progress(done, n)
        if go_on is False and done < n:
            raise SamplingCancelled(plan.result(counts, batch_size, started, partial=True))

    with torch.inference_mode():
        if workers > 1:
            keeps = (plan.draw(min(batch_size, n - start), generator) for start in range(0, n, batch_size))
            batches = _counts_concurrently(model, plan.image, keeps, plan.num_classes, workers)
            try:
                for samples, batch_counts in batches:
                    counts += batch_counts
                    report(samples)
            finally:
                batches.close()
        while done < n:
            with device_lock(dev):
                keep = plan.draw(min(batch_size, n - done), generator)
                batch_size = count_labels(model, plan.image, keep, counts, batch_size)
            report(len(keep))
        return plan.result(counts, batch_size, started, partial=False)
