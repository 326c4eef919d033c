"""What the tests that run a fedguard command in a subprocess share: its environment, the call,
and reading the JSON-lines files of its run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FEDGUARD = [sys.executable, "-m", "simulations.cli"]


def command_env(tmp_path: Path) -> dict[str, str]:
    """This environment plus no telemetry, a Flower home in ``tmp_path`` and the repository on
    ``PYTHONPATH`` (the examples import ``examples.*``)."""
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(tmp_path / "flwr"),
                # Ray's socket paths must stay under ~107 characters: a temp dir under /tmp
                "RAY_TMPDIR": tempfile.mkdtemp(prefix="fgray-", dir="/tmp"),
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)})
    return env


def run_fedguard(args: list[str], tmp_path: Path, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """``fedguard ARGS`` from the repository root, output captured."""
    return subprocess.run(FEDGUARD + args, capture_output=True, text=True, timeout=timeout,
                          env=command_env(tmp_path), cwd=ROOT)


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (metrics.jsonl, audit.jsonl), blank lines skipped."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
