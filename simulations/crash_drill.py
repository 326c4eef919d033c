"""Crash drill: measure how a real deployment on 127.0.0.1 survives SIGKILL of its processes.

``python -m simulations.crash_drill [--out DIR] [--rounds N]`` provisions a federation of three
trainers, runs ``fedguard server`` and three ``fedguard client`` processes (TLS, SuperNode
authentication, the quick start's settings: vendored subset, CKKS, DP ε = 8, ``--min-clients 2``)
and:

1. SIGKILLs one ``fedguard client`` (the process alone) when its round-2 request arrives,
   counts the processes of its tree still alive 10 s later, restarts it and times restart ->
   connected and restart -> first reply sent;
2. SIGKILLs ``fedguard server`` (alone) once the checkpoint of round N-2 exists, counts its tree's
   survivors, restarts it with ``--resume`` and times kill -> first round line of the resumed
   run;
3. reports the rounds that missed the killed client, the summary's ``crash_recovery`` and the
   wall times, as JSON on stdout and in ``DIR/crash-drill.json``.

A benchmark, not a test: it takes a few minutes and prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from federation.processes import ManagedProcess, free_port, process_tree, stop_tree

__all__ = ["drill"]

_PASSPHRASE = "crash-drill-passphrase"


def _wait(what: str, check: Callable[[], object], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _said(proc: ManagedProcess, pattern: str) -> bool:
    return any(re.search(pattern, line) for line in list(proc.lines))


def _survivors(tree: list[int], wait: float) -> list[int]:
    time.sleep(wait)
    return [p for p in tree if process_tree(p)]


def drill(out: Path, rounds: int = 8) -> dict[str, Any]:
    """Run the drill in ``out`` and return what it measured (times in seconds)."""
    from crypto.ckks import Preset, SecretContext
    from crypto.keys import provision_federation

    secret = SecretContext.generate(Preset.SCREENING)
    keys = out / "keys"
    provision_federation(keys, 3, _PASSPHRASE, ckks_secret=secret.to_bytes(),
                         ckks_public=secret.public().to_bytes(), fingerprint=secret.fingerprint)
    port = free_port()
    env = {**os.environ, "FEDGUARD_PASSPHRASE": _PASSPHRASE, "FEDGUARD_TORCH_THREADS": "1"}
    procs: list[ManagedProcess] = []
    run = out / "run"

    def start(name: str, args: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, [sys.executable, "-m", "simulations.cli", *args], env=env,
                              log_path=out / f"{name}.out", cwd=out, new_session=True)
        procs.append(proc)
        return proc

    def server(name: str, *extra: str) -> ManagedProcess:
        return start(name, ["server", "--keys", str(keys / "server"), "--out", str(run),
                            "--port", str(port), *extra])

    def client(i: int, name: str) -> ManagedProcess:
        return start(name, ["client", "--keys", str(keys / f"trainer-{i}"), "--superlink",
                            f"127.0.0.1:{port}", "--partition-id", str(i), "--num-partitions",
                            "3", "--state-dir", str(out / f"state{i}")])

    result: dict[str, Any] = {"rounds": rounds, "clients": 3}
    t0 = time.monotonic()
    try:
        srv = server("server", "--rounds", str(rounds), "--min-clients", "2",
                     "--secure-aggregation", "ckks", "--dp-epsilon", "8", "--data-dir", "subset",
                     "--round-timeout", "120")
        clients = [client(i, f"client{i}") for i in range(3)]
        victim = clients[2]
        _wait("client 2's round-2 request",
              lambda: _said(victim, r"round 2 \(train\): request received"), 300)
        tree = process_tree(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        result["client_tree_size"] = len(tree)
        result["client_survivors_after_10s"] = len(_survivors(tree, 10.0))
        restarted = client(2, "client2-restarted")
        result["client_restart_to_connected_s"] = round(_wait(
            "the restarted client to connect",
            lambda: _said(restarted, r"connected to the SuperLink .* as node"), 120), 1)
        try:
            result["client_restart_to_first_reply_s"] = round(_wait(
                "the restarted client's first reply",
                lambda: _said(restarted, r"\(train\): reply sent"), 120)
                + result["client_restart_to_connected_s"], 1)
        except TimeoutError:
            result["client_restart_to_first_reply_s"] = None

        checkpoint = run / "checkpoints" / f"round-{max(rounds - 2, 2):04d}.npz"
        _wait(f"checkpoint {checkpoint.name}", checkpoint.exists, 300)
        tree = process_tree(srv.pid)
        killed = time.monotonic()
        os.kill(srv.pid, signal.SIGKILL)
        srv.wait()
        result["server_tree_size"] = len(tree)
        result["server_survivors_after_10s"] = len(_survivors(tree, 10.0))
        restarted_at = time.monotonic()
        resumed = server("server-resumed", "--resume")
        _wait("the resumed run's first round", lambda: _said(resumed, r"^round +\d+/"), 300)
        result["server_kill_to_first_resumed_round_s"] = round(time.monotonic() - killed, 1)
        result["server_resume_to_first_round_s"] = round(time.monotonic() - restarted_at, 1)
        _wait("the resumed run to end", lambda: resumed.poll() is not None, 600)
        result["server_exit_code"] = resumed.poll()
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        result["rounds_completed"] = summary["rounds_completed"]
        result["crash_recovery"] = summary.get("crash_recovery")
        rows = [json.loads(line) for line in
                (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        result["accepted_by_round"] = {str(r["round"]): len(r.get("accepted") or [])
                                       for r in rows if "event" not in r and not r.get("note")}
        result["final_accuracy"] = summary.get("final_accuracy")
        result["drill_wall_s"] = round(time.monotonic() - t0, 1)
    finally:
        for proc in procs:
            if proc.poll() is None or process_tree(proc.pid):
                stop_tree(proc.pid, 5.0)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.crash_drill")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: temp)")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="fedguard-drill-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = drill(out, args.rounds)
    text = json.dumps(result, indent=2)
    (out / "crash-drill.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
