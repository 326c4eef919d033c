"""Our own pyproject.toml reads without packaging deprecation warnings (issue 14)."""

from __future__ import annotations

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_applies_without_setuptools_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), PYPROJECT)
    assert [str(w.message)[:120] for w in caught] == []
    assert dist.metadata.license_expression == "Apache-2.0"  # an SPDX string, not a table
