"""Crash drill: measure how a real deployment on 127.0.0.1 survives SIGKILL of its processes.

``python -m simulations.crash_drill [--out DIR] [--rounds N]`` provisions a federation of three
trainers, runs ``fedguard server`` and three ``fedguard client`` processes (TLS, SuperNode
authentication, the quick start's settings: vendored subset, CKKS, DP ε = 8, ``--min-clients 2``)
and:

1. SIGKILLs one ``fedguard client`` (the process alone) when its round-2 request arrives,
   waits (at most 10 s) until no process of its tree is alive and counts what is left,
   restarts it and times, from the restart, each step to its first reply (bundle unsealed,
   SuperNode started, connected, ClientApp launcher ready, first request, first reply);
2. SIGKILLs ``fedguard server`` (alone) once the checkpoint of round max(N-2, 3) exists, counts
   its tree's survivors, restarts it with ``--resume`` and times kill -> first round line of
   the resumed run;
3. reports the rounds that missed the killed client, the summary's ``crash_recovery``, the
   time the server crash cost and the processes left, as JSON on stdout and in
   ``DIR/crash-drill.json``.

A benchmark, not a test: it takes a few minutes and prints what it measured.
"""

from __future__ import annotations

import argparse
import itertools
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

__all__ = ["drill", "rounds_missed"]

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


def _sigkill_and_count(proc: ManagedProcess, result: dict[str, Any], who: str) -> None:
    """SIGKILL ``proc`` and record its tree's size, how fast it went and what survived."""
    tree = process_tree(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result[f"{who}_tree_size"] = len(tree)
    result[f"{who}_tree_gone_after_s"], left = _gone_within(tree, 10.0)
    result[f"{who}_survivors"] = len(left)


def _gone_within(tree: list[int], timeout: float) -> tuple[float, list[int]]:
    """Seconds until no pid of ``tree`` is alive (at most ``timeout``), and the pids left."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not [p for p in tree if process_tree(p)]:
            break
        time.sleep(0.1)
    return round(time.monotonic() - start, 1), [p for p in tree if process_tree(p)]


def _stamped(path: Path) -> list[tuple[float, str]]:
    """(Unix time, line) of every line of a :class:`ManagedProcess` log."""
    out: list[tuple[float, str]] = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stamp, _, line = raw.partition(" ")
        try:
            out.append((float(stamp), line))
        except ValueError:
            continue
    return out


def _first(lines: list[tuple[float, str]], pattern: str, after: float = 0.0) -> float | None:
    return next((t for t, line in lines if t >= after and re.search(pattern, line)), None)


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 1)


def rounds_missed(rows: list[dict[str, Any]], label: str) -> list[int]:
    """The rounds of ``metrics.jsonl`` rows whose accepted updates do not include ``label``'s.

    By the client's label (``client-<partition>``), not its node id: a resumed server starts a
    new SuperLink, where the same key may get another node id.
    """
    missed = set()
    for r in rows:
        names = r.get("clients") or {}
        if label not in {names.get(str(n)) for n in r.get("accepted") or []}:
            missed.add(int(r["round"]))
    return sorted(missed)


def drill(out: Path, rounds: int = 8) -> dict[str, Any]:
    """Run the drill in ``out`` and return what it measured (times in seconds).

    The keys that answer the targets of issue 15: ``processes_left`` (after SIGKILL of each
    command), ``client_restart_to_rejoin_s`` (restart of the killed client -> its SuperNode
    connected), ``client_rounds_missed`` (rounds of the run without its update, the round it
    died in included), ``server_time_lost_s`` (kill of the server -> the resumed run's first
    round line, minus one round's time before the kill: what the crash cost beyond the round
    it interrupted). ``client_timeline_s`` shows where the restart's time goes.
    """
    from crypto.ckks import Preset, SecretContext
    from crypto.keys import provision_federation

    secret = SecretContext.generate(Preset.AGGREGATION)
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
        result["client_node"] = next(m.group(1) for line in victim.lines
                                     if (m := re.search(r"as node (\d+)", line)))
        killed_at = time.time()
        _sigkill_and_count(victim, result, "client")
        restarted_at = time.time()
        restarted = client(2, "client2-restarted")
        _wait("the restarted client to connect",
              lambda: _said(restarted, r"connected to the SuperLink .* as node"), 120)
        try:
            _wait("the restarted client's first reply",
                  lambda: _said(restarted, r"\(train\): reply sent"), 300)
        except TimeoutError:
            pass
        lines = _stamped(out / "client2-restarted.out")
        result["client_restart_to_rejoin_s"] = _since(
            _first(lines, r"connected to the SuperLink .* as node"), restarted_at)
        result["client_timeline_s"] = {  # from the restart
            "killed": round(killed_at - restarted_at, 1),
            "bundle unsealed": _since(_first(lines, r"^trainer bundle:"), restarted_at),
            "SuperNode started": _since(_first(lines, r"^SuperNode: ClientApp I/O"), restarted_at),
            "connected": result["client_restart_to_rejoin_s"],
            "ClientApp launcher ready": _since(_first(lines, r"launcher ready"), restarted_at),
            "first request": _since(_first(lines, r"request received"), restarted_at),
            "first reply": _since(_first(lines, r"\(train\): reply sent"), restarted_at),
        }
        result["client_waits_said"] = [line for _t, line in lines
                                       if re.search(r"waiting|releases that node|released", line)]

        checkpoint = run / "checkpoints" / f"round-{max(rounds - 2, 3):04d}.npz"
        _wait(f"checkpoint {checkpoint.name}", checkpoint.exists, 600)
        before = _stamped(out / "server.out")
        round_lines = [t for t, line in before if re.match(r"round +\d+/", line)]
        gaps = sorted(b - a for a, b in itertools.pairwise(round_lines))
        result["round_seconds_median"] = round(gaps[len(gaps) // 2], 1) if gaps else None
        killed = time.monotonic()
        _sigkill_and_count(srv, result, "server")
        result["processes_left"] = result["client_survivors"] + result["server_survivors"]
        restarted_server = time.monotonic()
        resumed = server("server-resumed", "--resume")
        _wait("the resumed run's first round", lambda: _said(resumed, r"^round +\d+/"), 600)
        result["server_kill_to_first_resumed_round_s"] = round(time.monotonic() - killed, 1)
        result["server_resume_to_first_round_s"] = round(time.monotonic() - restarted_server, 1)
        if result["round_seconds_median"] is not None:
            result["server_time_lost_s"] = round(
                result["server_kill_to_first_resumed_round_s"] - result["round_seconds_median"],
                1)
        _wait("the resumed run to end", lambda: resumed.poll() is not None, 900)
        result["server_exit_code"] = resumed.poll()
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        result["rounds_completed"] = summary["rounds_completed"]
        result["crash_recovery"] = summary.get("crash_recovery")
        rows = [json.loads(line) for line in
                (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        trained = list({r["round"]: r for r in rows if "event" not in r and not str(
            r.get("note", "")).startswith(("evaluated after", "lost to a server"))}.values())
        result["accepted_by_round"] = {str(r["round"]): len(r.get("accepted") or [])
                                       for r in trained}
        result["client_rounds_missed"] = rounds_missed(trained, "client-2")
        result["client_rounds_missed_count"] = len(result["client_rounds_missed"])
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
