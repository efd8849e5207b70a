"""The package's face: ``certcore.certify`` is the function, every public name imports from ``certcore``, and
``import certcore`` alone loads no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import certcore
from certcore.engine.certificate import certify

# The public names of certcore before it was split into layers; each must stay importable from the package root.
PUBLIC = (
    "PAPER_ROWS BoundCurves IncompleteLineWarning PaperRow ResultsError accuracy_table bound_curves "
    "certified_accuracy certified_radius certify_counts clopper_pearson_lower clopper_pearson_upper describe_run "
    "levine_feizi_radius list_result_files paper_rows paper_table_markdown radius_limit read_results rounded_bounds "
    "simuem_bounds ablate ablated_previews draw_keep_masks encode_ablated SamplingCancelled SamplingResult "
    "sample_counts Certificate certificate_from_counts build_model init_from_clean_cifar CheckpointError "
    "CheckpointInfo CheckpointWarning checkpoint_sha256 list_checkpoints load_checkpoint save_checkpoint Sample "
    "bundled_samples class_names evaluation_indices load_uploaded_image certify __version__"
).split()


def test_certcore_certify_is_the_function():
    assert callable(certcore.certify) and certcore.certify is certify
    from certcore import certify as imported

    assert imported is certify


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_import_from_the_package(name):
    assert name in certcore.__all__
    assert getattr(certcore, name) is not None


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'certifyy'"):
        certcore.certifyy  # noqa: B018


def test_import_certcore_is_light():
    code = "import sys, certcore; certcore.certified_radius; print(sorted({'torch', 'streamlit'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_subpackage_and_its_data_is_packaged():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    root = Path(certcore.__file__).parent
    config = tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(("certcore", *p.parent.relative_to(root).parts)) for p in root.rglob("__init__.py")}
    assert set(config["packages"]) == found
    data = config["package-data"]["certcore"]
    assert "default_certificate.json" in data and "samples/imagenet/*.jpg" in data
