"""Real processes on 127.0.0.1: ``fedguard server`` (SuperLink + run) and ``fedguard client``s.

Every process is started in a session of its own and stopped by process id, its whole tree
included, by the fixtures (also when a test fails). TLS and SuperNode authentication are on in
every test; data is the vendored subset; rounds are tiny (1 local epoch, batch 32).

* one deployment (port and clients, ``shared``) for the tests that need running clients:
  - three rounds with three clients, CKKS and DP, an impostor whose key is not registered
    and a duplicate of a live bundle (both refused, with their causes), one client started
    before the server (it retries and says so), and ``fedguard client`` SIGKILLed mid-round
    (the process alone): none of its processes is left, the round completes with the others,
    the loss is recorded, the restarted client keeps its privacy ledger and trains again in
    the very next round;
  - on the same clients (they reconnect to the next server by themselves): ``fedguard
    server`` SIGKILLed after round 1 leaves nothing; ``--resume`` continues from the
    checkpoint to the end and the summary counts the retrained round; then a ServerApp that
    fails is a non-zero exit;
* a server nobody connects to gives up after ``--client-wait``; a SuperLink killed alone is
  noticed and the command stops with a clear message.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.deploy import CLIENT_EXIT_REFUSED
from crypto.keys import provision_federation
from crypto.tls import make_supernode_auth_keypair
from federation.processes import ManagedProcess, free_port, process_tree, stop_tree

PASSPHRASE = "integration-test-passphrase"
SECURE = "ckks"  # provisioned keys: the server bundle's public context, sealed trainer secrets
COMMON = ["--data-dir", "subset", "--batch-size", "32", "--local-epochs", "1",
          "--partition", "iid", "--round-timeout", "120"]

if not sys.platform.startswith("linux"):  # pragma: no cover
    pytest.skip("process-tree handling reads /proc", allow_module_level=True)


def _ckks_material() -> tuple[bytes, bytes, str]:
    from crypto.ckks import Preset, SecretContext

    secret = SecretContext.generate(Preset.AGGREGATION)
    return secret.to_bytes(), secret.public().to_bytes(), secret.fingerprint


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned federation of three trainers, and an impostor with an unknown key."""
    root = tmp_path_factory.mktemp("keys") / "fed"
    secret, public, fingerprint = _ckks_material()
    provision_federation(root, 3, PASSPHRASE, ckks_secret=secret, ckks_public=public,
                         fingerprint=fingerprint)
    # The impostor: trainer-2's bundle (valid CA, sealed secret) with a fresh authentication
    # key that the server never registered.
    impostor = root.parent / "impostor"
    shutil.copytree(root / "trainer-2", impostor)
    private, pub = make_supernode_auth_keypair()
    for name, data in (("supernode-auth", private), ("supernode-auth.pub", pub + b"\n")):
        (impostor / name).chmod(0o600)
        (impostor / name).write_bytes(data)
    manifest = json.loads((impostor / "manifest.json").read_text())
    manifest["files"]["supernode-auth.pub"]["sha256"] = hashlib.sha256(pub + b"\n").hexdigest()
    (impostor / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


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
        time.sleep(0.5)
        return sorted(pid for pid in seen if process_tree(pid))

    def dump(self) -> str:
        return "\n".join(f"---- {p.name} (exit {p.poll()})\n" + "\n".join(p.tail(40))
                         for p in self.procs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[Deployment]:
    """One deployment (port, clients) for the tests that need running clients: starting three
    clients costs more than a round, and clients outliving a run is itself what they promise."""
    dep = Deployment(tmp_path_factory.mktemp("shared"), keys)
    try:
        yield dep
    finally:
        leftovers = dep.stop_all()
        assert leftovers == [], f"processes left running: {leftovers}"


@pytest.fixture
def deployment(tmp_path: Path, keys: Path) -> Iterator[Deployment]:
    dep = Deployment(tmp_path, keys)
    try:
        yield dep
    finally:
        leftovers = dep.stop_all()
        assert leftovers == [], f"processes left running: {leftovers}"


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


def _sigkill_owner(proc: ManagedProcess, dep: Deployment) -> list[int]:
    """SIGKILL the fedguard process alone (not its tree); return its tree as it was."""
    tree = process_tree(proc.pid)
    assert len(tree) >= 3, f"{proc.name} should own Flower processes: {tree}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return tree


def _left_after(tree: list[int], timeout: float) -> list[int]:
    """The pids of ``tree`` still alive after ``timeout`` seconds (0 left is the target)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in tree if process_tree(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in tree if process_tree(p)]


def test_three_rounds_tls_auth_ckks_dp_refusals_and_a_client_crash(
        shared: Deployment, keys: Path) -> None:
    """One deployment, every client-side check: retries before the server is up, an unknown
    key and a duplicate refused with their causes, and a client SIGKILLed mid-round that leaves
    nothing behind, is restarted, keeps its ledger and trains again in the very next round."""
    dep = shared
    # A client that starts before the server: it retries with backoff and says so.
    early = dep.client(0)
    wait_for("the early client to report the unreachable SuperLink",
             lambda: said(early, r"cannot reach the SuperLink .* retrying in"), 60, dep)
    server = dep.server("--rounds", "3", "--clients", "3", "--min-clients", "2",
                        "--dp-epsilon", "8", "--secure-aggregation", SECURE, *COMMON)
    wait_for("the SuperLink", lambda: said(server, r"SuperLink listening on https://"), 60, dep)
    dep.client(1)
    victim = dep.client(2)
    impostor = dep.client(2, "--refused-retries", "0", bundle=keys.parent / "impostor",
                          name="impostor", state="state-impostor")
    # The same bundle twice: trainer-0's key while trainer-0 is online is refused, and the
    # server says why (the client cannot tell: Flower refuses both causes alike).
    wait_for("the run to start", lambda: said(server, r"run \d+ started"), 180, dep)
    duplicate = dep.client(0, "--refused-retries", "0", name="duplicate", state="state-dup")

    wait_for("client 2 to start round 2",
             lambda: said(victim, r"round 2 \(train\): request received"), 180, dep)
    tree = _sigkill_owner(victim, dep)  # a crash of `fedguard client` itself
    assert _left_after(tree, 10.0) == [], "the killed client's SuperNode or launcher lived on"
    started = time.monotonic()
    restarted = dep.client(2, name="client2-restarted")
    wait_for("the restarted client to rejoin",
             lambda: said(restarted, r"connected to the SuperLink .* as node"), 60, dep)
    rejoin = time.monotonic() - started
    # The target (<= 20 s) is measured by simulations/crash_drill.py; on a loaded CI machine a
    # restart has taken up to 37 s.
    assert rejoin <= 60, f"restart -> rejoin took {rejoin:.1f}s\n{dep.dump()}"
    assert finish(server, dep, 300) == 0, dep.dump()
    assert finish(duplicate, dep, 60) == CLIENT_EXIT_REFUSED, dep.dump()
    assert said(duplicate, r"another fedguard client with this bundle is online")
    assert said(server, r"refused a second SuperNode for node \d+: that node is still online")
    assert said(server, r"refused a SuperNode whose key is not registered")
    # The impostor holds the CA and a sealed secret, but its key is unknown: refused.
    assert finish(impostor, dep, 60) == CLIENT_EXIT_REFUSED, dep.dump()
    assert said(impostor, r"refused by the SuperLink .* not registered")

    s = summary(dep.run_dir)
    assert s["rounds_completed"] == 3 and not s["stopped_early"], s
    assert s["secure_aggregation"] == SECURE
    rows = {r["round"]: r for r in metrics(dep.run_dir)}
    assert sorted(rows) == [1, 2, 3]
    assert len(rows[1]["accepted"]) == 3 and not rows[1]["refused"]
    (node, why), = rows[2]["refused"].items()  # the crash cost that client round 2 ...
    assert why.startswith("lost") and len(rows[2]["accepted"]) == 2, rows[2]
    assert len(rows[3]["accepted"]) == 3, rows[3]  # ... and nothing more: back in round 3
    assert all(r["max_epsilon"] is not None and 0 < r["max_epsilon"] <= 8 for r in rows.values())
    # Every round a client missed is in the summary, with the client, and only those.
    assert s["crash_recovery"]["rounds_missing_clients"] == {"2": {node: why}}, s
    assert s["crash_recovery"]["rounds_missed_by_client"] == {node: 1}, s
    assert said(server, r"round +1/3 .*accepted 3/3") and said(server, r"round +3/3 .*accepted 3/3")
    events = [line for line in server.lines if f"client node {node} " in line]
    assert sum(" connected " in line for line in events) == 2, events  # it came back
    assert said(early, r"privacy ledger: .*\(0 event\(s\)")
    assert said(early, r"round 1 \(train\): request received")
    for i in range(2):
        ledger = (dep.base / f"state{i}" / "privacy-ledger.jsonl").read_text().splitlines()
        assert len(ledger) == 1 + 3, f"client {i}: header + one event per round"
    # The restarted client read the ledger its predecessor wrote, and added to it.
    assert said(restarted, r"privacy ledger: .*\(([12]) event\(s\)")
    ledger = (dep.base / "state2" / "privacy-ledger.jsonl").read_text().splitlines()
    assert len(ledger) >= 1 + 2, "rounds 1 and 3 (and 2 if it was recorded before the kill)"


def test_server_sigkilled_resumes_to_the_end_and_a_failing_serverapp_is_nonzero(
        shared: Deployment) -> None:
    """On the same clients: a SIGKILLed server leaves nothing and ``--resume`` completes the
    run; then a ServerApp that fails (``flwr run --stream`` exits 0 then) is exit code 1."""
    import io

    import numpy as np

    from federation.config import from_flat, to_flat

    dep = shared
    dep.run_dir = dep.base / "run-resume"
    # dp-noise, not dp-epsilon: a round cut short by the kill is retrained after the resume and
    # (correctly) counted twice by the clients' ledgers, which a budget calibrated for exactly
    # the planned rounds would not allow.
    args = ["--rounds", "2", "--clients", "3", "--dp-noise", "1.0", *COMMON]
    dep.stop_servers()
    first = dep.server(*args, name="server-b")
    dep.ensure_clients()
    checkpoint = dep.run_dir / "checkpoints" / "round-0001.npz"
    wait_for("the round-1 checkpoint", checkpoint.exists, 240, dep)
    tree = _sigkill_owner(first, dep)  # SuperLink, SuperExec, ServerApp, flwr run must follow
    assert _left_after(tree, 10.0) == [], "the killed server's Flower processes lived on"
    assert not (dep.run_dir / "summary.json").exists()

    second = dep.server("--resume", name="server-resumed")
    assert finish(second, dep, 240) == 0, dep.dump()
    assert said(second, r"resuming from round-0001\.npz")
    s = summary(dep.run_dir)
    assert s["rounds_completed"] == 2 and not s["stopped_early"], s
    assert s["crash_recovery"]["server_restarts"] == 1
    assert s["crash_recovery"]["rounds_retrained"] == [2]
    assert any(r.get("event") == "server-restart" for r in metrics(dep.run_dir))
    assert (dep.run_dir / "checkpoints" / "round-0002.npz").exists()
    assert said(second, r"round +2/2 .*accepted 3/3"), dep.dump()

    # A readable checkpoint (so the early check passes) whose model has the wrong shape: the
    # ServerApp fails when it restores it.
    dep.run_dir = dep.base / "run-failing"
    flat = to_flat(from_flat({"num-server-rounds": 2, "num-clients": 3, "data-dir": "subset",
                              "out-dir": str(dep.run_dir)}))
    (dep.run_dir / "checkpoints").mkdir(parents=True)
    (dep.run_dir / "config.json").write_text(json.dumps({"flat": flat}))
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"round": np.array(1), "global": np.zeros(3, dtype=np.float32)}
    np.savez(buf, **arrays)
    (dep.run_dir / "checkpoints" / "round-0001.npz").write_bytes(buf.getvalue())
    # The clients reconnect by themselves (backoff up to 20 s); the run starts once all three
    # are back, or after --client-wait with those that are.
    failing = dep.server("--resume", "--client-wait", "60", name="server-failing")
    assert finish(failing, dep, 240) == 1, dep.dump()
    assert said(failing, r"ended as finished:failed"), dep.dump()


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
