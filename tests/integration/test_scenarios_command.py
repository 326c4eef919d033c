"""``fedguard scenarios`` through the command: one real Flower simulation (Ray backend) for the
one scenario asked for, then the same command resuming instead of running it twice, and a
damaged results file refused. A file apart from test_simulation.py, so that two workers run
their simulations side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.commands import run_fedguard as _run


@pytest.mark.integration
def test_scenarios_command_resumes_instead_of_running_a_scenario_twice(tmp_path: Path) -> None:
    out = tmp_path / "matrix"
    args = ["scenarios", "--matrix", "small", "--only", "none__none__none", "--out", str(out)]
    first = _run(args, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [r["scenario"] for r in rows] == ["none__none__none__nodp"]
    assert rows[0]["final_accuracy"] > 0.3
    assert "| none | none | none | off |" in (out / "results.md").read_text()

    # The same command again, in this process (typer's runner: the same app, its exit code and
    # output): it only reads results.json, so a second interpreter start would be all it costs.
    from typer.testing import CliRunner

    from simulations.cli import app

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already in results.json, skipped" in again.output
    assert json.loads((out / "results.json").read_text()) == rows

    (out / "results.json").write_text("{broken")
    broken = CliRunner().invoke(app, args)
    assert broken.exit_code == 2 and "not a results file" in broken.output
