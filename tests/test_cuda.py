"""The CUDA path of sampling, certification and evaluation, on a real GPU with the shipped default checkpoint.

Skipped without CUDA (CI has no GPU); bench/gpu_run.sh runs them on the lent GPU machine. On CUDA the model runs
under bf16 autocast and masks come from a CUDA generator, so counts differ from the CPU's: these tests check that
they are still right (mask distribution, determinism, agreement with fp32 on the CPU, out-of-memory fallback,
concurrent sessions, the evaluation CLI) and that the compiled CUDA path (``compile_for_cuda``: encoding fused, CUDA
graphs at one batch shape) gives eager bf16's labels on the same masks, pads short batches and compiles once.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from scipy.stats import binomtest

from certcore.engine.ablation import draw_keep_masks, encode_ablated
from certcore.engine.certificate import certify
from certcore.engine.compiled import FusedAblationClassifier, compile_for_cuda
from certcore.engine.sampling import _logits, ablated_logits, sample_counts
from certcore.evaluation import evaluate
from certcore.models.checkpoints import load_checkpoint
from certcore.models.data import bundled_samples
from certcore.views.default_result import DEFAULT_CHECKPOINT, checkpoint_dir
from tests.tiny_models import PixelKeptClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CHECKPOINT = checkpoint_dir() / DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def cuda_model() -> tuple[torch.nn.Module, int]:
    model, meta = load_checkpoint(CHECKPOINT, device="cuda")
    return model.to(memory_format=torch.channels_last), meta["e"]


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return bundled_samples("cifar10")[0].image


def test_cuda_masks_keep_each_pixel_with_probability_e_over_d() -> None:
    """Each mask keeps exactly e pixels, and one pixel is kept in ~ Binomial(n, e/d) of them (CUDA generator)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    keep = draw_keep_masks(20_000, 32, 32, 50, gen, torch.device("cuda"))
    assert keep.is_cuda and bool((keep.flatten(1).sum(dim=1) == 50).all())
    model = PixelKeptClassifier(5, 17).cuda().eval()
    counts = sample_counts(model, torch.rand(3, 32, 32), 50, 20_000, seed=3, device="cuda").counts
    assert counts.sum() == 20_000 and binomtest(int(counts[1]), 20_000, 50 / 1024).pvalue > 0.001


def test_same_seed_gives_the_same_counts_on_cuda(cuda_model: tuple, image: torch.Tensor) -> None:
    model, e = cuda_model
    a = sample_counts(model, image, e, 20_000, seed=5, device="cuda")
    b = sample_counts(model, image, e, 20_000, seed=5, device="cuda")
    c = sample_counts(model, image, e, 20_000, seed=6, device="cuda")
    assert a.device.startswith("cuda") and a.counts.sum() == 20_000
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)


def test_bf16_autocast_labels_agree_with_fp32_on_the_cpu(cuda_model: tuple, image: torch.Tensor) -> None:
    """The same 4,000 ablated encodings: CUDA under bf16 autocast against the CPU in fp32."""
    model, e = cuda_model
    cpu_model, _ = load_checkpoint(CHECKPOINT)
    keep = draw_keep_masks(4000, 32, 32, e, torch.Generator().manual_seed(1), torch.device("cpu"))
    encoded = encode_ablated(image.unsqueeze(0), keep)
    with torch.inference_mode():
        cpu_labels = cpu_model(encoded).argmax(1)
        cuda_labels = _logits(model, encoded.cuda(), 10).argmax(1).cpu()
    agreement = (cpu_labels == cuda_labels).float().mean().item()
    print(f"bf16 CUDA vs fp32 CPU label agreement: {agreement:.4f}")
    assert agreement >= 0.98


def test_cuda_counts_follow_the_cpu_distribution(cuda_model: tuple, image: torch.Tensor) -> None:
    """Different generators, same distribution: the top label's frequency agrees within 5 standard errors."""
    model, e = cuda_model
    cpu_model, _ = load_checkpoint(CHECKPOINT)
    n = 20_000
    on_cpu = sample_counts(cpu_model, image, e, n, seed=2, workers=1).counts
    on_cuda = sample_counts(model, image, e, n, seed=2, device="cuda").counts
    top = int(on_cpu.argmax())
    p1, p2 = on_cpu[top] / n, on_cuda[top] / n
    pooled = (p1 + p2) / 2
    assert abs(p1 - p2) <= 5 * np.sqrt(2 * pooled * (1 - pooled) / n), (on_cpu, on_cuda)


def test_a_real_out_of_memory_error_halves_the_batch(cuda_model: tuple, image: torch.Tensor) -> None:
    """With the allocator capped at ~2 GiB, a 262,144-sample batch (6.4 GB of encodings) cannot fit."""
    model, e = cuda_model
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(2 * 2**30 / total)
    try:
        result = sample_counts(model, image, e, 2**18, seed=4, batch_size=2**18, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert result.counts.sum() == 2**18 and result.batch_size < 2**18
    normal = sample_counts(model, image, e, 20_000, seed=4, device="cuda")
    assert result.counts.argmax() == normal.counts.argmax()


def test_concurrent_sessions_on_one_gpu_get_their_own_counts(cuda_model: tuple, image: torch.Tensor) -> None:
    """Four threads certify at once (batches interleave under the device lock): each equals its run alone."""
    model, e = cuda_model

    def run(seed: int) -> list[int]:
        return list(certify(model, image, e=e, k=3, n=8000, alpha=0.001, seed=seed, device="cuda").counts)

    alone = {seed: run(seed) for seed in range(4)}
    together: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda s=s: together.__setitem__(s, run(s))) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_evaluate_cli_on_cuda_and_recertify_from_counts(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cuda.jsonl"
    common = ["--checkpoint", str(CHECKPOINT), "--indices", "0", "2", "--k", "1", "3"]
    evaluate.main([*common, "--n", "4000", "--device", "cuda", "--shared-data", str(shared_data), "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 2]
    assert all(r["device"].startswith("cuda") and sum(r["counts"]) == 4000 for r in lines)
    again = tmp_path / "again.jsonl"
    evaluate.main(["--from-counts", str(out), "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()


COMPILED_BATCH = 4096


@pytest.fixture(scope="module")
def compiled_cuda(cuda_model: tuple) -> torch.nn.Module:
    """The default checkpoint through compile_for_cuda at batch 4096, with CUDA graphs (reduce-overhead: the
    quicker compile; max-autotune differs only in the kernels it picks)."""
    model, _ = cuda_model
    fast = compile_for_cuda(model, (3, 32, 32), batch_size=COMPILED_BATCH, mode="reduce-overhead")
    assert isinstance(fast, FusedAblationClassifier) and fast.compile_seconds > 0
    return fast


def test_compiled_cuda_labels_agree_with_eager_bf16_on_the_same_masks(cuda_model: tuple, compiled_cuda,
                                                                      image: torch.Tensor) -> None:
    """Both classifiers run in bf16; the compiled one with BatchNorm folded into bf16 weights and other kernels,
    so only samples whose top two logits nearly tie may change label (the bound of the bf16-vs-fp32 test)."""
    model, e = cuda_model
    keep = draw_keep_masks(COMPILED_BATCH, 32, 32, e, torch.Generator(device="cuda").manual_seed(8), "cuda")
    x = image.cuda().unsqueeze(0)
    with torch.inference_mode():
        eager_labels = ablated_logits(model, x, keep, 10).argmax(1)
        compiled_labels = ablated_logits(compiled_cuda, x, keep, 10).argmax(1)
    agreement = (eager_labels == compiled_labels).float().mean().item()
    print(f"compiled vs eager bf16 label agreement: {agreement:.4f}")
    assert agreement >= 0.98


def test_compiled_cuda_pads_short_batches_and_keeps_each_output(cuda_model: tuple, compiled_cuda,
                                                                image: torch.Tensor) -> None:
    """A short batch is padded to the graph's shape: its rows equal those of the full batch bit for bit; a
    result stays intact after the next replay (the CUDA graph's output buffer is copied out)."""
    _, e = cuda_model
    keep = draw_keep_masks(COMPILED_BATCH, 32, 32, e, torch.Generator(device="cuda").manual_seed(9), "cuda")
    x = image.cuda().unsqueeze(0)
    with torch.inference_mode(), torch._dynamo.config.patch(error_on_recompile=True):
        full = ablated_logits(compiled_cuda, x, keep, 10)
        kept = full.clone()
        short = ablated_logits(compiled_cuda, x, keep[:100], 10)
        longer = ablated_logits(compiled_cuda, x, torch.cat((keep, keep[:5])), 10)  # two chunks, one padded
    assert short.shape == (100, 10) and torch.equal(short, full[:100])
    assert torch.equal(full, kept) and torch.equal(longer[COMPILED_BATCH:], full[:5])


def test_compiled_cuda_sampling_compiles_once_and_follows_eager_counts(cuda_model: tuple, compiled_cuda,
                                                                      image: torch.Tensor) -> None:
    """n = 10,000 at batch 4096 (a last batch of 1,808, padded) without recompiling; the same masks as eager
    bf16 (same seed and batch size), so the counts differ by at most the near-tie labels (2% above)."""
    model, e = cuda_model
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = sample_counts(compiled_cuda, image, e, 10_000, seed=7, batch_size=COMPILED_BATCH, device="cuda")
    want = sample_counts(model, image, e, 10_000, seed=7, batch_size=COMPILED_BATCH, device="cuda")
    assert got.counts.sum() == 10_000 and got.batch_size == COMPILED_BATCH
    assert np.abs(got.counts - want.counts).sum() // 2 <= 200, (got.counts, want.counts)
