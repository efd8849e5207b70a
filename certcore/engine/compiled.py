"""Faster CPU certification: a base classifier compiled by Inductor with frozen weights, at one batch shape.

``torch.compile(model, options={"freezing": True})`` folds BatchNorm into the convolutions and pre-packs the
weights for oneDNN. That is only valid while the weights do not change, which is the case when certifying.
bench/bench_compiled.py measures the gain against eager PyTorch on the sampling path (see bench/RESULTS.md).

A compiled graph is specialised to one input shape. Sampling calls the model with full batches, a shorter last
batch and a one-sample probe (``num_classes_of``), so ``CompiledClassifier`` pads every call to whole batches of
the shape it was compiled for: it compiles once, in ``compile_for_cpu``'s warm-up call, and never again. Inputs
of any other image shape go to the eager model, so errors read exactly as they would without compilation.

Compiled and eager logits can differ in the last bits (another summation order), so a sample whose top two
logits tie to within rounding may get another label. Both are deterministic classifiers and the certificate is
valid for the one that sampled; ``python -m certcore.evaluate --compile`` records which one that was.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

from certcore.engine.ablation import encoded_shape
from certcore.engine.sampling import CPU_BATCH_SIZE
from certcore.math.validation import check_int


class CompileWarning(UserWarning):
    """Compilation was not possible here (e.g. no C++ compiler); the eager model is used instead."""


class CompiledClassifier(nn.Module):
    """``model`` compiled for inference on batches of exactly ``batch_size`` inputs of ``input_shape`` (C, H, W).

    Calls with another number of inputs are padded with zeros to whole batches (the padding's logits are
    dropped); calls with another input shape run the eager ``model``. Inference only: the result is computed
    under ``torch.inference_mode`` and the wrapper refuses to run in training mode.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(input_shape)
        self.batch_size = batch_size
        self.compile_seconds = 0.0
        # A plain attribute, not a submodule: the compiled module shares ``model``'s parameters and must not
        # appear twice in state_dict().
        self.__dict__["_compiled"] = torch.compile(model, options={"freezing": True}, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (B, C, H, W): the compiled graph for ``input_shape`` inputs, the eager model otherwise."""
        if self.training:
            raise RuntimeError("CompiledClassifier is for inference only; call .eval() on it")
        if tuple(x.shape[1:]) != self.input_shape:
            return self.model(x)
        count = len(x)
        pad = -count % self.batch_size
        if pad:
            x = torch.cat((x, x.new_zeros((pad, *self.input_shape))))
        with torch.inference_mode():
            logits = [
                self._compiled(chunk.contiguous(memory_format=torch.channels_last))
                for chunk in x.split(self.batch_size)
            ]
        return torch.cat(logits)[:count]


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
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (channels, height, width), all >= 1, got {tuple(image_shape)}")
    input_shape = encoded_shape(image_shape)
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()) before compiling it for inference")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"compile_for_cpu needs a model on the CPU, its parameters are on {sorted(devices)}")
    compiled = CompiledClassifier(model, input_shape, batch_size).eval()
    started = time.perf_counter()
    try:
        compiled(torch.zeros(batch_size, *input_shape))
    except Exception as exc:  # noqa: BLE001 - Inductor raises many kinds of error when it cannot build
        warnings.warn(
            f"could not compile the model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "certifying with the eager model instead (same results, slower)",
            CompileWarning,
            stacklevel=2,
        )
        return model
    compiled.compile_seconds = time.perf_counter() - started
    return compiled
