"""Faster certification: a base classifier compiled by Inductor with frozen weights, at one batch shape.

``torch.compile(model, options={"freezing": True})`` folds BatchNorm into the convolutions and turns the weights
into constants of the graph (pre-packed for oneDNN on the CPU, cast once to bf16 under CUDA autocast). That is
only valid while the weights do not change, which is the case when certifying. bench/bench_compiled.py measures
the gain against eager PyTorch on the CPU sampling path, bench/bench_gpu_sampling.py on a GPU (bench/RESULTS.md).

A compiled graph is specialised to one input shape. Sampling calls the model with full batches, a shorter last
batch and a one-sample probe (``num_classes_of``), so ``CompiledClassifier`` pads every call to whole batches of
the shape it was compiled for: it compiles once, in the warm-up call of ``compile_for_cpu`` / ``compile_for_cuda``,
and never again. Inputs of any other image shape go to the eager model, so errors read exactly as they would
without compilation.

Compiled and eager logits can differ in the last bits (another summation order; on CUDA also bf16 weights folded
with BatchNorm), so a sample whose top two logits tie to within rounding may get another label. Both are
deterministic classifiers and the certificate is valid for the one that sampled; ``python -m certcore.evaluate
--compile`` records which one that was.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable

import torch
import torch._inductor
from torch import nn

from certcore.engine.ablation import encode_ablated, encoded_shape
from certcore.engine.sampling import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, autocast_for
from certcore.math.validation import check_int

CUDA_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")


class CompileWarning(UserWarning):
    """Compilation was not possible here (e.g. no C++ compiler); the eager model is used instead."""


def whole_batches(x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """``x`` split along its first dimension into chunks of exactly ``batch_size`` rows, the last one padded
    with zeros (False for masks); the caller keeps the first ``len(x)`` rows of the results."""
    pad = -len(x) % batch_size
    if pad:
        x = torch.cat((x, x.new_zeros((pad, *x.shape[1:]))))
    return x.split(batch_size)


class CompiledClassifier(nn.Module):
    """``model`` compiled for inference on batches of exactly ``batch_size`` inputs of ``input_shape`` (C, H, W).

    Calls with another number of inputs are padded with zeros to whole batches (the padding's logits are
    dropped); calls with another input shape run the eager ``model``. Inference only: the result is computed
    under ``torch.inference_mode`` and the wrapper refuses to run in training mode. ``mode`` is a
    ``torch.compile`` mode whose Inductor options are added to freezing.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], batch_size: int,
                 mode: str = "default") -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(input_shape)
        self.batch_size = batch_size
        self.compile_seconds = 0.0
        # ``mode`` and ``options`` cannot both be given to torch.compile: the mode's options, plus freezing.
        options = {**torch._inductor.list_mode_options(mode), "freezing": True}
        # A plain attribute, not a submodule: the compiled module shares ``model``'s parameters and must not
        # appear twice in state_dict().
        self.__dict__["_compiled"] = torch.compile(self._graph(), options=options, dynamic=False)

    def _graph(self) -> Callable[..., torch.Tensor]:
        """What is compiled: the model, on encodings."""
        return self.model

    def _check_inference(self) -> None:
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is for inference only; call .eval() on it")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (B, C, H, W): the compiled graph for ``input_shape`` inputs, the eager model otherwise."""
        self._check_inference()
        if tuple(x.shape[1:]) != self.input_shape:
            return self.model(x)
        with torch.inference_mode():
            logits = [self._compiled(chunk.contiguous(memory_format=torch.channels_last))
                      for chunk in whole_batches(x, self.batch_size)]
        return torch.cat(logits)[: len(x)]


class FusedAblationClassifier(CompiledClassifier):
    """A ``CompiledClassifier`` whose graph takes the image and the keep masks and builds the ablation encoding
    itself (``ablated_logits``, which sampling prefers), so the encoding is fused into the first convolution's
    input instead of written to memory by separate kernels. Masks are padded with False (padding encodes to
    zeros, as ``CompiledClassifier`` pads). ``forward`` on encodings runs the eager model (sampling's
    one-sample probe of the number of classes); it is not compiled, so it costs no second graph.
    """

    def _graph(self) -> Callable[..., torch.Tensor]:
        """What is compiled: encoding + model, (1, C, H, W) image and (B, H, W) masks to logits."""
        model = self.model

        def encode_and_classify(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return model(encode_ablated(image, keep).contiguous(memory_format=torch.channels_last))

        return encode_and_classify

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of encodings ``x`` from the eager model."""
        self._check_inference()
        return self.model(x)

    def ablated_logits(self, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits of the ablations of ``image`` (1, C, H, W) under ``keep`` (B, H, W): the compiled graph, under
        sampling's autocast, for images of the compiled shape; the eager model on the encodings otherwise."""
        self._check_inference()
        if tuple(encoded_shape(tuple(image.shape[1:]))) != self.input_shape or len(image) != 1:
            return self.model(encode_ablated(image, keep).contiguous(memory_format=torch.channels_last))
        logits = []
        with torch.inference_mode(), autocast_for(keep.device):
            for chunk in whole_batches(keep, self.batch_size):
                # With CUDA graphs each replay writes its output into the same buffer: mark the new step and
                # copy the (batch, classes) logits out before the next replay.
                torch.compiler.cudagraph_mark_step_begin()
                logits.append(self._compiled(image, chunk).clone())
        return torch.cat(logits)[: len(keep)]


def _checked_input_shape(model: nn.Module, image_shape: tuple[int, int, int], device_type: str) -> tuple[int, ...]:
    """The encoded input shape for ``image_shape``, after checking it, the model's mode and its device."""
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (channels, height, width), all >= 1, got {tuple(image_shape)}")
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()) before compiling it for inference")
    devices = {t.device.type for t in itertools.chain(model.parameters(), model.buffers())} or {"cpu"}
    if devices != {device_type}:
        raise ValueError(f"compile_for_{device_type} needs a model on {device_type}, its parameters are on "
                         f"{sorted(devices)}")
    return encoded_shape(image_shape)


def _warmed_up(compiled: CompiledClassifier, warm_up: Callable[[], object], calls: int) -> nn.Module:
    """``compiled`` after ``calls`` warm-up calls (which compile it) with ``compile_seconds`` set; the eager model
    with a ``CompileWarning`` where compiling fails."""
    started = time.perf_counter()
    try:
        for _ in range(calls):
            warm_up()
    except Exception as exc:  # noqa: BLE001 - Inductor raises many kinds of error when it cannot build
        warnings.warn(
            f"could not compile the model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "certifying with the eager model instead (same results, slower)",
            CompileWarning,
            stacklevel=3,
        )
        return compiled.model
    compiled.compile_seconds = time.perf_counter() - started
    return compiled


def compile_for_cpu(
    model: nn.Module, image_shape: tuple[int, int, int], batch_size: int = CPU_BATCH_SIZE
) -> nn.Module:
    """``model`` (eval mode, on the CPU) compiled for certifying images of ``image_shape`` (C, H, W), e.g.
    (3, 32, 32) for CIFAR-10: for their ablation encodings, in batches of ``batch_size`` (sampling's CPU default).

    Compiles now (seconds to tens of seconds; Inductor keeps a disk cache, so later processes are faster) and
    returns a ``CompiledClassifier``; ``.compile_seconds`` says how long it took. Where compiling is not possible
    (no C++ compiler, unsupported platform) it warns with ``CompileWarning`` and returns ``model`` unchanged.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    input_shape = _checked_input_shape(model, image_shape, "cpu")
    compiled = CompiledClassifier(model, input_shape, batch_size).eval()
    return _warmed_up(compiled, lambda: compiled(torch.zeros(batch_size, *input_shape)), calls=1)


def compile_for_cuda(
    model: nn.Module, image_shape: tuple[int, int, int], batch_size: int = CUDA_BATCH_SIZE,
    mode: str = "max-autotune",
) -> nn.Module:
    """``model`` (eval mode, on a CUDA device) compiled for sampling ablations of images of ``image_shape``
    (C, H, W) in batches of exactly ``batch_size``: a ``FusedAblationClassifier``, which ``sample_counts`` feeds
    the keep masks it draws on the GPU (from the seeded CUDA generator, as without compilation).

    The choices, from PyTorch's documentation of ``torch.compile`` and CUDA graphs (cudagraph trees):
    - one fixed shape (``dynamic=False``) and every call padded to it: CUDA graphs replay one recorded shape,
      and a new shape would mean a recompilation and a new graph;
    - ``mode`` ``"max-autotune"`` (default) benchmarks Triton and cuDNN kernels for every convolution and
      records CUDA graphs: the fastest at run time, slowest to compile (tens of seconds per batch shape);
      ``"reduce-overhead"`` keeps Inductor's default kernels and records CUDA graphs (compiles faster);
      ``"max-autotune-no-cudagraphs"`` and ``"default"`` are there to compare without CUDA graphs. CUDA graphs
      remove the launch overhead of the ~60-330 kernels of a ResNet forward pass, which matters at small batches;
    - freezing: weights and folded BatchNorm are constants of the graph, so they are static for CUDA graphs and
      are cast to bf16 once instead of on every call (only the masks, a (B, H, W) bool tensor, and the image are
      copied into the graph's static inputs at each replay);
    - bf16 through sampling's autocast (``autocast_for``: fp16 where bf16 is unsupported), the same precision
      as eager sampling on CUDA, so the compiled counts equal eager bf16's up to near-tie labels;
    - the encoding inside the graph and channels_last for the convolutions (Inductor picks the layout of the
      frozen weights to match).
    A graph's output buffer is reused by the next replay; ``ablated_logits`` copies the logits out first.

    Compiles and records the CUDA graph now (three warm-up calls: cudagraph trees warm up, record, then replay)
    and sets ``.compile_seconds``; where compiling fails it warns with ``CompileWarning`` and returns ``model``.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    if mode not in CUDA_MODES:
        raise ValueError(f"mode must be one of {', '.join(CUDA_MODES)}, got {mode!r}")
    input_shape = _checked_input_shape(model, image_shape, "cuda")
    compiled = FusedAblationClassifier(model, input_shape, batch_size, mode).eval()
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    image = torch.zeros(1, *image_shape, device=device)
    keep = torch.zeros(batch_size, *image_shape[1:], dtype=torch.bool, device=device)
    return _warmed_up(compiled, lambda: compiled.ablated_logits(image, keep), calls=3)
