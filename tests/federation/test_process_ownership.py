"""Owning child processes: the parent-death signal, whole-tree stops, restart clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.processes import (
    DeployError,
    Incarnation,
    ManagedProcess,
    port_free,
    port_holders,
    process_tree,
)

# A parent that starts a long-lived child through ManagedProcess, prints the child's pid, and
# sleeps: SIGKILL of this parent must take the child with it (the parent-death signal).
_PARENT = """
import os, sys, time
from pathlib import Path
from federation.processes import ManagedProcess
child = ManagedProcess("child", [sys.executable, "-c", "import time; time.sleep(60)"],
                       env=dict(os.environ), log_path=Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(60)
"""


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if process_tree(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if process_tree(p)]


def test_a_sigkilled_owner_takes_its_children_with_it(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "log")],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert process_tree(child) == [child]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_gone([child], 5.0) == [], "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_stop_reaches_grandchildren_in_other_sessions(tmp_path: Path) -> None:
    # A parent whose child runs in a session of its own, as Flower starts its SuperExec.
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True); time.sleep(60)")
    proc = ManagedProcess("parent", [sys.executable, "-c", script], env=dict(os.environ),
                          log_path=tmp_path / "log", new_session=True)
    deadline = time.monotonic() + 10
    while len(process_tree(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = process_tree(proc.pid)
    assert len(tree) == 2
    proc.stop(grace=2.0)
    assert _wait_gone(tree, 2.0) == []


def test_incarnation_refuses_a_live_owner_and_cleans_up_after_a_dead_one(tmp_path: Path) -> None:
    record = tmp_path / "server.pid"
    said: list[str] = []
    # A live owner (another process that claimed the folder): refused, with its pid.
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from federation.processes import Incarnation; "
         "Incarnation(Path(sys.argv[1]), 'x', 'y').claim(print); print('ok', flush=True); "
         "time.sleep(60)", str(record)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ok"
        with pytest.raises(DeployError, match=rf"another fedguard server \(pid {other.pid}\)"):
            Incarnation(record, "fedguard server", "use another --out").claim(said.append)
        # The owner dies; its record names a process it owned that is still running.
        other.kill()
        other.wait()
        data = json.loads(record.read_text())
        start = int(Path(f"/proc/{leftover.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        data["tree"].append([leftover.pid, start])
        data["tree"].append([leftover.pid + 1_000_000, 1])  # a pid that is gone: ignored
        record.write_text(json.dumps(data))
        mine = Incarnation(record, "fedguard server", "use another --out")
        mine.claim(said.append)
        assert leftover.wait(timeout=10) is not None
        assert any(f"died and left 1 process(es) running: {leftover.pid}" in s for s in said)
        assert json.loads(record.read_text())["pid"] == os.getpid()
        mine.release()
        assert not record.exists()
    finally:
        for p in (other, leftover):
            p.kill()
            p.wait()
        if other.stdout is not None:
            other.stdout.close()


def test_a_recycled_pid_is_never_touched(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = tmp_path / "client.pid"
        # A dead owner's record names the bystander's pid with another start time.
        record.write_text(json.dumps({"pid": 2**22 + 11, "start": 5,
                                      "tree": [[bystander.pid, 7]]}))
        said: list[str] = []
        Incarnation(record, "fedguard client", "use another --state-dir").claim(said.append)
        time.sleep(0.2)
        assert bystander.poll() is None and said == []
    finally:
        bystander.kill()
        bystander.wait()


def test_port_holders_name_the_listening_process() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        holders = port_holders(port)
        assert any(h.startswith(f"pid {os.getpid()} ") for h in holders), holders
