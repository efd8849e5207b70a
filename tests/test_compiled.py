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
from certcore.engine.ablation import encode_ablated
from certcore.engine.compiled import (
    CompiledClassifier,
    CompileWarning,
    FusedAblationClassifier,
    compile_for_cpu,
    compile_for_cuda,
    whole_batches,
)
from certcore.engine.sampling import num_classes_of, sample_counts
from certcore.models.checkpoints import load_checkpoint
from certcore.models.data import bundled_samples
from certcore.views.default_result import DEFAULT_CHECKPOINT
from tests.tiny_models import KeptInFirstRowClassifier, PixelKeptClassifier

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


def test_whole_batches_pads_the_last_chunk_with_zeros_or_false() -> None:
    keep = torch.ones(7, 2, 3, dtype=torch.bool)
    chunks = whole_batches(keep, 3)
    assert [tuple(c.shape) for c in chunks] == [(3, 2, 3)] * 3
    assert bool(torch.cat(chunks)[:7].all()) and not bool(chunks[-1][1:].any())
    assert [len(c) for c in whole_batches(torch.rand(6, 4), 3)] == [3, 3]  # nothing padded when it divides


def test_fused_classifier_counts_equal_eager_with_one_graph_for_every_batch() -> None:
    """The encoding fused into the compiled graph (the CUDA path's classifier, compiled here for the CPU):
    exact labels of a many-label classifier, n = 250 at batch 64 (a short last batch of 58) and a sampling
    batch size larger than the compiled one, all from the one graph."""
    model = KeptInFirstRowClassifier().eval()
    fused = FusedAblationClassifier(model, (6, 8, 8), 64).eval()
    image = torch.rand(3, 8, 8)
    want = sample_counts(model, image, 12, 250, seed=3, num_classes=10, workers=1).counts
    assert np.count_nonzero(want) >= 3  # several labels, so a wrong mask or padding row would show
    graph, calls = fused._compiled, []
    fused.__dict__["_compiled"] = lambda *args: calls.append(len(args[1])) or graph(*args)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch_size in (64, 100):
            got = sample_counts(fused, image, 12, 250, seed=3, batch_size=batch_size, num_classes=10, workers=1)
            np.testing.assert_array_equal(got.counts, want)
    assert calls == [64] * 4 + [64] * 5  # 250 = 3 x 64 + 58 padded; batches 100, 100, 50 -> 2 + 2 + 1 chunks
    assert num_classes_of(fused, image) == 10  # the probe on encodings: the eager model
    with torch.inference_mode():  # another image size: eager, same logits as on its encoding
        small, keep = torch.rand(1, 3, 4, 4), torch.rand(5, 4, 4) > 0.5
        np.testing.assert_array_equal(fused.ablated_logits(small, keep).numpy(),
                                      model(encode_ablated(small, keep)).numpy())


def test_compile_for_cuda_checks_its_arguments() -> None:
    model = PixelKeptClassifier(row=0, col=0).eval()
    with pytest.raises(ValueError, match="needs a model on cuda"):
        compile_for_cuda(model, (3, 8, 8))
    with pytest.raises(ValueError, match="mode must be one of"):
        compile_for_cuda(model, (3, 8, 8), mode="fast")
    with pytest.raises(ValueError, match="batch_size"):
        compile_for_cuda(model, (3, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="eval mode"):
        compile_for_cuda(model.train(), (3, 8, 8))
