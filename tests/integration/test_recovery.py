"""One garbage ciphertext never ends a federation, with or without a filter.

Under CKKS the uploads' validity check runs with or without a filter, so the garbage upload
is rejected before aggregation (``statistic:*``) and costs only itself.

The attacked run without a filter is a real Flower simulation (`fedguard simulate`, Ray, the
real ClientApp); the attack-free baseline and the filtered run drive the same ClientApp
through the in-memory grid (same seeds, same data, same code path), which costs seconds
instead of a Ray start-up each.
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
from server.app import make_scheme
from server.audit import verify_log
from server.loop import run_federation
from simulations.adversary import make_adversarial_client_app

ROOT = Path(__file__).resolve().parents[2]
# 6 clients: attribution needs two disjoint groups of k = 3. Three local epochs keep a round
# that aggregates half of the clients close to one that aggregates all of them.
FLAT: dict[str, Any] = {"num-clients": 6, "num-server-rounds": 3, "partition": "iid",
                        "data-dir": "subset", "batch-size": 32, "lr": 0.02, "local-epochs": 3,
                        "secure-aggregation": "ckks"}
ATTACK = {"attack": "garbage", "malicious": 0.17}


def _simulate(out: Path) -> dict[str, Any]:
    args = [f"--{k.replace('num-server-', '').replace('num-', '')}={v}"
            for k, v in {**FLAT, **ATTACK}.items()]
    ray_tmp = tempfile.mkdtemp(prefix="fgray-", dir="/tmp")  # short: Ray socket path limit
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", *args,
                               "--out", str(out)], capture_output=True, text=True, timeout=600,
                              env=env, cwd=ROOT)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def _in_memory(fake_grid, recorder, **extra: object) -> tuple[Any, Any]:
    cfg = from_flat({**FLAT, **extra})
    app = make_adversarial_client_app(cfg) if extra.get("attack") else client_app
    rec = recorder()
    result = run_federation(fake_grid(app, 6), cfg, make_scheme(cfg), observer=rec)
    return result, rec


@pytest.mark.integration
def test_garbage_never_ends_the_run_with_or_without_a_filter(tmp_path: Path, fake_grid,
                                                             recorder) -> None:
    clean, clean_rec = _in_memory(fake_grid, recorder)
    assert clean.rounds_completed == 3 and clean.rolled_back_rounds == []
    acc_clean = clean_rec.rounds[-1].accuracy
    assert acc_clean > 0.5

    # plain secure aggregation (no filter), real Flower simulation: the uploads' validity
    # check (part of secure aggregation) rejects the garbage before it is aggregated, so no
    # honest update is lost with it (the rollback path is tested in tests/server/test_recovery.py
    # by a bounded update the check cannot see)
    summary = _simulate(tmp_path / "garbage")
    assert summary["rounds_completed"] == 3 and not summary["stopped_early"]
    assert summary["rolled_back_rounds"] == []
    assert summary["final_accuracy"] >= acc_clean - 0.03
    rows = [json.loads(line) for line in (tmp_path / "garbage" / "metrics.jsonl").read_text().splitlines()]
    attacker = {n for r in rows for n in r["rejected"]}
    assert len(attacker) == 1, "the one attacker, and only it, is rejected"
    assert all(list(r["rejected"]) == list(attacker) and r["rejected"][n].startswith("statistic:")
               and n not in r["weights"] and len(r["weights"]) == 5 for r in rows for n in attacker)
    chain = verify_log(tmp_path / "garbage" / "audit.jsonl", summary)
    assert chain.ok, chain
    events = [json.loads(line) for line in (tmp_path / "garbage" / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("rolled-back") == 0
    assert sum(1 for e in events if e["event"] == "filtered"
               and str(e["reasons"][0]).startswith("statistic:")) == 3

    # the same attack against the encrypted filter: whatever the filter lets through is recovered
    guarded, guarded_rec = _in_memory(fake_grid, recorder, **ATTACK,
                                      defense="norm,multikrum,cosine")
    assert guarded.rounds_completed == 3 and not guarded.stopped_early
    assert guarded_rec.rounds[-1].accuracy >= acc_clean - 0.03
