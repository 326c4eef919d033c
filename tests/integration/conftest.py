"""Fixtures for the real-process tests (``test_processes*.py``); helpers in real_processes.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.real_processes import Deployment, provision_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned federation of three trainers (``keys.parent / "impostor"``: a bundle with
    an authentication key the server never registered), one per test file."""
    return provision_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def deployment(tmp_path: Path, keys: Path) -> Iterator[Deployment]:
    """A deployment of this test's own (port, processes); every process is gone afterwards."""
    dep = Deployment(tmp_path, keys)
    try:
        yield dep
    finally:
        leftovers = dep.stop_all()
        assert leftovers == [], f"processes left running: {leftovers}"
