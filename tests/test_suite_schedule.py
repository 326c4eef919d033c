"""The suite's own schedule (tests/conftest.py): the long files it starts first exist, and
every file that runs real simulations or processes is among them."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import LONG_FILES

ROOT = Path(__file__).resolve().parents[1]
# ``pytestmark = pytest.mark.integration`` or ``@pytest.mark.integration`` (the marker that
# pyproject declares for real Flower simulations and processes)
_INTEGRATION = re.compile(r"^\s*(pytestmark\s*=.*|@)pytest\.mark\.integration\b", re.MULTILINE)


def test_every_long_file_named_for_early_start_exists() -> None:
    # a renamed file would silently fall back to the end of the queue and stretch the run
    missing = [name for name in LONG_FILES if not (ROOT / name).is_file()]
    assert missing == [], f"tests/conftest.py LONG_FILES names missing files: {missing}"
    assert len(set(LONG_FILES)) == len(LONG_FILES)


def test_every_integration_file_starts_early() -> None:
    # a new simulation or process test left out of LONG_FILES would start behind the fast
    # tests and, at minutes per file, end the suite alone on one worker
    marked = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")
                    if _INTEGRATION.search(p.read_text(encoding="utf-8")))
    assert len(marked) >= 10, marked  # the pattern still finds the marker
    unlisted = [name for name in marked if name not in LONG_FILES]
    assert unlisted == [], f"integration test files missing from tests/conftest.py LONG_FILES: {unlisted}"
