"""Shared fixtures. ``shared_data``: the offline data folder; tests using it skip when it is absent. ``sampling_calls``:
the n of every sampling a page starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from certcore.engine.queue import SamplingQueue


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data folder (``$CERTCORE_SHARED_DATA`` or ``<repo>/../shared/data``); skip if it is missing."""
    from certcore.models.data import shared_data_dir

    path = shared_data_dir()
    if not (path / "cifar10").is_dir() or not (path / "checkpoints").is_dir():
        pytest.skip(f"offline data folder not found at {path} (set CERTCORE_SHARED_DATA to its location)")
    return path


@pytest.fixture
def sampling_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the sampling requests the page makes, all through the shared queue (each entry: the n requested)."""
    calls: list[int] = []
    real = SamplingQueue.submit

    def counted(self, model, image, *, n, **kwargs):
        calls.append(n)
        return real(self, model, image, n=n, **kwargs)

    monkeypatch.setattr(SamplingQueue, "submit", counted)
    return calls


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the ``shared_data`` fixture get the ``shared_data`` marker (deselect: -m 'not shared_data')."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)
