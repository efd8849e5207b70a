"""``python -m certcore.evaluate`` on a tiny model: records, resume after a crash, torchrun sharding, --from-counts,
and clear errors. Kept light: a ResNet-20 with n = 100 samples on 4 images, one subprocess (the torchrun test)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from certcore.engine.ablation import ablate
from certcore.evaluation import evaluate
from certcore.evaluation.evaluate import image_seed, main
from certcore.evaluation.results import (
    RECORD_KEYS,
    VOLATILE_KEYS,
    IncompleteLineWarning,
    certified_accuracy,
    read_results,
    record_line,
)
from certcore.math.radius import certify_counts
from certcore.models.architectures import build_model
from certcore.models.checkpoints import save_checkpoint
from certcore.models.data import bundled_samples, class_names
from certcore.views.default_result import STORED, evaluate_command
from tests.data_helpers import bundled_cifar10_arrays, write_torchvision_cifar_root

REPO = Path(__file__).resolve().parents[1]
INDICES = ["0", "1", "2", "7"]  # images 0 and 7 (label 8) are certified by the tiny model, 1 and 2 are not


def tiny_model() -> torch.nn.Module:
    """An untrained ResNet-20 whose prediction varies with the ablation and leans to class 8: its linear layer
    is re-centred on the features of ablated inputs, so the counts are spread out but not uniform."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    images = torch.stack([s.image for s in bundled_samples("cifar10")[:8]]).repeat(20, 1, 1, 1)
    features: list[torch.Tensor] = []
    hook = model.net.linear.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))
    with torch.no_grad():
        model(ablate(images, 50, torch.Generator().manual_seed(0)))
        hook.remove()
        mean, std = features[0].mean(0), features[0].std(0) + 1e-6
        weight = 0.15 * torch.randn(10, 64) / std
        bias = -(weight @ mean)
        bias[8] += 2.0
        model.net.linear.weight.copy_(weight)
        model.net.linear.bias.copy_(bias)
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint and an offline data folder holding 8 exact bundled CIFAR-10 images as 'test 0..7'."""
    root = tmp_path_factory.mktemp("evaluate")
    samples = bundled_samples("cifar10")[:8]
    folder = root / "data" / "cifar10"
    folder.mkdir(parents=True)
    np.savez(folder / "cifar10_test_first1000_lossless.npz",
             x=np.stack([(s.image.permute(1, 2, 0) * 255).round().byte().numpy() for s in samples]),
             y=np.array([s.label for s in samples], dtype=np.uint8), orig_index=np.arange(8, dtype=np.int16),
             class_names=np.array(class_names("cifar10")))
    save_checkpoint(root / "tiny.pt", tiny_model(), {"dataset": "cifar10", "arch": "resnet20", "e": 50,
                                                     "num_classes": 10, "class_names": class_names("cifar10"),
                                                     "encoding": "levine-feizi-2c"})
    return {"root": root, "checkpoint": root / "tiny.pt", "data": root / "data"}


def cli_args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """The command line of the tests' runs (--num-samples and --keep: the spellings torchrun lets through)."""
    return ["--checkpoint", str(world["checkpoint"]), "--shared-data", str(world["data"]), "--indices", *INDICES,
            "--num-samples", "100", "--k", "1", "2", "3", "--alpha", "0.001", "--keep", "50", "--seed", "0",
            "--batch-size", "64", "--threads", "1", "--out", str(out), *extra]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(world: dict[str, Path]) -> Path:
    """An uninterrupted single-process run."""
    out = world["root"] / "reference.jsonl"
    threads = torch.get_num_threads()
    main(cli_args(world, out))
    torch.set_num_threads(threads)
    return out


def stable(path: Path) -> list[dict]:
    """The records of a file without the keys that legitimately differ between runs (timings)."""
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in read_results(path)]


def test_records(reference: Path) -> None:
    records = read_results(reference)
    assert [r["index"] for r in records] == [0, 1, 2, 7]
    for r in records:
        assert set(RECORD_KEYS) <= set(r) and sum(r["counts"]) == r["n"] == 100 and r["d"] == 1024
        assert r["image_seed"] == image_seed(0, r["index"]) and r["checkpoint"] == "tiny"
        assert r["top_k"] == sorted(range(10), key=lambda j: (-r["counts"][j], j))[:3]
        assert r["radii"] == {str(k): certify_counts(r["counts"], r["label"], 1024, 50, k, 0.001) for k in (1, 2, 3)}
    assert [r["radii"]["1"] >= 0 for r in records] == [True, False, False, True]
    assert len({tuple(r["counts"]) for r in records}) == 4


def test_resume_after_crash_mid_write(world: dict[str, Path], reference: Path, monkeypatch) -> None:
    out = world["root"] / "crashed.jsonl"
    append = evaluate.append_record

    def crash_on_third(path: Path, record: dict) -> None:
        if path.exists() and path.read_bytes().count(b"\n") == 2:  # half of line 3 is written, then the crash
            with open(path, "ab") as f:
                f.write(record_line(record)[:50])
            raise KeyboardInterrupt
        append(path, record)

    monkeypatch.setattr(evaluate, "append_record", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        main(cli_args(world, out))
    monkeypatch.setattr(evaluate, "append_record", append)
    with pytest.warns(IncompleteLineWarning, match=r"crashed.jsonl:3: incomplete last line"):
        main(cli_args(world, out))
    assert stable(out) == stable(reference)
    assert out.read_bytes().count(b"\n") == 4


def test_compiled_run_gives_the_same_counts(world: dict[str, Path], reference: Path) -> None:
    out = world["root"] / "compiled.jsonl"
    main(cli_args(world, out, "--compile"))
    records = read_results(out)
    assert {r["inference"] for r in records} == {"compiled"} and {r["inference"] for r in read_results(reference)} == {
        "eager"}
    strip = ("inference", *VOLATILE_KEYS)
    assert [{k: v for k, v in r.items() if k not in strip} for r in records] == [
        {k: v for k, v in r.items() if k not in strip} for r in read_results(reference)]


def test_rerun_skips_done_images(world: dict[str, Path], reference: Path, monkeypatch) -> None:
    out = world["root"] / "again.jsonl"
    out.write_bytes(reference.read_bytes())

    def no_sampling(*args, **kwargs):
        raise AssertionError("an image already in the file was sampled again")

    monkeypatch.setattr(evaluate, "sample_counts", no_sampling)
    main(cli_args(world, out))
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(world: dict[str, Path], reference: Path) -> None:
    out = world["root"] / "torchrun.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "certcore.evaluate", *cli_args(world, out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rank 1/2]" in done.stderr
    assert stable(out) == stable(reference)
    assert not list(out.parent.glob("torchrun.rank*.jsonl"))  # shards merged and removed


def test_interrupted_shards_are_resumed_and_merged(world: dict[str, Path], reference: Path) -> None:
    """Shard files left by an interrupted torchrun job (one with a torn last line) are picked up by a re-run."""
    out = world["root"] / "sharded.jsonl"
    lines = reference.read_bytes().splitlines(keepends=True)
    out.with_name("sharded.rank0.jsonl").write_bytes(lines[0] + lines[2][:30])
    out.with_name("sharded.rank1.jsonl").write_bytes(lines[3])
    with pytest.warns(IncompleteLineWarning, match="sharded.rank0.jsonl:2"):
        main(cli_args(world, out))
    assert stable(out) == stable(reference)
    assert not list(out.parent.glob("sharded.rank*.jsonl"))


def test_from_counts_reproduces_stored_radii(world: dict[str, Path], reference: Path) -> None:
    same = world["root"] / "same.jsonl"
    main(["--from-counts", str(reference), "--out", str(same)])
    assert same.read_bytes() == reference.read_bytes()

    other = world["root"] / "other.jsonl"
    main(["--from-counts", str(reference), "--k", "1", "5", "--alpha", "0.05", "--out", str(other)])
    old, new = read_results(reference), read_results(other)
    assert [r["counts"] for r in new] == [r["counts"] for r in old]
    for r in new:
        assert r["k"] == [1, 5] and r["alpha"] == 0.05
        assert r["radii"] == {str(k): certify_counts(r["counts"], r["label"], 1024, 50, k, 0.05) for k in (1, 5)}
    for k in (1, 5):  # the app's path (certified_accuracy re-certifying) agrees with the stored file
        assert certified_accuracy(old, k, alpha=0.05).tolist() == certified_accuracy(new, k).tolist()
    with pytest.raises(SystemExit, match=r"k must be below the number of classes \(10\)"):
        main(["--from-counts", str(reference), "--k", "10", "--out", str(other)])
    with pytest.raises(SystemExit, match="is the --from-counts file itself"):
        main(["--from-counts", str(reference), "--out", str(reference)])


def test_torchvision_data_root(world: dict[str, Path], tmp_path: Path) -> None:
    x, y = bundled_cifar10_arrays()
    write_torchvision_cifar_root(tmp_path / "cifar", x, y)
    out = tmp_path / "tv.jsonl"
    args = cli_args(world, out)
    args[args.index("--indices") + 1 : args.index("--num-samples")] = ["3", "5"]
    main([*args, "--data-root", str(tmp_path / "cifar"), "--n", "20"])
    records = read_results(out)
    assert [r["label"] for r in records] == [int(y[5 * 16 + 3]), int(y[5 * 16 + 5])]  # test_batch = last sixth
    assert records[0]["data_source"] == "cifar10-test" and records[0]["data_file"].startswith("torchvision:")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--dataset", "imagenet"], "trained for dataset 'cifar10', requested dataset 'imagenet'"),
        (["--e", "40"], "trained with e=50, requested e=40"),
        (["--k", "10"], r"--k must be below the number of classes \(10\)"),
        (["--indices", "8"], r"--indices \[8\] out of range"),
    ],
)
def test_bad_inputs(world: dict[str, Path], tmp_path: Path, change: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        main([*cli_args(world, tmp_path / "x.jsonl"), *change])


def test_mismatching_parameters_are_refused(world: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "mixed.jsonl"
    out.write_bytes(reference.read_bytes())
    with pytest.raises(SystemExit, match=r"mixed.jsonl:1: written with other parameters: n=100 where this run has 120"):
        main([*cli_args(world, out), "--n", "120"])
    assert out.read_bytes() == reference.read_bytes()


def test_corrupt_middle_line_is_refused(world: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "corrupt.jsonl"
    lines = reference.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1][:40] + b"\n" + b"".join(lines[2:]))
    with pytest.raises(SystemExit, match=r"corrupt.jsonl:2: corrupt line"):
        main(cli_args(world, out))


@pytest.mark.parametrize(("dataset", "n"), [("cifar10", 100_000), ("imagenet", 1000)])
def test_the_accuracy_pages_commands_are_evaluate_runs_of_the_default_checkpoints(dataset: str, n: int) -> None:
    """What the Certified accuracy page shows without results: a valid command line for each dataset."""
    argv = shlex.split(evaluate_command(dataset, n).replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "certcore.evaluate"]
    args = evaluate.parse_args(argv[3:])
    stem = Path(STORED[dataset].checkpoint).stem
    assert (args.dataset, args.checkpoint, args.n, args.k, args.alpha, args.out) == (
        dataset, f"checkpoints/{stem}.pt", n, [1, 2, 3], 0.001, f"results/{stem}_n{n}.jsonl")
    with pytest.raises(ValueError, match="dataset must be one of cifar10, imagenet; got 'mnist'"):
        evaluate_command("mnist", n)
