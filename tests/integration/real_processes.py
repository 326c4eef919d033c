"""Helpers for the tests that start real ``fedguard server`` / ``fedguard client`` processes.

Shared by ``test_processes.py`` (one deployment whose clients outlive several servers) and
``test_processes_server.py`` (a server alone, a failing ServerApp): two files, so that two
pytest-xdist workers run them side by side. The fixtures that use these helpers are in
``tests/integration/conftest.py``.

Every process is started in a session of its own and stopped by process id, its whole tree
included (also when a test fails). TLS and SuperNode authentication are on in every test; data
is the vendored subset; rounds are tiny (1 local epoch, batch 32).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypto.keys import provision_federation
from crypto.tls import make_supernode_auth_keypair
from federation.processes import ManagedProcess, free_port, process_tree, stop_tree

PASSPHRASE = "integration-test-passphrase"
SECURE = "ckks"  # provisioned keys: the server bundle's public context, sealed trainer secrets
COMMON = ["--data-dir", "subset", "--batch-size", "32", "--local-epochs", "1",
          "--partition", "iid", "--round-timeout", "120"]


def _ckks_material() -> tuple[bytes, bytes, str]:
    from crypto.ckks import Preset, SecretContext

    secret = SecretContext.generate(Preset.AGGREGATION)
    return secret.to_bytes(), secret.public().to_bytes(), secret.fingerprint


def provision_keys(root: Path) -> Path:
    """A provisioned federation of three trainers in ``root/fed``, and ``root/impostor``: a
    trainer bundle whose authentication key the server never registered. Returns ``root/fed``."""
    fed = root / "fed"
    secret, public, fingerprint = _ckks_material()
    provision_federation(fed, 3, PASSPHRASE, ckks_secret=secret, ckks_public=public,
                         fingerprint=fingerprint)
    # The impostor: trainer-2's bundle (valid CA, sealed secret) with a fresh authentication
    # key that the server never registered.
    impostor = root / "impostor"
    shutil.copytree(fed / "trainer-2", impostor)
    private, pub = make_supernode_auth_keypair()
    for name, data in (("supernode-auth", private), ("supernode-auth.pub", pub + b"\n")):
        (impostor / name).chmod(0o600)
        (impostor / name).write_bytes(data)
    manifest = json.loads((impostor / "manifest.json").read_text())
    manifest["files"]["supernode-auth.pub"]["sha256"] = hashlib.sha256(pub + b"\n").hexdigest()
    (impostor / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return fed


class Deployment:
    """Starts ``fedguard server`` / ``fedguard client`` processes and stops them all."""

    def __init__(self, base: Path, keys: Path) -> None:
        self.base = base
        self.keys = keys
        self.port = free_port()
        self.env = {**os.environ, "FEDGUARD_PASSPHRASE": PASSPHRASE,
                    "FEDGUARD_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.procs: list[ManagedProcess] = []
        self.clients: dict[int, ManagedProcess] = {}  # trainer i's own client (its state dir)
        self.run_dir = base / "run"

    def _start(self, name: str, args: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, [sys.executable, "-m", "simulations.cli", *args],
                              env=self.env, log_path=self.base / f"{name}.out",
                              cwd=self.base, new_session=True)
        self.procs.append(proc)
        return proc

    def server(self, *args: str, name: str = "server") -> ManagedProcess:
        return self._start(name, ["server", "--keys", str(self.keys / "server"),
                                  "--out", str(self.run_dir), "--port", str(self.port), *args])

    def client(self, i: int, *args: str, bundle: Path | None = None, name: str | None = None,
               state: str | None = None) -> ManagedProcess:
        proc = self._start(name or f"client{i}", [
            "client", "--keys", str(bundle or self.keys / f"trainer-{i}"),
            "--superlink", f"127.0.0.1:{self.port}", "--partition-id", str(i),
            "--num-partitions", "3", "--state-dir", str(self.base / (state or f"state{i}")),
            *args])
        if bundle is None and state is None:
            self.clients[i] = proc
        return proc

    def stop_servers(self) -> None:
        """Stop every process but the trainers' own clients (what an earlier test may have
        left running if it failed: its server would hold the port)."""
        keep = {p.pid for p in self.clients.values()}
        for proc in self.procs:
            if proc.pid not in keep and (proc.poll() is None or process_tree(proc.pid)):
                proc.stop(grace=5.0)

    def ensure_clients(self, n: int = 3) -> None:
        """Trainers 0..n-1 each have a live client (an earlier test's stay up: they reconnect
        to the next server on the same port by themselves, their ClientApp launchers warm)."""
        for i in range(n):
            if i not in self.clients or self.clients[i].poll() is not None:
                self.client(i)

    def stop_all(self) -> list[int]:
        """Stop every process (tree) started here; return the pids still alive afterwards."""
        seen = {pid for p in self.procs for pid in process_tree(p.pid)}

        def stop(proc: ManagedProcess) -> None:
            try:
                proc.stop(grace=5.0)
            except Exception:  # make sure it dies anyway
                stop_tree(proc.pid, 1.0, hard=True)

        threads = [threading.Thread(target=stop, args=(p,)) for p in self.procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return left_after(sorted(seen), 0.5)

    def dump(self) -> str:
        return "\n".join(f"---- {p.name} (exit {p.poll()})\n" + "\n".join(p.tail(40))
                         for p in self.procs)


def wait_for(what: str, check: Callable[[], object], timeout: float, dep: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{dep.dump()}")


def said(proc: ManagedProcess, pattern: str) -> bool:
    return any(re.search(pattern, line) for line in list(proc.lines))


def finish(proc: ManagedProcess, dep: Deployment, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.name} did not finish in {timeout:.0f}s\n{dep.dump()}")
        time.sleep(0.2)
    return proc.wait()


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return data


def sigkill_owner(proc: ManagedProcess) -> list[int]:
    """SIGKILL the fedguard process alone (not its tree); return its tree as it was."""
    tree = process_tree(proc.pid)
    assert len(tree) >= 3, f"{proc.name} should own Flower processes: {tree}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return tree


def left_after(tree: list[int], timeout: float) -> list[int]:
    """The pids of ``tree`` still alive after ``timeout`` seconds (0 left is the target)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in tree if process_tree(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in tree if process_tree(p)]
