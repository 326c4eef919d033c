"""A real Flower simulation with one ``wrap`` attacker: it is caught every round, learning goes on.

Before the projection screen, a tuned wrap (a boosted update whose padding slots wrap the
modulus) was accepted by every filter and took a 5-client federation to 10 % after one round.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["simulate", "--clients", "4", "--rounds", "3", "--lr", "0.02", "--data-dir", "subset",
        "--partition", "iid", "--batch-size", "32", "--secure-aggregation", "ckks",
        "--defense", "norm,multikrum,cosine", "--malicious", "0.25", "--attack", "wrap:boost=50"]


@pytest.mark.integration
def test_a_wrap_attacker_is_rejected_every_round_and_the_federation_learns(tmp_path: Path) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="fgray-", dir="/tmp")  # short: Ray socket path limit
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([sys.executable, "-m", "simulations.cli", *ARGS, "--out",
                               str(tmp_path / "run")], capture_output=True, text=True,
                              timeout=900, env=env, cwd=ROOT)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    rejected = summary["rejected_by_round"]
    assert all(list(r.values()) == ["statistic:wraparound"] for r in rejected), rejected
    assert len({next(iter(r)) for r in rejected}) == 1  # the same (attacking) client
    acc = summary["accuracy_by_round"]
    assert acc[-1] > 0.5 and acc[-1] > acc[0], acc  # it keeps learning
    audit = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "screen-rejected" for e in audit) == 3
