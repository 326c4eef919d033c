"""``fedguard server``: the SuperLink side of a real deployment (the coordinator role's launcher).

Why here: DESIGN §2 puts each role's real-process launcher with that role. This module starts
and owns the server side's processes; the ServerApp it submits is :mod:`server.app`. It imports
no ``clients`` code; the process rules it shares with the client launcher are in
:mod:`federation.processes`, every private Flower touch in :mod:`federation.flower_internals`.

What runs::

    fedguard server ─┬─ flower-superlink  TLS + SuperNode authentication, one HTTPS port
                     │     └─ flower-superexec ── flwr-serverapp   (server.app:app, per run)
                     ├─ flwr supernode register KEY.pub   (every provisioned key, one interpreter)
                     └─ flwr run <staged app> --stream    (waits for the run; then flwr ls)

``FLWR_HOME`` is ``RUNDIR/.flwr``, so nothing touches the user's ``~/.flwr``. Every child gets
the parent-death signal and Flower's helpers watch their parent, so a killed ``fedguard
server`` takes the SuperLink, SuperExec and ServerApp with it; ``RUNDIR/.flwr/server.pid``
lets the next ``fedguard server`` on the same run folder stop anything that survived.

Failure handling (each with its exit code, :data:`EXIT_CODES`):

* everything that can be checked before the SuperLink starts is checked first (bundle, data
  directory, run folder, port — naming the flag and, for a busy port, the process holding it);
* the run is submitted once at least one client is connected; none within ``--client-wait``
  seconds ends the command with a message naming the flag, not a traceback;
* the SuperLink dying alone is noticed within a second: the command stops the run, says what
  happened and how to resume;
* ``flwr run --stream`` exits 0 even when the ServerApp crashed, so the final status comes from
  ``flwr ls --run-id ID --format json``; anything but ``finished:completed`` is a failure;
* rounds lost to crashes are added to ``summary.json`` (``crash_recovery``) and each resume
  writes a ``{"event": "resume", ...}`` line to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.flower_internals import SUPERLINK_PATTERNS, features_off
from federation.processes import (
    DeployError,
    Incarnation,
    ManagedProcess,
    flower_bin,
    flower_env,
    port_free,
    port_holders,
)
from server.progress import MAX_PULL_WAIT

__all__ = [
    "APP_PACKAGES",
    "CONNECTION",
    "EXIT_CODES",
    "SERVER_EXIT_FAILED",
    "SERVER_EXIT_NO_CLIENTS",
    "SERVER_EXIT_SUPERLINK",
    "ServerOptions",
    "annotate_summary",
    "follow_metrics",
    "project_dir",
    "serve",
    "stage_app",
]

Say = Callable[[str], None]

SERVER_EXIT_FAILED = 1
"""``fedguard server``: the ServerApp failed (or the run ended in any way but completed)."""
SERVER_EXIT_SUPERLINK = 3
"""``fedguard server``: the SuperLink could not start or died."""
SERVER_EXIT_NO_CLIENTS = 4
"""``fedguard server``: no client connected within ``--client-wait`` seconds."""
EXIT_CODES = {0: "completed", SERVER_EXIT_FAILED: "ServerApp failed or stopped early",
              2: "usage or configuration error", SERVER_EXIT_SUPERLINK: "SuperLink failed",
              SERVER_EXIT_NO_CLIENTS: "no client connected", 130: "interrupted"}
"""Every exit code of ``fedguard server`` and its meaning (docs/deployment.md lists them)."""

CONNECTION = "fedguard"  # name of the SuperLink connection in $FLWR_HOME/config.toml
APP_PACKAGES = ("federation", "clients", "server", "crypto")  # what the ServerApp/ClientApp import
_APP_SUFFIXES = {".py", ".toml", ".md", ".json", ".yaml", ".yml"}


# --------------------------------------------------------------------------- environment


def project_dir() -> Path:
    """The Flower app's project directory: the one holding fedguard's ``pyproject.toml``.

    Found next to the installed packages (an editable install or a source checkout).

    Raises
    ------
    DeployError
        If there is no ``pyproject.toml`` with a ``[tool.flwr.app]`` table there.
    """
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app" not in pyproject.read_text(encoding="utf-8"):
        raise DeployError(
            f"no Flower app project (pyproject.toml with [tool.flwr.app]) in {root}; "
            "install fedguard from a source checkout (pip install -e .)"
        )
    return root


def stage_app(source: Path, dest: Path) -> Path:
    """Copy what the Flower app bundle needs into ``dest`` and return it.

    Only ``pyproject.toml`` and the source files of the packages the ServerApp and ClientApp
    import (:data:`APP_PACKAGES`) are copied, never tests, data or virtual environments.
    ``flwr run`` on the project root would read the whole tree, ``.venv`` included, which took
    3.4 s here; on the staged copy it takes a few milliseconds. Unchanged sources give a
    byte-identical bundle, so a resumed run ships the same app.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(source / "pyproject.toml", dest / "pyproject.toml")
    for package in APP_PACKAGES:
        for path in sorted((source / package).rglob("*")):
            rel = path.relative_to(source)
            if (not path.is_file() or path.suffix not in _APP_SUFFIXES
                    or "__pycache__" in rel.parts):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
    return dest


def _connect_host(host: str) -> str:
    """Where local tools reach a server bound to ``host`` (the certificate names 127.0.0.1)."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return _toml_str(value)


def write_connection(flwr_home: Path, address: str, ca_cert: Path) -> None:
    """``$FLWR_HOME/config.toml`` with one TLS connection named :data:`CONNECTION`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f"[superlink]\ndefault = {_toml_str(CONNECTION)}\n\n"
        f"[superlink.{CONNECTION}]\naddress = {_toml_str(address)}\n"
        f"root-certificates = {_toml_str(str(ca_cert))}\n",
        encoding="utf-8",
    )


def _flwr(args: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` and return the parsed JSON (``success`` says how it went)."""
    res = subprocess.run(
        [flower_bin("flwr"), *args, "--format", "json"], env=dict(env), capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )
    data = _parse_json_object(res.stdout)
    if "success" not in data:
        data = {"success": False, "error-message": (res.stdout + res.stderr).strip()[-2000:]}
    return data


# ---------------------------------------------------------------------------------- server


@dataclass
class ServerOptions:
    """What ``fedguard server`` was asked to do.

    ``flat`` is the run config (flat keys of :mod:`federation.config`, already validated);
    ``out-dir`` in it must be absolute. ``client_wait`` is in seconds: how long the SuperLink
    waits for the first client before the command gives up (the run is submitted once every
    expected client is connected, or at the end of that wait if at least one is).
    """

    keys: Path
    out_dir: Path
    flat: dict[str, bool | int | float | str]
    host: str = "127.0.0.1"
    port: int = 9092
    resume: bool = False
    grid_poll: float = MAX_PULL_WAIT
    client_wait: float = 300.0
    new_session: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def _metric_rows(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` from byte ``offset``; the offset after the last one."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    rows: list[dict[str, Any]] = []
    for raw in data[:end].splitlines():
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, offset + end


def follow_metrics(path: Path, total: int) -> Callable[[], Iterator[str]]:
    """A poller of ``metrics.jsonl``: each call yields the progress lines of new round rows.

    It starts at the end of the file (a resumed run's old rows are not repeated), skips a
    last line still being written, and formats rows as simulations do
    (:func:`server.report.format_round`, with the clients not counted and phase timings).
    Event rows (``"event"``: a resume) are not rounds and are skipped.
    """
    from server.report import format_round

    offset = path.stat().st_size if path.exists() else 0

    def poll() -> Iterator[str]:
        nonlocal offset
        rows, offset = _metric_rows(path, offset)
        for row in rows:
            if "event" in row:
                continue
            if row.get("note"):  # not a round: a resumed run's evaluation of an earlier one
                acc, loss = row.get("accuracy"), row.get("loss")
                yield (f"round {row.get('round'):>3}/{total}  "
                       + (f"acc {acc:.4f}  " if isinstance(acc, float) else "")
                       + (f"loss {loss:.4f}  " if isinstance(loss, float) else "")
                       + f"({row['note']})")
                continue
            yield format_round(row, total, detail=True)

    return poll


def _newest_checkpoint(out_dir: Path) -> Path | None:
    from server.report import checkpoint_files

    files = checkpoint_files(out_dir)
    return files[-1] if files else None


def _checkpoint_round(path: Path) -> int:
    m = re.search(r"round-(\d+)", path.name)
    return int(m.group(1)) if m else 0


def _record_resume(out_dir: Path, after: int, total: int) -> None:
    """A ``metrics.jsonl`` line saying that round ``after + 1`` was lost to a server crash.

    It carries ``note`` so that :meth:`server.report.RunWriter.rows` lets the retrained
    round's own line replace it.
    """
    if after >= total:
        return
    line = {"round": after + 1, "note": "lost to a server crash; trained again after --resume",
            "event": "server-restart", "resumed_after": after, "time": round(time.time(), 3)}
    with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def annotate_summary(out_dir: Path) -> dict[str, Any] | None:
    """Add ``crash_recovery`` to ``summary.json`` from ``metrics.jsonl``; return the summary.

    ``crash_recovery`` = ``{"server_restarts": N, "rounds_retrained": [r, ...],
    "rounds_missing_clients": {"r": {"node": "why", ...}}, "rounds_missed_by_client":
    {"node": n}}``: the rounds a server crash cost (trained again after ``--resume``), per
    round the clients whose update was lost (a crashed, restarting or unreachable client:
    reason starting with ``lost``, e.g. ``lost: offline: not connected during the round``),
    and how many rounds each of them missed. None without a summary.
    """
    from server.report import atomic_write

    path = out_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows, _ = _metric_rows(out_dir / "metrics.jsonl", 0)
    restarts = [r for r in rows if r.get("event") == "server-restart"]
    missing: dict[str, dict[str, str]] = {}
    for r in rows:
        refused = r.get("refused") or {}
        lost = {str(k): str(v) for k, v in refused.items() if str(v).startswith("lost")}
        if lost and "event" not in r:
            missing.setdefault(str(r.get("round")), {}).update(lost)
    missed: dict[str, int] = {}
    for lost_in_round in missing.values():
        for node in lost_in_round:
            missed[node] = missed.get(node, 0) + 1
    summary["crash_recovery"] = {
        "server_restarts": len(restarts),
        "rounds_retrained": sorted({int(r["round"]) for r in restarts}),
        "rounds_missing_clients": missing,
        "rounds_missed_by_client": dict(sorted(missed.items())),
    }
    atomic_write(path, (json.dumps(summary, indent=2) + "\n").encode())
    return dict(summary)


def _check_before_start(opts: ServerOptions) -> None:
    """What can fail without a SuperLink, checked before one starts (each names its flag).

    Raises
    ------
    DeployError
        A data directory that does not load, a run folder that is a file, a busy port.
    """
    from federation.data import load_fashion_mnist
    from federation.errors import FedguardError

    data_dir = opts.flat.get("data-dir")
    if isinstance(data_dir, str) and data_dir:
        try:
            load_fashion_mnist(data_dir)
        except FedguardError as exc:
            raise DeployError(f"--data-dir {data_dir}: {exc}") from None
    if opts.out_dir.exists() and not opts.out_dir.is_dir():
        raise DeployError(f"--out {opts.out_dir} is a file, not a folder")
    if not port_free(opts.host, opts.port):
        holders = port_holders(opts.port)
        raise DeployError(
            f"--port {opts.port} on {opts.host} is in use"
            + (f" by {'; '.join(holders)}" if holders else " (by another user's process)")
            + "; stop it or choose another --port")


def serve(opts: ServerOptions, say: Say) -> int:
    """Run ``fedguard server``: SuperLink, key registration, one run, progress; return exit code.

    Returns 0 when the run finished as completed, :data:`SERVER_EXIT_FAILED` when the ServerApp
    failed, :data:`SERVER_EXIT_SUPERLINK` when the SuperLink could not start or died,
    :data:`SERVER_EXIT_NO_CLIENTS` when no client connected within ``opts.client_wait``.

    Raises
    ------
    DeployError
        Bad bundle, data directory or run folder, port in use, another live server on the run
        folder, a run that could not be submitted, nothing to resume.
    """
    from crypto.keys import load_server_bundle
    from crypto.tls import certificate_fingerprint
    from federation.errors import FedguardError

    try:
        bundle = load_server_bundle(opts.keys)
    except FedguardError as exc:
        raise DeployError(f"--keys {opts.keys}: {exc}") from None
    out_dir = opts.out_dir
    resume_after = 0
    if opts.resume:
        ckpt = _newest_checkpoint(out_dir)
        if ckpt is None:
            raise DeployError(f"--resume: no checkpoint in {out_dir / 'checkpoints'}")
        resume_after = _checkpoint_round(ckpt)
        from server.report import load_checkpoint

        try:  # fail early: an unreadable checkpoint would only fail inside the ServerApp
            state = load_checkpoint(out_dir)
        except Exception as exc:  # noqa: BLE001 - numpy/zipfile raise many kinds; all mean "bad file"
            raise DeployError(f"--resume: {ckpt} cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); remove it to resume from the one before"
                              ) from None
        if state is None or "round" not in state:
            raise DeployError(f"--resume: {ckpt} is not a fedguard checkpoint (no round)")
    home = out_dir / ".flwr"
    owner = Incarnation(home / "server.pid", "fedguard server", "use another --out")
    owner.claim(say)  # before the port check: a dead predecessor's SuperLink may hold it
    try:
        _check_before_start(opts)
        for note in features_off():
            say(f"Flower internals: {note} — off on this Flower version")
        ca_fp = certificate_fingerprint(bundle.ca_cert_path.read_bytes())
        say(f"server bundle: {bundle.directory} (federation {bundle.federation!r}, "
            f"{bundle.trainers} trainer key(s), CA {ca_fp[:23]}…, CKKS key "
            f"{bundle.ckks_fingerprint})")
        say(f"run folder: {out_dir}")
        if opts.resume:
            say(f"resuming from round-{resume_after:04d}.npz (the run continues with round "
                f"{resume_after + 1})")
        return _serve(opts, bundle, home, owner, resume_after, say)
    finally:
        owner.release()


def _serve(opts: ServerOptions, bundle: Any, home: Path, owner: Incarnation,
           resume_after: int, say: Say) -> int:
    from server.app import GRID_POLL_ENV

    env = flower_env(home, {GRID_POLL_ENV: str(opts.grid_poll), **opts.extra_env})
    address = _address(_connect_host(opts.host), opts.port)
    write_connection(home, address, bundle.ca_cert_path)
    online: set[str] = set()
    registering = True  # until the provisioned keys are registered, every key is unknown
    activated, deactivated = SUPERLINK_PATTERNS["activated"][0], SUPERLINK_PATTERNS["deactivated"][0]
    unknown = SUPERLINK_PATTERNS["refused-unknown-key"][0]
    duplicate = SUPERLINK_PATTERNS["refused-online"][0]

    def on_superlink(line: str) -> None:
        if m := activated.search(line):
            online.add(m.group(1))
            say(f"client node {m.group(1)} connected ({len(online)} online)")
        elif m := deactivated.search(line):
            online.discard(m.group(1))
            say(f"client node {m.group(1)} left ({len(online)} online)")
        elif unknown.search(line):
            say("refused a SuperNode whose key is not registered yet (it retries)"
                if registering else "refused a SuperNode whose key is not registered (not "
                f"one of the {bundle.trainers} trainer keys in --keys)")
        elif m := duplicate.search(line):
            say(f"refused a second SuperNode for node {m.group(1)}: that node is still online "
                "(one trainer bundle used by two clients, or a client restarted within two "
                "heartbeats of a crash that left its SuperNode no time to leave)")

    superlink = ManagedProcess(
        "superlink",
        [flower_bin("flower-superlink"),
         "--ssl-ca-certfile", str(bundle.ca_cert_path),
         "--ssl-certfile", str(bundle.server_cert_path),
         "--ssl-keyfile", str(bundle.server_key_path),
         "--enable-supernode-auth",
         "--disable-runtime-dependency-installation",
         "--host", opts.host, "--port", str(opts.port)],
        env=env, log_path=home / "superlink.log", on_line=on_superlink,
        new_session=opts.new_session,
    )
    owner.refresh(force=True)
    stream: ManagedProcess | None = None
    registration = _start_registration(bundle.supernode_public_key_paths, address, env)
    try:
        if not _wait_listening(superlink, _connect_host(opts.host), opts.port, 60.0):
            say("the SuperLink did not start; its last lines:")
            for line in superlink.tail(15):
                say("  " + line)
            return SERVER_EXIT_SUPERLINK
        say(f"SuperLink listening on https://{_address(opts.host, opts.port)} "
            f"(TLS, SuperNode authentication on; log {home / 'superlink.log'})")
        _finish_registration(registration, bundle.supernode_public_key_paths, say)
        registering = False

        app_dir = stage_app(project_dir(), home / "app" / "fedguard")
        config_file = home / "run-config.toml"
        flat = {**opts.flat, "resume": opts.resume}
        config_file.write_text(
            "".join(f"{k} = {_toml_value(v)}\n" for k, v in flat.items()), encoding="utf-8")
        say(f"app: {app_dir} (server.app:app, clients.app:app); run config: {config_file}")
        wanted = int(opts.flat.get("num-clients", 1))
        code = _wait_for_clients(opts, superlink, online, wanted, owner, say)
        if code is not None:
            return code
        if opts.resume:
            _record_resume(opts.out_dir, resume_after, int(opts.flat.get("num-server-rounds", 0)))
        run_id: list[int] = []
        started = SUPERLINK_PATTERNS["run-started"][0]

        def on_stream(line: str) -> None:
            m = started.search(line)
            if m and not run_id:
                run_id.append(int(m.group(1)))

        stream = ManagedProcess(
            "flwr-run", [flower_bin("flwr"), "run", str(app_dir), CONNECTION,
                         "--run-config", str(config_file), "--stream"],
            env=env, log_path=home / "serverapp.log", on_line=on_stream,
            new_session=opts.new_session,
        )
        return _follow_run(opts, superlink, stream, run_id, env, owner, say)
    finally:
        if registration.poll() is None:
            registration.kill()
            registration.communicate()
        if stream is not None:
            stream.stop(grace=3.0)
        superlink.stop(grace=10.0)


def _superlink_died(superlink: ManagedProcess, opts: ServerOptions, say: Say) -> int:
    say(f"the SuperLink (pid {superlink.pid}) exited unexpectedly with code {superlink.poll()}; "
        "the run is stopped. Its last lines:")
    for line in superlink.tail(8):
        say("  " + line)
    ckpt = _newest_checkpoint(opts.out_dir)
    say("restart with the same --keys and --out and add --resume to continue from "
        + (ckpt.name if ckpt else "the start (no checkpoint yet: without --resume)"))
    return SERVER_EXIT_SUPERLINK


def _wait_for_clients(opts: ServerOptions, superlink: ManagedProcess, online: set[str],
                      wanted: int, owner: Incarnation, say: Say) -> int | None:
    """Wait until ``wanted`` clients are online, or ``client_wait`` s with at least one."""
    if len(online) < wanted:
        say(f"waiting for {wanted} client(s) to connect (at most {opts.client_wait:.0f}s, "
            "--client-wait)")
    deadline = time.monotonic() + opts.client_wait
    while len(online) < wanted:
        if superlink.poll() is not None:
            return _superlink_died(superlink, opts, say)
        if time.monotonic() >= deadline:
            if online:
                say(f"{len(online)} of {wanted} client(s) connected after {opts.client_wait:.0f}s"
                    " (--client-wait); starting the run with them")
                return None
            say(f"no client connected within {opts.client_wait:.0f}s (--client-wait): start "
                f"`fedguard client --keys KEYS/trainer-<i> --superlink "
                f"{_address(_connect_host(opts.host), opts.port)}` on each trainer, or raise "
                "--client-wait")
            return SERVER_EXIT_NO_CLIENTS
        owner.refresh()
        time.sleep(0.2)
    return None


def _wait_listening(proc: ManagedProcess, host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:  # the port was free before the SuperLink started: whoever listens now is it
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


# Registration runs in its own interpreter, started with the SuperLink so that it registers the
# moment the port listens (until then the SuperLink refuses the nodes it has not seen). The
# Flower-specific part is federation.flower_internals.register_keys.
_REGISTER_SCRIPT = """
import socket, sys, time
from federation.flower_internals import register_keys
host, port = sys.argv[2].rsplit(":", 1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
register_keys(sys.argv[1], sys.argv[3:], lambda line: print(line, flush=True))
"""


def _parse_json_object(text: str) -> dict[str, Any]:
    start, end = text.find("{"), text.rfind("}")
    try:
        data = json.loads(text[start:end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        data = None
    return data if isinstance(data, dict) else {"success": False, "error-message": text[-2000:]}


def _start_registration(paths: Sequence[Path], address: str,
                        env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``flwr supernode register`` for every key; it runs once ``address`` listens."""
    from federation.processes import parent_death_preexec

    project = str(Path(__file__).resolve().parent.parent)
    run_env = dict(env)
    run_env["PYTHONPATH"] = project + os.pathsep + run_env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", _REGISTER_SCRIPT, CONNECTION, address, *map(str, paths)],
        env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, preexec_fn=parent_death_preexec(),
    )


def _finish_registration(proc: subprocess.Popen[str], paths: Sequence[Path], say: Say) -> None:
    """Report each key's registration; a key the SuperLink already knows is fine."""
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    chunks = stdout.split("@@fedguard-key ")[1:]
    results = {Path(c.split("\n", 1)[0].strip()): _parse_json_object(c) for c in chunks}
    for path in paths:
        out = results.get(path) or {"success": False, "error-message": stderr[-2000:]}
        if out.get("success"):
            say(f"registered SuperNode key {path.name} (node {out.get('node-id')})")
        elif "already in use" in str(out.get("error-message", "")):
            say(f"SuperNode key {path.name} was already registered")
        else:
            raise DeployError(f"could not register {path}: {out.get('error-message', out)}")


def _run_status(run_id: int, env: Mapping[str, str]) -> tuple[str, str]:
    res = _flwr(["ls", CONNECTION, "--run-id", str(run_id)], env)
    runs = res.get("runs") or []
    if not res.get("success") or not runs:
        return "unknown", str(res.get("error-message", ""))[:500]
    run = runs[0]
    return str(run.get("status", "unknown")), str(run.get("status-details", ""))


def _follow_run(opts: ServerOptions, superlink: ManagedProcess, stream: ManagedProcess,
                run_id: list[int], env: Mapping[str, str], owner: Incarnation, say: Say) -> int:
    total = int(opts.flat.get("num-server-rounds", 0))
    poll_metrics = follow_metrics(opts.out_dir / "metrics.jsonl", total)
    announced = False
    started = time.monotonic()
    while True:
        if run_id and not announced:
            say(f"run {run_id[0]} started (ServerApp log: {stream.log_path})")
            announced = True
        for line in poll_metrics():
            say(line)
        if superlink.poll() is not None:
            return _superlink_died(superlink, opts, say)
        if stream.poll() is not None:
            break
        owner.refresh()
        time.sleep(0.2)
    stream.wait()
    for line in poll_metrics():
        say(line)
    if not run_id:
        say("the run could not be submitted; flwr run said:")
        for line in stream.tail(15):
            say("  " + line)
        raise DeployError("flwr run failed to start the run")
    status, details = _run_status(run_id[0], env)
    for _ in range(20):  # the stream can end a moment before the status is final
        if status.startswith("finished"):
            break
        time.sleep(0.5)
        status, details = _run_status(run_id[0], env)
    since_submit = time.monotonic() - started
    if status == "finished:completed":
        s = annotate_summary(opts.out_dir)
        if s is not None:
            acc = s.get("final_accuracy")
            lost = s["crash_recovery"]
            say(f"run {run_id[0]} completed in {s.get('wall_seconds')}s (summary.json "
                f"wall_seconds; {since_submit:.1f}s since submission): "
                f"{s.get('rounds_completed')} round(s), final accuracy "
                f"{'n/a' if acc is None else f'{100 * acc:.2f} %'}"
                + (f", rounds retrained after a server crash {lost['rounds_retrained']}"
                   if lost["rounds_retrained"] else "")
                + (f", rounds missing a crashed client {sorted(lost['rounds_missing_clients'])}"
                   if lost["rounds_missing_clients"] else "")
                + (f", stopped early: {s.get('stop_reason')}" if s.get("stopped_early") else "")
                + f"; run folder {opts.out_dir}")
            return SERVER_EXIT_FAILED if s.get("stopped_early") else 0
        say(f"run {run_id[0]} completed but wrote no summary.json")
        return SERVER_EXIT_FAILED
    say(f"run {run_id[0]} ended as {status}: {details or 'no details'}")
    tb = [ln for ln in stream.tail(60) if ln.strip()]
    if tb:
        say(f"last ServerApp log lines ({stream.log_path}):")
        for line in tb[-15:]:
            say("  " + line)
    if _newest_checkpoint(opts.out_dir) is not None:
        say("the run folder has a checkpoint: fix the cause and restart with --resume")
    return SERVER_EXIT_FAILED
