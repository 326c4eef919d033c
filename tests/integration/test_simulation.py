"""A real Flower simulation (Ray backend) through the `fedguard simulate` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.commands import run_fedguard as _run


@pytest.mark.integration
def test_simulation_trains_and_writes_its_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _run(["simulate", "--clients", "3", "--rounds", "2", "--data-dir", "subset",
                 "--partition", "iid", "--batch-size", "32", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "round   1/2" in proc.stdout and "round   2/2" in proc.stdout
    assert "final accuracy" in proc.stdout
    # a clean console (issue 14): no Ray actor-shutdown warnings, no colour codes in a pipe
    assert "Manually terminating" not in proc.stdout + proc.stderr
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    losses = summary["loss_by_round"]
    assert len(losses) == 2 and all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0] < math.log(10)  # below chance level, and still going down
    assert len(summary["accuracy_by_round"]) == 2
    assert summary["final_accuracy"] == summary["accuracy_by_round"][-1] > 0.3

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(len(r["accepted"]) == 3 for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["run"]["clients"] == 3
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round-0001.npz", "round-0002.npz"]


@pytest.mark.integration
def test_a_failing_serverapp_fails_the_command(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the run folder should go")
    proc = _run(["simulate", "--clients", "2", "--rounds", "1", "--data-dir", "subset",
                 "--out", str(blocker / "run")], tmp_path)
    assert proc.returncode != 0
    assert "the federation failed" in proc.stdout + proc.stderr
    assert "final accuracy" not in proc.stdout


def test_bad_flags_name_the_flag(tmp_path: Path) -> None:
    proc = _run(["simulate", "--partition", "dirichlet:0", "--out", str(tmp_path / "x")], tmp_path, 60)
    assert proc.returncode == 2
    assert "--partition" in proc.stderr and "dirichlet:ALPHA" in proc.stderr
