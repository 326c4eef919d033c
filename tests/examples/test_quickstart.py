"""The quickstart partner app converted by fedguard's mod and strategy runs as a real Flower
simulation, with one node left unconverted, which is reported in one readable line and costs
only its own replies (the helper quickstart_mixed.py runs it in a process of its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import ROOT
from tests.commands import command_env as _env
from tests.commands import jsonl_rows as _lines

pytestmark = pytest.mark.integration


def test_quickstart_app_converted_by_mod_and_strategy(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "tests/examples/quickstart_mixed.py"),
                           str(out), "2"], capture_output=True, text=True, timeout=420,
                          env=_env(tmp_path), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _lines(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(len(r["accepted"]) == 3 for r in rows)  # the three converted nodes
    assert rows[-1]["accuracy"] is not None and rows[-1]["accuracy"] > 0.3  # 10 classes
    assert 0 < rows[0]["max_epsilon"] < rows[-1]["max_epsilon"] <= 8.0
    refusals = [str(e["reason"]) for e in _lines(out / "audit.jsonl")
                if e.get("event") in ("refused", "eval-refused")]
    assert len(refusals) == 4 and all("fedguard-capable" in r for r in refusals)
    for reason in refusals:  # one readable line: no ANSI codes, no traceback
        assert "\n" not in reason and "\x1b" not in reason and "ray::" not in reason
        assert len(reason) < 400
