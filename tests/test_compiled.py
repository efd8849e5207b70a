"""certcore.engine.compiled: the compiled classifier gives the eager model's labels, compiles once, and falls back
cleanly."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from certcore.engine import compiled as compiled_module
from certcore.engine.compiled import CompiledClassifier, CompileWarning, compile_for_cpu
from certcore.engine.sampling import num_classes_of, sample_counts
from certcore.models.checkpoints import load_checkpoint
from certcore.models.data import bundled_samples
from certcore.views.default_result import DEFAULT_CHECKPOINT
from tests.tiny_models import PixelKeptClassifier

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The shipped default checkpoint, eager and compiled for CIFAR-10 encodings at batch 100."""
    eager, _ = load_checkpoint(CHECKPOINT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileWarning)  # this machine has a C++ compiler: compiling must work
        fast = compile_for_cpu(eager, (3, 32, 32), batch_size=100)
    assert isinstance(fast, CompiledClassifier) and fast.compile_seconds > 0
    return eager, fast


def test_compiled_checkpoint_gives_the_eager_counts_without_recompiling(resnet) -> None:
    eager, fast = resnet
    image = bundled_samples("cifar10")[3].image
    # n = 437: four full batches, a last batch of 37 and (num_classes not given) a one-sample probe; all of them
    # must reuse the graph compiled for batch 100.
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = sample_counts(fast, image, 50, 437, seed=5)
    want = sample_counts(eager, image, 50, 437, seed=5)
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.counts.sum() == 437 and got.batch_size == 100


def test_padding_and_other_shapes_match_the_eager_logits(resnet) -> None:
    eager, fast = resnet
    x = torch.rand(3, 6, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(fast(x).numpy(), eager(x).numpy(), rtol=1e-4, atol=1e-4)
        assert fast(x).shape == (3, 10)
        odd = torch.rand(2, 6, 16, 16)  # another image size: the eager model answers
        np.testing.assert_array_equal(fast(odd).numpy(), eager(odd).numpy())
    with pytest.raises(ValueError, match="does not fit the model"):
        num_classes_of(fast, torch.rand(4, 32, 32))  # a 4-channel image reads as without compilation
    assert set(fast.state_dict()) == {f"model.{k}" for k in eager.state_dict()}


def test_exact_labels_on_a_tiny_classifier() -> None:
    model = PixelKeptClassifier(row=2, col=3).eval()
    fast = compile_for_cpu(model, (3, 8, 8), batch_size=16)
    image = torch.rand(3, 8, 8)
    got = sample_counts(fast, image, 5, 250, seed=1)
    want = sample_counts(model, image, 5, 250, seed=1)
    np.testing.assert_array_equal(got.counts, want.counts)


def test_refuses_training_mode_and_bad_arguments() -> None:
    model = PixelKeptClassifier(row=0, col=0)
    with pytest.raises(ValueError, match="eval mode"):
        compile_for_cpu(model.train(), (3, 8, 8))
    with pytest.raises(ValueError, match="image_shape"):
        compile_for_cpu(model.eval(), (8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        compile_for_cpu(model.eval(), (3, 8, 8), batch_size=0)
    wrapper = CompiledClassifier(model.eval(), (6, 8, 8), 4)
    with pytest.raises(RuntimeError, match="inference only"):
        wrapper.train()(torch.zeros(1, 6, 8, 8))


def test_falls_back_to_the_eager_model_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("C++ compile error\nno compiler found")

        return fails

    monkeypatch.setattr(compiled_module.torch, "compile", no_compiler)
    model = PixelKeptClassifier(row=0, col=0).eval()
    with pytest.warns(CompileWarning, match="RuntimeError: C\\+\\+ compile error\\); certifying with the eager"):
        assert compile_for_cpu(model, (3, 8, 8)) is model
