"""The pieces of ``fedguard server`` / ``fedguard client`` that need no running Flower."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer

from simulations import deploy
from simulations.cli_deploy import register


def test_register_adds_server_and_client_commands() -> None:
    app = typer.Typer()
    register(app)
    names = {c.name for c in app.registered_commands}
    assert names == {"server", "client"}


def test_stage_app_copies_only_the_app_sources(tmp_path: Path) -> None:
    staged = deploy.stage_app(deploy.project_dir(), tmp_path / "fedguard")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "pyproject.toml" in files
    assert {"server/app.py", "clients/app.py", "federation/config.py", "crypto/keys.py"} <= files
    assert not any(f.startswith(("tests/", "simulations/", ".venv/")) for f in files)
    assert not any("__pycache__" in f or f.endswith((".npz", ".pyc")) for f in files)


def test_metrics_tail_formats_new_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"round": 1, "accuracy": 0.5, "loss": 1.0, "sampled": 3,
                                "accepted": [1, 2, 3], "seconds": 2.0}) + "\n")
    tail = deploy._MetricsTail(path, total=2)  # starts at the end: a resumed run's old lines
    assert list(tail.poll()) == []
    row = {"round": 2, "accuracy": 0.6, "loss": 0.9, "sampled": 3, "accepted": [1, 2],
           "refused": {"3": "lost: error-reply: code 5"}, "max_epsilon": 1.5, "seconds": 4.0,
           "timings": {"train-phase": 3.9, "screen": 0.0}}
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n" + '{"round": 3')  # the last line is still being written
    (line,) = tail.poll()
    assert line.startswith("round   2/2  acc 0.6000")
    assert "max ε 1.500" in line and "accepted 2/3" in line
    assert "not counted: node 3 (lost: error-reply: code 5)" in line
    assert "(train-phase 3.9s)" in line


def _attempt_after(lines: list[str]) -> tuple[deploy._Attempt, list[str]]:
    said: list[str] = []
    opts = deploy.ClientOptions(keys=Path("k"), superlink="h:1", state_dir=Path("s"))
    attempt = deploy._Attempt()
    for line in lines:
        deploy._client_line(line, attempt, opts, said.append)
    return attempt, said


def test_client_lines_become_progress() -> None:
    attempt, said = _attempt_after([
        "WARNING :   Connection attempt failed, retrying in 1.25 seconds",
        "INFO :      SuperNode ID: 42",
        "INFO :      [RUN 7, ROUND 1]",
        "INFO :      Receiving: train message (ID: ab)",
    ])
    assert said[0].startswith("cannot reach the SuperLink at h:1; retrying in 1.2s")
    assert "as node 42" in said[1]
    assert said[2] == "round 1 (train): request received"
    assert attempt.connected and attempt.busy
    attempt, _ = _attempt_after(["INFO :      Receiving: evaluate message (ID: x)",
                                 "INFO :      Sent successfully"])
    assert not attempt.busy
    attempt, said = _attempt_after(["ERROR :     Exit Code: 305",
                                    "[code: 2004] Failed to activate SuperNode."])
    assert attempt.refused and said == []


def test_lease_waits_only_after_a_busy_death(tmp_path: Path) -> None:
    lease_path = tmp_path / "supernode.lease"
    lease_path.write_text(json.dumps({"pid": 2**22 + 7, "busy": True}))  # a dead predecessor
    said: list[str] = []
    stop = threading.Event()
    waits: list[float] = []
    stop.wait = lambda timeout=None: waits.append(timeout) or False  # type: ignore[method-assign]
    deploy._Lease(lease_path, heartbeat=10.0).claim(said.append, stop)
    assert len(waits) == 1 and 20 < waits[0] <= 23 and "waiting" in said[0]
    # Now the file is ours, not busy: no wait the next time.
    assert json.loads(lease_path.read_text()) == {"pid": os.getpid(), "busy": False}
    waits.clear()
    lease = deploy._Lease(lease_path, heartbeat=10.0)
    lease_path.write_text(json.dumps({"pid": 2**22 + 7, "busy": False}))
    lease.claim(said.append, stop)
    assert waits == []
    # A busy death that is older than the heartbeat window needs no wait either; nor does a
    # SuperLink restart.
    lease_path.write_text(json.dumps({"pid": 2**22 + 7, "busy": True}))
    old = time.time() - 60
    os.utime(lease_path, (old, old))
    lease.claim(said.append, stop)
    lease_path.write_text(json.dumps({"pid": 2**22 + 7, "busy": True}))
    lease.claim(said.append, stop, superlink_restarted=True)
    assert waits == []
    lease.release()
    assert not lease_path.exists()


def test_lease_refuses_a_second_client_on_the_same_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "supernode.lease"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(json.dumps({"pid": other.pid, "busy": False}))
        with pytest.raises(deploy.DeployError, match="another fedguard client"):
            deploy._Lease(path, heartbeat=10.0).claim(lambda _: None, threading.Event())
    finally:
        other.kill()
        other.wait()


def test_stop_tree_reaches_grandchildren_in_other_sessions(tmp_path: Path) -> None:
    # A parent whose child runs in a session of its own, as Flower starts its SuperExec.
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True); time.sleep(60)")
    proc = deploy.ManagedProcess("parent", [sys.executable, "-c", script], env=dict(os.environ),
                                 log_path=tmp_path / "log", new_session=True)
    deadline = time.monotonic() + 10
    while len(deploy.process_tree(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = deploy.process_tree(proc.pid)
    assert len(tree) == 2
    proc.stop(grace=2.0)
    assert not any(deploy.process_tree(pid) for pid in tree)


def test_simulation_and_deployment_progress_share_one_format() -> None:
    from server.report import format_round

    row = {"round": 4, "accuracy": 0.7, "loss": 0.8, "sampled": 10, "accepted": list(range(8)),
           "rejected": {"1": "norm", "2": "multikrum"}, "refused": {"9": "lost"}, "eval_asr": 0.042,
           "seconds": 12.34, "timings": {"screen": 1.5}}
    plain = format_round(row, 5)
    assert plain == "round   4/5  acc 0.7000  loss 0.8000  accepted 8/10 (rejected 2)  backdoor 0.042  12.3s"
    detailed = format_round(row, 5, detail=True)
    assert detailed.startswith(plain.removesuffix("  12.3s"))
    assert detailed.endswith("not counted: node 9 (lost)  12.3s (screen 1.5s)")
