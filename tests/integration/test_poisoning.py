"""One boosted attacker: without a filter its aggregates are refused by the trainers and
rolled back; the encrypted filter drops it before it costs a round.

The two attacked runs are real Flower simulations (`fedguard simulate`, Ray, the real
ClientApp; subset data, 6 clients, 4 rounds, same seeds): without a filter, and with CKKS and
the encrypted norm/multikrum/cosine screen. The attack-free baseline, whose only use is its
accuracy, drives the same ClientApp through the in-memory grid (same config, seeds, data and
code path, as in test_recovery.py): seconds instead of a third Ray start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from clients.app import app as client_app
from federation.config import from_flat
from server.app import run_server

ROOT = Path(__file__).resolve().parents[2]
BASE = ["simulate", "--clients", "6", "--rounds", "4", "--lr", "0.02", "--data-dir", "subset",
        "--partition", "iid", "--batch-size", "32"]
# BASE as flat config keys (what the command builds from those flags and its defaults)
BASE_FLAT: dict[str, Any] = {"num-clients": 6, "num-server-rounds": 4, "lr": 0.02,
                             "data-dir": "subset", "partition": "iid", "batch-size": 32,
                             "local-epochs": 1, "seed": 0}
ATTACK = ["--malicious", "0.17", "--attack", "scaling:boost=50"]


def _simulate(args: list[str], out: Path) -> dict[str, Any]:
    ray_tmp = tempfile.mkdtemp(prefix="fgray-", dir="/tmp")  # short: Ray socket path limit
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([sys.executable, "-m", "simulations.cli", *BASE, *args,
                               "--out", str(out)], capture_output=True, text=True,
                              timeout=600, env=env, cwd=ROOT)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def _attack_free(fake_grid: Any, out: Path) -> dict[str, Any]:
    cfg = from_flat({**BASE_FLAT, "out-dir": str(out)})
    return run_server(fake_grid(client_app, cfg.run.clients), cfg, progress=lambda _l: None)


@pytest.mark.integration
def test_encrypted_filter_survives_a_boosted_attacker(tmp_path: Path, fake_grid: Any) -> None:
    clean = _attack_free(fake_grid, tmp_path / "clean")
    assert clean["rounds_completed"] == 4 and clean["rolled_back_rounds"] == []
    wrecked = _simulate(ATTACK, tmp_path / "unfiltered")
    guarded = _simulate([*ATTACK, "--secure-aggregation", "ckks",
                         "--defense", "norm,multikrum,cosine"], tmp_path / "guarded")
    acc_clean = clean["final_accuracy"]
    assert isinstance(acc_clean, float) and acc_clean > 0.5
    # a x50 boost breaks every FedAvg aggregate it is in; the trainers refuse each (loss
    # regression) and the run goes on from the groups without it
    assert wrecked["rounds_completed"] == 4 and wrecked["rolled_back_rounds"] == [1, 2, 3, 4]
    assert wrecked["final_accuracy"] > 0.3
    assert guarded["rolled_back_rounds"] == []
    assert guarded["final_accuracy"] >= acc_clean - 0.05
    assert guarded["secure_aggregation"] == "ckks"
    # The attacker was filtered every round, and only the attacker.
    rejected = guarded["rejected_by_round"]
    assert len(rejected) == 4 and all(len(r) == 1 for r in rejected)
    assert len({next(iter(r)) for r in rejected}) == 1
    audit = [json.loads(line) for line in (tmp_path / "guarded" / "audit.jsonl").read_text().splitlines()]
    assert sum(1 for e in audit if e.get("event") == "filtered") == 4
