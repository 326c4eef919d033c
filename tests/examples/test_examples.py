"""The breast-cancer partner example runs as a real Flower simulation through the documented
``fedguard simulate`` command (DP + CKKS + encrypted filter, 4 hospitals); a task that cannot be
imported fails the command naming the flag. The quickstart example is in test_quickstart.py (a
file of its own, so that two workers run the two simulations side by side)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import ROOT
from tests.commands import command_env as _env
from tests.commands import jsonl_rows as _lines

pytestmark = pytest.mark.integration


def test_breast_cancer_four_hospitals_dp_ckks_filter(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--task",
           "examples.breast_cancer.task:task", "--clients", "4", "--rounds", "2",
           "--partition", "iid", "--dp-epsilon", "3", "--dp-accountant", "rdp", "--batch-size",
           "32", "--lr", "0.5", "--momentum", "0", "--max-grad-norm", "1",
           "--secure-aggregation", "ckks", "--defense", "norm,multikrum", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=_env(tmp_path),
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["secure_aggregation"] == "ckks"
    assert summary["final_accuracy"] > 0.8  # the MLP's held-out accuracy (chance ~0.63)
    assert 0 < summary["max_epsilon"] <= 3.0
    assert all(len(r["accepted"]) >= 3 for r in _lines(out / "metrics.jsonl"))


def test_a_bad_task_import_string_fails_the_command_naming_the_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from simulations.cli import app

    result = CliRunner().invoke(app, ["simulate", "--task", "examples.nope:task", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--task: cannot import module 'examples.nope'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
