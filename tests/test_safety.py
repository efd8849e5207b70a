"""Safety beyond tests/test_checkpoints.py: no pickle runs anywhere, files are written atomically, results record
their provenance, and the empirical attack harness (bench/attack_check.py) does what it claims.

* A malicious pickle in a checkpoint folder never runs: not through the app, the evaluate command line, the
  trainer resuming from it as a training state or the attack check (``load_checkpoint``/``list_checkpoints``
  themselves are covered in tests/test_checkpoints.py).
* The code base has no unsafe deserialiser: every ``torch.load`` passes ``weights_only=True``, no ``pickle.load``,
  ``np.load(allow_pickle=True)``, joblib/dill/marshal/shelve; a ``pickle.Unpickler`` subclass must restrict
  ``find_class``. Checked on the syntax tree of every Python file of the repository.
* Every file certcore writes goes through a temp file + ``os.replace`` helper (checked on the syntax tree), and a
  crash in the middle of each helper's write leaves the old file intact and no temp file behind.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

import certcore
import certcore.views.default_result
from certcore.engine.certificate import certificate_from_counts
from certcore.evaluation import evaluate
from certcore.evaluation.results import RECORD_KEYS, atomic_write
from certcore.models import training as train
from certcore.models.architectures import build_model
from certcore.models.checkpoints import save_checkpoint
from certcore.models.data import bundled_samples, class_names
from certcore.views.default_result import DEFAULT_CHECKPOINT
from certcore.views.explain import certificate_json
from certcore.views.interactive import sample_image

REPO = Path(__file__).resolve().parents[1]
META = {"dataset": "cifar10", "arch": "resnet20", "e": 50, "num_classes": 10, "class_names": class_names("cifar10"),
        "encoding": "levine-feizi-2c"}
SKIP_DIRS = {".git", "runs", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def python_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*.py"):
        if not SKIP_DIRS.intersection(path.relative_to(REPO).parts):
            files.append(path)
    return sorted(files)


def load_attack_check():
    """bench/attack_check.py as a module (bench/ is not a package)."""
    if "attack_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("attack_check", REPO / "bench" / "attack_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["attack_check"] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["attack_check"]


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def evil_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A ``checkpoints/`` folder holding one malicious checkpoint (a torch zip file whose pickle runs a command)
    and the marker file its payload would create."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    marker = tmp_path / "payload-ran"
    torch.save({"metadata": json.dumps({**META, "format": "certcore-checkpoint-v1"}), "state_dict": {},
                "extra": _Exploit(marker)}, folder / DEFAULT_CHECKPOINT)
    return folder, marker


def test_malicious_checkpoint_is_refused_everywhere(evil_folder: tuple[Path, Path], monkeypatch, capsys) -> None:
    folder, marker = evil_folder
    evil = folder / DEFAULT_CHECKPOINT
    # the evaluate command line
    with pytest.raises(SystemExit, match=r"unsafe pickle"):
        evaluate.main(["--checkpoint", str(evil), "--out", str(folder.parent / "x.jsonl"), "--n", "10"])
    # the attack check, with the file as a checkpoint and as a training state
    attack = load_attack_check()
    for option in ("--checkpoint", "--state"):
        with pytest.raises(Exception, match=r"unsafe pickle|Weights only load failed"):
            attack.load_model(attack.parse_args([option, str(evil)]))
    # the trainer, with the file as the training state to resume
    with pytest.raises(SystemExit, match=r"--resume: .* is not a readable training state .*unsafe pickle"):
        train.main(["--resume", "--state", str(evil), "--e", "50", "--out", str(folder.parent / "ck.pt"),
                    "--threads", "1"])
    # the app: the file is skipped, the page explains there is no checkpoint, nothing crashes
    monkeypatch.setenv("CERTCORE_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert any("No CIFAR10 checkpoint" in w.value for w in at.warning)
    st.cache_data.clear()
    assert not marker.exists(), "the pickle payload ran"


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def unsafe_deserialisation(source: str) -> list[str]:
    """Every place in ``source`` that could run code hidden in a file it reads."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads"):
                found.append(f"line {node.lineno}: {name}")
            if name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                found.append(f"line {node.lineno}: {name}(allow_pickle=True)")
            if name in ("yaml.load", "yaml.unsafe_load", "marshal.load", "marshal.loads", "torch.jit.load"):
                found.append(f"line {node.lineno}: {name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {m}" for m in modules
                      if m.split(".")[0] in ("joblib", "dill", "cloudpickle", "shelve", "marshal")]
        elif isinstance(node, ast.ClassDef) and any(_dotted(b) == "pickle.Unpickler" for b in node.bases):
            methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            if "find_class" not in methods:
                found.append(f"line {node.lineno}: Unpickler subclass {node.name} does not restrict find_class")
    return found


def test_no_unsafe_deserialisation_anywhere_in_the_code() -> None:
    problems = {str(p.relative_to(REPO)): unsafe_deserialisation(p.read_text()) for p in python_files()}
    problems = {path: found for path, found in problems.items() if found}
    assert not problems, problems
    assert len(python_files()) > 20  # the scan did see the code base


def test_the_scan_finds_each_unsafe_pattern() -> None:
    bad = """
import joblib
import pickle, numpy as np, torch
torch.load(p)
torch.load(p, weights_only=False)
torch.load(p, map_location="cpu",
           weights_only=False)
pickle.loads(b)
np.load(p, allow_pickle=True)
class U(pickle.Unpickler):
    pass
"""
    assert len(unsafe_deserialisation(bad)) == 7
    assert unsafe_deserialisation("torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\n") == []


# ------------------------------------------------------------------------------------------------ atomic writes

ATOMIC_WRITERS = {"atomic_torch_save", "atomic_write", "write_json_atomic"}


def direct_writes(source: str) -> list[str]:
    """Functions that open a file for writing (or write_text / write_bytes / np.save / torch.save to a path)
    outside the atomic helpers. Appending (mode 'a') is allowed: results lines are appended and repaired."""
    found = []
    tree = ast.parse(source)
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or func.name in ATOMIC_WRITERS:
            continue
        for node in ast.walk(func):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name.endswith((".write_text", ".write_bytes")) or name in ("np.save", "np.savez", "torch.save"):
                found.append(f"{func.name} line {node.lineno}: {name}")
            if name in ("open", "os.fdopen") or name.endswith(".open"):
                mode = node.args[1] if len(node.args) > 1 else _keyword(node, "mode")
                if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wx+"):
                    found.append(f"{func.name} line {node.lineno}: {name}(mode={mode.value!r})")
    return found


def test_certcore_writes_files_only_through_the_atomic_helpers() -> None:
    package = sorted((REPO / "certcore").glob("*.py"))
    problems = {p.name: found for p in package if (found := direct_writes(p.read_text()))}
    assert not problems, problems
    assert direct_writes("def f(p):\n    p.write_text('x')\n    open(p, 'wb')\n    open(p, 'ab')\n") == [
        "f line 2: p.write_text", "f line 3: open(mode='wb')"]


@pytest.mark.parametrize("writer", ["checkpoint", "results", "default_result"])
def test_a_crash_mid_write_keeps_the_old_file(writer: str, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / {"checkpoint": "m.pt", "results": "r.jsonl", "default_result": "d.json"}[writer]
    target.write_bytes(b"the old, complete file\n")

    def crash_after_half(obj, f, *args, **kwargs) -> None:
        f.write(b"half a fi" if "b" in getattr(f, "mode", "b") else "half a fi")
        f.flush()
        raise OSError("simulated crash: disk full")

    if writer == "checkpoint":
        monkeypatch.setattr(torch, "save", crash_after_half)
        call = lambda: save_checkpoint(target, build_model("resnet20", 10), META)  # noqa: E731
    elif writer == "results":
        def fsync_fails(_fd: int) -> None:
            raise OSError("simulated crash before the data reached the disk")
        monkeypatch.setattr(os, "fsync", fsync_fails)
        call = lambda: atomic_write(target, b'{"new": "data"}\n' * 100)  # noqa: E731
    else:
        monkeypatch.setattr(certcore.views.default_result.json, "dump", crash_after_half)
        call = lambda: certcore.views.default_result.write_json_atomic({"new": "data"}, target)  # noqa: E731
    with pytest.raises(OSError, match="simulated crash"):
        call()
    assert target.read_bytes() == b"the old, complete file\n"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left behind


# ------------------------------------------------------------------------------------------------ provenance


def test_every_certificate_records_seed_versions_device_and_checkpoint(tmp_path: Path) -> None:
    """The app's path (sample_image -> certificate -> certificate_json) and the evaluate records carry what is
    needed to reproduce a result, and re-sampling with the recorded seed reproduces the counts (CPU)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    meta = save_checkpoint(tmp_path / "m.pt", model, META)
    image = bundled_samples("cifar10")[0].image
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sampled = sample_image(model, image, e=50, n=30, seed=123, label=3, batch_size=16, device="cpu",
                               checkpoint=meta["weights_sha256"])
        again = sample_image(model, image, e=50, n=30, seed=sampled.run.seed, label=3, batch_size=7, device="cpu",
                             checkpoint=meta["weights_sha256"])
    finally:
        torch.set_num_threads(threads)
    assert again.counts == sampled.counts
    doc = json.loads(certificate_json(sampled.certificate(3, 0.001), {"weights_sha256": meta["weights_sha256"]}))
    cert, run = doc["certificate"], doc["certificate"]["run"]
    assert run["seed"] == 123 and run["checkpoint"] == meta["weights_sha256"]
    assert run["torch_version"] == torch.__version__ and run["device"].startswith("cpu (")
    assert cert["certcore_version"] == certcore.__version__
    evaluate_keys = {"seed", "image_seed", "device", "torch_version", "certcore_version", "checkpoint_sha256"}
    assert evaluate_keys <= set(RECORD_KEYS)  # tests/test_evaluate.py::test_records checks each record has them
    stored = json.loads(certcore.views.default_result.DEFAULT_PATH.read_text())  # the shipped default certificate
    assert {"seed", "device", "torch_version", "checkpoint"} <= set(stored["sampled"]["run"])
    assert stored["certificate"]["certcore_version"] and stored["weights_sha256"]


# ------------------------------------------------------------------------------------------------ attack harness


class WhitePixelDetector(nn.Module):
    """Label 1 as soon as one kept pixel is white, else 0: the smoothed classifier's label-1 probability under
    m white pixels is exactly D(m) = 1 - C(d - m, e) / C(d, e), the most any m-pixel attack can reach."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept_mean = x[:, : x.shape[1] // 2].mean(1).sum((1, 2))  # ablated pixels contribute 0
        return torch.stack((torch.zeros_like(kept_mean), 20.0 * kept_mean - 10.0), 1)


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on this shared 2-core machine make tiny forward passes far slower
    yield
    torch.set_num_threads(threads)


def test_attack_check_breaks_only_beyond_the_certified_radius(one_thread) -> None:
    attack = load_attack_check()
    from certcore.engine.ablation import draw_keep_masks

    model, image, label, e, n = WhitePixelDetector().eval(), torch.zeros(3, 8, 8), 0, 10, 300
    masks = draw_keep_masks(n, 8, 8, e, torch.Generator().manual_seed(1))
    clean, _ = attack.labels_and_probs(model, image, masks, label)
    counts = torch.bincount(clean, minlength=2).tolist()
    radius = certificate_from_counts(counts, d=64, e=e, k=1, alpha=0.01, label=label).radius_of(label)
    assert counts == [n, 0] and radius >= 1
    budgets = [radius, 2 * radius, 5 * radius]
    changes = attack.greedy_attack(model, image, label, e, budgets, n_attack=64, candidates=4, exact_pixels=3,
                                   chunks=2, seed=0)
    outcome = {m: attack.evaluate_attack(model, image, label, masks, clean, changes[m], k=1) for m in budgets}
    assert [len(changes[m]) for m in budgets] == budgets
    assert all(colour == (1.0, 1.0, 1.0) for _, colour in changes[5 * radius])  # it found the white pixels
    assert not outcome[radius]["success"]  # within the radius: impossible
    assert outcome[5 * radius]["success"]  # far beyond it: this weak model falls
    shares = [outcome[m]["affected"] for m in budgets]
    assert shares == sorted(shares) and np.isclose(outcome[5 * radius]["true_label_count"] / n,
                                                   1 - shares[-1], atol=1e-9)
