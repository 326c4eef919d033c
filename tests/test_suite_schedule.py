"""The suite's own schedule (tests/conftest.py): the long files it starts first still exist."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONG_FILES

ROOT = Path(__file__).resolve().parents[1]


def test_every_long_file_named_for_early_start_exists() -> None:
    # a renamed file would silently fall back to the end of the queue and stretch the run
    missing = [name for name in LONG_FILES if not (ROOT / name).is_file()]
    assert missing == [], f"tests/conftest.py LONG_FILES names missing files: {missing}"
    assert len(set(LONG_FILES)) == len(LONG_FILES)
