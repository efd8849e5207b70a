"""The package's layers, read from the imports of every module (including imports inside functions).

math -> engine -> models -> evaluation -> views: each layer imports only the layers before it (and itself);
``certcore.version`` is a leaf any module may read. math imports no torch, torchvision, plotly or streamlit, and
nothing in certcore imports streamlit (the pages do).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "certcore"
LAYERS = ("math", "engine", "models", "evaluation", "views")
LEAVES = {"version"}  # modules every layer may import
NEVER = {"math": {"torch", "torchvision", "plotly", "streamlit"}}  # third-party packages a layer must not import
NOWHERE = {"streamlit"}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the source of ``module`` (a dotted name);
    ``from a import b`` counts as ``a.b``, since b may be a submodule."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, module: str) -> list[str]:
    """Every import of ``module`` (e.g. ``certcore.engine.sampling``) that breaks the layer rule."""
    parts = module.split(".")
    layer = parts[1] if len(parts) > 2 and parts[1] in LAYERS else None  # certcore.<layer>.<module>
    allowed = set(LAYERS[: LAYERS.index(layer) + 1]) if layer else None
    bad = []
    for line, name in imported_modules(source, module):
        top, *rest = name.split(".")
        if top in NOWHERE | NEVER.get(layer, set()):
            bad.append(f"{module}:{line} imports {name}")
        elif top == "certcore" and allowed is not None:
            target = rest[0] if rest else ""
            if target not in allowed | LEAVES:
                bad.append(f"{module}:{line} imports {name} (layer {layer} may import {', '.join(sorted(allowed))})")
    return bad


def modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every module in certcore; a package's own module is named ``<package>.__init__``."""
    return sorted((".".join(("certcore", *p.relative_to(PACKAGE).with_suffix("").parts)), p)
                  for p in PACKAGE.rglob("*.py"))


def test_every_layer_is_a_subpackage_with_modules():
    names = [name for name, _ in modules()]
    for layer in LAYERS:
        assert sum(name.startswith(f"certcore.{layer}.") for name in names) >= 2, layer


@pytest.mark.parametrize("module, path", modules(), ids=[name for name, _ in modules()])
def test_imports_follow_the_layers(module, path):
    assert violations(path.read_text(), module) == []


@pytest.mark.parametrize("module, source", [
    ("certcore.math.bounds", "from certcore.engine.sampling import sample_counts"),
    ("certcore.math.bounds", "import torch"),
    ("certcore.math.radius", "def f():\n    import plotly.graph_objects as go"),
    ("certcore.math.radius", "from certcore import simuem_bounds"),
    ("certcore.engine.certificate", "from certcore.views.sweeps import Sweep"),
    ("certcore.engine.certificate", "from certcore import __version__"),
    ("certcore.engine.sampling", "from ..models import data"),
    ("certcore.models.training", "from certcore.evaluation import evaluate"),
    ("certcore.evaluation.paper_figures", "def f():\n    from certcore.views.figures import mosaic"),
    ("certcore.evaluation.evaluate", "import certcore.train"),
    ("certcore.views.explain", "import streamlit as st"),
    ("certcore.evaluate", "import streamlit"),
])
def test_the_check_catches_a_crossing_import(module, source):
    assert violations(source, module)


@pytest.mark.parametrize("module, source", [
    ("certcore.math.bounds", "from .validation import check_alpha\nimport numpy, scipy.stats"),
    ("certcore.engine.certificate", "from certcore.math.radius import certified_radius\nimport torch"),
    ("certcore.engine.certificate", "from certcore.version import __version__"),
    ("certcore.views.default_result", "from certcore.models.checkpoints import load_checkpoint"),
    ("certcore.evaluate", "from certcore.evaluation.evaluate import main"),
])
def test_the_check_allows_imports_from_below(module, source):
    assert violations(source, module) == []
