"""Shared set-up of the app tests: an untrained checkpoint in a temporary folder and an AppTest on a page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from torch import nn

from certcore.models.architectures import build_model
from certcore.models.checkpoints import save_checkpoint
from certcore.models.data import class_names
from certcore.views.default_result import DEFAULT_CHECKPOINT

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 180  # seconds per script run: the first one imports torch and plotly on a loaded machine


def write_checkpoint(folder: Path, model: nn.Module | None = None, name: str = DEFAULT_CHECKPOINT,
                     e: int = 50) -> Path:
    """A CIFAR10 ResNet-20 checkpoint: ``model`` (default: untrained, fast to load and run) trained with ``e``,
    saved as ``folder/name`` (default: the default checkpoint's name)."""
    meta = {"dataset": "cifar10", "arch": "resnet20", "e": e, "num_classes": 10,
            "class_names": class_names("cifar10"), "encoding": "levine-feizi-2c", "in_channels": 6,
            "device": "test fixture (untrained)" if model is None else "test fixture"}
    path = folder / name
    save_checkpoint(path, (model or build_model("resnet20", 10)).eval(), meta)
    return path


@pytest.fixture
def app_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CERTCORE_CHECKPOINTS with one untrained checkpoint, CERTCORE_RESULTS empty; returns the results folder."""
    root = tmp_path_factory.mktemp("app")
    (root / "checkpoints").mkdir()
    write_checkpoint(root / "checkpoints")
    monkeypatch.setenv("CERTCORE_CHECKPOINTS", str(root / "checkpoints"))
    monkeypatch.setenv("CERTCORE_RESULTS", str(root / "results"))
    return root / "results"


def open_page(page: str | None = None, query: dict[str, str] | None = None) -> AppTest:
    """The app on ``page`` (a path like ``pages/what_if.py``; None: the default page), run once."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    if page is not None:
        at.switch_page(page)
    return at.run()


def texts(at: AppTest) -> str:
    """Every markdown, caption, info, warning, error and success text of the last run, joined."""
    parts = [*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.success]
    return "\n".join(str(p.value) for p in parts)


def chart(at: AppTest, index: int = 0) -> dict:
    """The plotly figure of the page's ``index``-th chart, parsed from its JSON (compare values, not the text:
    without orjson plotly writes non-ASCII characters such as "α" as ``\\u03b1``)."""
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def trace_names(figure: dict) -> list[str]:
    """The legend names of a parsed plotly figure's traces."""
    return [trace.get("name", "") for trace in figure["data"]]


def assert_clean(at: AppTest) -> None:
    """No uncaught exception and no error box."""
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
