"""``flwr run`` with a bad ``task``: a real SuperLink (simulation runtime) and a real ``flwr run``.

The ServerApp validates the task before round 1 and raises, so Flower records the run as
``finished:failed`` with the message naming the key; ``python -m simulations.flwr_run`` (the
README's ``flwr run`` command) reads that status and exits non-zero.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from simulations.flwr_run import EXIT_FAILED

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_flwr_run_with_a_bad_task_fails_the_run_and_exits_non_zero(tmp_path: Path) -> None:
    port, control, fleet, health = _free_ports(4)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           # Ray's socket paths must stay short: a temp dir under /tmp, not tmp_path
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="fgray-", dir="/tmp"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    log = (tmp_path / "superlink.log").open("wb")
    superlink = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port),
         "--control-api-address", f"127.0.0.1:{control}",
         "--fleet-api-address", f"127.0.0.1:{fleet}",
         "--health-server-address", f"127.0.0.1:{health}",
         "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: the SuperExec and simulation go with it
    try:
        deadline = time.monotonic() + 120  # a loaded CI machine: the import alone can take long
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if superlink.poll() is not None or time.monotonic() > deadline:
                pytest.fail("SuperLink did not start:\n" + (tmp_path / "superlink.log").read_text())
            time.sleep(0.2)
        proc = subprocess.run(
            [sys.executable, "-m", "simulations.flwr_run", ".", "--no-stream",
             "--federation-config", "num-supernodes=2 client-resources-num-cpus=1",
             "--run-config", "task='examples.nope:task' num-server-rounds=1", "--timeout", "400",
             "--poll", "0.5"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=450,
            stdin=subprocess.DEVNULL)
        assert proc.returncode == EXIT_FAILED, proc.stdout + proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "finished:failed" in last and "task: cannot import module 'examples.nope'" in last
        run_id = proc.stderr.split("fedguard: run ", 1)[1].split()[0]
        listed = subprocess.run([str(BIN / "flwr"), "ls", "--run-id", run_id, "--format", "json"],
                                capture_output=True, text=True, env=env, timeout=60,
                                stdin=subprocess.DEVNULL)
        row = json.loads(listed.stdout[listed.stdout.index("{"):])["runs"][0]
        assert row["status"] == "finished:failed"  # Flower's own record of the run agrees
        assert "task: cannot import module" in row["status-details"]
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
            superlink.wait(timeout=15)
        log.close()
