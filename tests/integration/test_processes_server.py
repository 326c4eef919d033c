"""Real ``fedguard server`` processes on 127.0.0.1 that must stop with a clear exit code: a
server nobody connects to, a SuperLink killed alone, a ServerApp that fails.

A file apart from ``test_processes.py`` (whose clients outlive several servers there), so that
another pytest-xdist worker runs these meanwhile; each test has a deployment (port, processes)
of its own. Helpers: ``real_processes.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.config import from_flat, to_flat
from federation.processes import process_tree
from tests.integration.real_processes import COMMON, Deployment, finish, said, wait_for

pytestmark = pytest.mark.integration

if not sys.platform.startswith("linux"):  # pragma: no cover
    pytest.skip("process-tree handling reads /proc", allow_module_level=True)


def test_server_without_clients_or_superlink_stops_with_a_clear_message(
        deployment: Deployment) -> None:
    dep = deployment
    # Nobody comes: the server gives up after --client-wait, names the flag, exit code 4.
    lonely = dep.server("--rounds", "1", "--client-wait", "2", *COMMON, name="lonely")
    assert finish(lonely, dep, 90) == 4, dep.dump()
    assert said(lonely, r"no client connected within 2s \(--client-wait\)")
    assert not any("Traceback" in line for line in lonely.lines), dep.dump()
    # The SuperLink dies alone (not the fedguard parent): noticed, run stopped, exit code 3.
    dep.run_dir = dep.base / "run-b"
    server = dep.server("--rounds", "1", *COMMON, name="superlink-victim")
    wait_for("the server to wait for clients", lambda: said(server, r"waiting for 3 client"),
             90, dep)
    (superlink,) = [p for p in process_tree(server.pid)
                    if "flower-superlink" in Path(f"/proc/{p}/cmdline").read_bytes().decode()]
    os.kill(superlink, signal.SIGKILL)
    assert finish(server, dep, 30) == 3, dep.dump()
    assert said(server, rf"the SuperLink \(pid {superlink}\) exited unexpectedly")
    assert said(server, r"add --resume|without --resume")


def test_a_failing_serverapp_is_a_nonzero_exit(deployment: Deployment) -> None:
    """``flwr run --stream`` exits 0 when the ServerApp crashed: ``fedguard server`` reads the
    run's status instead and exits 1, naming it."""
    dep = deployment
    # A readable checkpoint (so the early check passes) whose model has the wrong shape: the
    # ServerApp fails when it restores it. A one-client run: the server submits it as soon as
    # that client is connected (the screening quorum cannot exceed the clients).
    dep.run_dir = dep.base / "run-failing"
    flat = to_flat(from_flat({"num-server-rounds": 2, "num-clients": 1, "screen-quorum": 1,
                              "data-dir": "subset", "out-dir": str(dep.run_dir)}))
    (dep.run_dir / "checkpoints").mkdir(parents=True)
    (dep.run_dir / "config.json").write_text(json.dumps({"flat": flat}))
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"round": np.array(1), "global": np.zeros(3, dtype=np.float32)}
    np.savez(buf, **arrays)
    (dep.run_dir / "checkpoints" / "round-0001.npz").write_bytes(buf.getvalue())
    failing = dep.server("--resume", name="server-failing")
    # the client once the keys are registered (earlier it would be refused and back off);
    # cold: no ClientApp ever runs here, so no warm launcher (torch, TenSEAL) to start for it
    wait_for("the server to wait for its client", lambda: said(failing, r"waiting for 1 client"),
             90, dep)
    dep.client(0, "--cold-start")
    assert finish(failing, dep, 240) == 1, dep.dump()
    assert said(failing, r"ended as finished:failed"), dep.dump()
