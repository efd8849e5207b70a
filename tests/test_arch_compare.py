"""bench/arch_compare.py: its candidates are valid trainer options, and --smoke runs end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from certcore.models import training as train

REPO = Path(__file__).resolve().parents[1]


def load_arch_compare():
    """bench/arch_compare.py as a module (bench/ is not a package)."""
    if "arch_compare" not in sys.modules:
        spec = importlib.util.spec_from_file_location("arch_compare", REPO / "bench" / "arch_compare.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["arch_compare"] = module
        spec.loader.exec_module(module)
    return sys.modules["arch_compare"]


def test_every_candidate_is_accepted_by_the_trainer(tmp_path: Path) -> None:
    ac = load_arch_compare()
    args = ac.parse_args(["--work-dir", str(tmp_path)])
    assert args.candidates == list(ac.CANDIDATES) and args.budget_epochs == 2
    for spec in [*args.candidates, "r20-lr01=--arch resnet20 --lr 0.1"]:
        name, options = ac.candidate(spec)
        parsed = train.parse_args(ac.train_argv(args, name, options))
        assert parsed.epochs == 2 and parsed.seed == 0 and parsed.out == str(tmp_path / name / "ck.pt")
    assert train.parse_args(ac.train_argv(args, *ac.candidate("r20-lr01=--arch resnet20 --lr 0.1"))).lr == 0.1
    with pytest.raises(SystemExit, match="unknown candidate"):
        ac.candidate("resnet18")
    assert ac.parse_args(["--smoke", "--rounds", "3"]).rounds == 3  # explicit options win over the smoke defaults


@pytest.mark.slow
def test_smoke_run_writes_both_reports(tmp_path: Path, shared_data: Path) -> None:
    ac = load_arch_compare()
    ac.main(["--smoke", "--threads", "1", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path)])
    record = json.loads((tmp_path / "arch_compare_smoke.json").read_text())
    (row,) = record["candidates"].values()
    for key in ("val_ablated", "test_odd_exact", "test_odd_jpeg"):
        assert 0 <= row[key] <= 1
    assert row["inference"]["samples_per_s"] > 0 and row["distillation"]["teacher"] == "clean-resnet20"
    assert "eval500" not in json.dumps(record)  # the evaluation images never enter the comparison
    assert "| resnet20-clean-distill20 |" in (tmp_path / "arch_compare_smoke.md").read_text()
