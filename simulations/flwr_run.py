"""``flwr run`` that exits with the run's outcome: ``python -m simulations.flwr_run``.

Flower 1.42's ``flwr run`` returns as soon as the SuperLink has accepted the run, and
``flwr run --stream`` exits 0 when the log stream ends, whatever happened to the run. The
SuperLink does record the outcome: ``flwr ls --run-id ID --format json`` reports the status
``finished:completed``, ``finished:failed`` (the ServerApp or the simulation raised; the
details carry the message) or ``finished:stopped``. This command submits the run with
``flwr run --format json`` (for the run id), streams its logs with ``flwr log ID --stream``
(unless ``--no-stream``), waits for the status, prints it, and exits 0 only for
``finished:completed``:

* 0 — the run completed;
* 1 — the run failed or was stopped (the status details are printed on stderr);
* 2 — the run could not be submitted (``flwr run`` failed: its message is printed), or no
  final status within ``--timeout`` seconds.

Usage (the same arguments as ``flwr run``, a subset)::

    python -m simulations.flwr_run . [CONNECTION] --federation-config "num-supernodes=4" \\
        --run-config "num-server-rounds=3 dp-epsilon=3"
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_NOT_RUN", "main", "run_status"]

EXIT_FAILED = 1
"""Exit code of a run that Flower reports ``finished:failed`` or ``finished:stopped``."""
EXIT_NOT_RUN = 2
"""Exit code when the run was not submitted, or reached no final status in time."""


def _flwr() -> str:
    beside = Path(sys.executable).parent / "flwr"  # the venv's flwr, even when not on PATH
    return str(beside) if beside.exists() else (shutil.which("flwr") or "flwr")


def _json_payload(text: str) -> dict[str, Any]:
    """The JSON object ``flwr ... --format json`` printed (after any other output)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in flwr's output: {text.strip()[:300]!r}")
    payload = json.loads(text[start:])
    if not isinstance(payload, dict):
        raise ValueError("flwr's JSON output is not an object")
    return payload


def run_status(run_id: str, connection: str | None = None) -> tuple[str, str]:
    """``(status, details)`` of a run as the SuperLink reports it (``flwr ls --run-id``).

    ``status`` is ``pending``, ``starting``, ``running`` or ``finished:<completed|failed|
    stopped>``; ``details`` is Flower's text ("N/A" when there is none).
    """
    cmd = [_flwr(), "ls", "--run-id", run_id, *([connection] if connection else []),
           "--format", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    payload = _json_payload(res.stdout)
    if not payload.get("success") or not payload.get("runs"):
        raise RuntimeError(f"flwr ls --run-id {run_id}: "
                           f"{payload.get('error-message') or res.stderr.strip()[:300]}")
    row = payload["runs"][0]
    return str(row.get("status", "")), str(row.get("status-details", ""))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulations.flwr_run",
        description="flwr run, then wait for the run and exit with its outcome "
        "(0 completed, 1 failed or stopped, 2 not submitted or timed out).")
    p.add_argument("app", nargs="?", default=".", help="the Flower app (default: .)")
    p.add_argument("connection", nargs="?", default=None,
                   help="SuperLink connection name in $FLWR_HOME/config.toml (default: its default)")
    p.add_argument("--run-config", "-c", action="append", default=[], help="as for flwr run")
    p.add_argument("--federation-config", action="append", default=[], help="as for flwr run")
    p.add_argument("--federation", default=None, help="as for flwr run")
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="do not stream the run's logs while waiting")
    p.add_argument("--timeout", type=float, default=24 * 3600.0,
                   help="seconds to wait for the final status (default: a day)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between status queries")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Submit, follow and judge one run; return the exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    conn = [args.connection] if args.connection else []
    cmd = [_flwr(), "run", args.app, *conn, "--format", "json"]
    for value in args.run_config:
        cmd += ["--run-config", value]
    for value in args.federation_config:
        cmd += ["--federation-config", value]
    if args.federation:
        cmd += ["--federation", args.federation]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    try:
        payload = _json_payload(res.stdout)
    except ValueError:
        payload = {}
    if res.returncode != 0 or not payload.get("success") or not payload.get("run-id"):
        message = payload.get("error-message") or (res.stderr or res.stdout).strip()
        print(f"fedguard: flwr run did not start the run: {message}", file=sys.stderr)
        return EXIT_NOT_RUN
    run_id = str(payload["run-id"])
    print(f"fedguard: run {run_id} submitted", file=sys.stderr, flush=True)
    if args.stream:  # returns when the SuperLink has sent the finished run's last log line
        subprocess.run([_flwr(), "log", run_id, *conn, "--stream"], check=False,
                       stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + args.timeout
    while True:
        status, details = run_status(run_id, args.connection)
        if status.startswith("finished"):
            break
        if time.monotonic() > deadline:
            print(f"fedguard: run {run_id} still {status} after {args.timeout:g} s",
                  file=sys.stderr)
            return EXIT_NOT_RUN
        time.sleep(args.poll)
    if status == "finished:completed":
        print(f"fedguard: run {run_id} {status}", file=sys.stderr)
        return 0
    print(f"fedguard: run {run_id} {status}: {details}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
