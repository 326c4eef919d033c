"""Real processes: ``fedguard server`` (SuperLink + one run), ``fedguard client`` (a SuperNode).

What runs where::

    fedguard server ─┬─ flower-superlink  TLS + SuperNode authentication, one HTTPS port
                     │     └─ flower-superexec ── flwr-serverapp   (server.app:app, per run)
                     ├─ flwr supernode register KEY.pub   (every provisioned key, one interpreter)
                     └─ flwr run <staged app> --stream    (waits for the run; then flwr ls)

    fedguard client ─┬─ python -m simulations._supernode   (flower-supernode, faster polling,
                     │                                        --isolation process)
                     └─ python -m simulations._clientexec  (warm launcher: forks one ClientApp
                                                             per message, clients.app:app)

Both commands own their Flower state: ``FLWR_HOME`` is ``RUNDIR/.flwr`` for the server and
``STATE_DIR/flwr`` for a client, so nothing touches the user's ``~/.flwr``. Telemetry and runtime
dependency installation are off. Every process is started here and stopped here, by process id
(:func:`stop_tree` walks the process tree, because Flower starts some helpers in sessions of
their own).

Failure handling:

* ``flwr run --stream`` exits 0 even when the ServerApp crashed, so the final status comes from
  ``flwr ls --run-id ID --format json``; anything but ``finished:completed`` is a failure.
* A client whose SuperLink is unreachable lets the SuperNode retry with exponential backoff (its
  own) and says so; a client that is refused (key not registered) retries a few times, then
  stops with a clear message; a client that loses a SuperLink that restarted (and forgot it)
  starts a fresh SuperNode, again with backoff. The privacy ledger lives in a file of the
  client's state directory, so a restarted client keeps its ε. A client whose predecessor died
  holding a message waits until the SuperLink has declared that node dead (:class:`_Lease`).

Latency (see docs/deployment.md): Flower's defaults cost seconds per message phase. The
ServerApp pulls replies at a short, growing interval (:func:`server.app.fast_polling`), the
SuperExec task poll is 0.1 s (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``), the SuperNode polls fast
and beats every 10 s (:mod:`simulations._supernode`), and ClientApps are forked from a process
that has already imported torch, Opacus and TenSEAL (:mod:`simulations._clientexec`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CLIENT_EXIT_REFUSED",
    "CLIENT_EXIT_TLS",
    "CLIENT_EXIT_UNREACHABLE",
    "SERVER_EXIT_FAILED",
    "SERVER_EXIT_SUPERLINK",
    "ClientOptions",
    "DeployError",
    "ManagedProcess",
    "ServerOptions",
    "flower_env",
    "free_port",
    "process_tree",
    "project_dir",
    "run_client",
    "serve",
    "stage_app",
    "stop_tree",
]

Say = Callable[[str], None]

SERVER_EXIT_FAILED = 1
"""``fedguard server``: the ServerApp failed (or the run ended in any way but completed)."""
SERVER_EXIT_SUPERLINK = 3
"""``fedguard server``: the SuperLink could not start or died."""
CLIENT_EXIT_REFUSED = 3
"""``fedguard client``: the SuperLink refused this node's authentication key."""
CLIENT_EXIT_TLS = 4
"""``fedguard client``: the TLS handshake failed (wrong CA or host name)."""
CLIENT_EXIT_UNREACHABLE = 5
"""``fedguard client``: gave up reaching the SuperLink (``--max-wait-time``)."""

CONNECTION = "fedguard"  # name of the SuperLink connection in $FLWR_HOME/config.toml
APP_PACKAGES = ("federation", "clients", "server", "crypto")  # what the ServerApp/ClientApp import
_APP_SUFFIXES = {".py", ".toml", ".md", ".json", ".yaml", ".yml"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeployError(Exception):
    """A deployment step failed; the message says which and what to do."""


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


def _bin(name: str) -> str:
    """A Flower executable next to this interpreter (the virtual environment), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found next to {sys.executable} or on PATH; install flwr")
    return found


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: our FLWR_HOME, no telemetry, no dependency installs.

    The interpreter's directory goes first on PATH because the SuperLink and SuperNode start
    ``flower-superexec`` by name. ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's default: 1 s)
    is set to 0.1 s unless the caller's environment sets it.
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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


# ------------------------------------------------------------------------------ processes


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live, non-zombie process (from /proc)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields_ = stat[stat.rfind(")") + 2:].split()
        if len(fields_) > 1 and fields_[0] != "Z":
            out[int(entry)] = int(fields_[1])
    return out


def process_tree(root: int, parents: Mapping[int, int] | None = None) -> list[int]:
    """``root`` and all its live descendants (sessions of their own included), root first.

    ``parents`` is a snapshot from :func:`_parents` (one /proc scan serves many roots).
    """
    if parents is None:
        parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root] if root in parents else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _alive(pid: int) -> bool:
    return pid in _parents()


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(root: int, grace: float = 10.0, *, hard: bool = False) -> None:
    """Stop ``root`` and every descendant, by process id.

    ``SIGTERM`` to the root first (Flower shuts its helpers down and a SuperNode tells the
    SuperLink it leaves), ``SIGTERM`` to what is left after half of ``grace`` seconds, and
    ``SIGKILL`` to everything still alive after ``grace``. With ``hard``, ``SIGKILL`` at once
    (a simulated crash).
    """
    known = set(process_tree(root))
    if hard:
        _signal(sorted(known), signal.SIGKILL)
    else:
        _signal([root], signal.SIGTERM)
    deadline = time.monotonic() + grace
    termed = hard
    while True:
        parents = _parents()  # one /proc scan per pass
        known |= {p for r in list(known) for p in process_tree(r, parents)}
        left = [p for p in known if p in parents]
        if not left:
            return
        now = time.monotonic()
        if now >= deadline:
            _signal(left, signal.SIGKILL)
            time.sleep(0.1)
            alive = _parents()
            if not any(p in alive for p in left):
                return
            deadline = now + 2.0  # SIGKILL is final; just wait for the kernel
        elif not termed and now >= deadline - grace / 2:
            _signal(left, signal.SIGTERM)
            termed = True
        time.sleep(0.05)


class ManagedProcess:
    """A child process whose output is logged to a file and handed line by line to a callback.

    Parameters
    ----------
    name:
        Short label for messages.
    argv:
        Command line.
    env:
        Environment (see :func:`flower_env`).
    log_path:
        Every output line is appended here, after its arrival time in Unix seconds (ANSI
        colours removed).
    on_line:
        Called from a reader thread with each output line (without colours).
    new_session:
        Start the process in a session of its own (tests do this so that one signal reaches
        the whole tree; the commands keep children in their own group so Ctrl-C reaches all).
    """

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str],
                 log_path: Path, on_line: Callable[[str], None] | None = None,
                 cwd: Path | None = None, new_session: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = open(log_path, "a", encoding="utf-8")
        self._on_line = on_line
        self.proc = subprocess.Popen(
            self.argv, env=dict(env), cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            start_new_session=new_session,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            self._read_lines(self.proc.stdout)

    def _read_lines(self, stream: IO[str]) -> None:
        for raw in stream:
            line = _ANSI.sub("", raw.rstrip("\n"))
            self.lines.append(line)
            if len(self.lines) > 2000:
                del self.lines[:1000]
            try:
                self._log.write(f"{time.time():.3f} {line}\n")
                self._log.flush()
            except ValueError:  # log closed during shutdown
                pass
            if self._on_line is not None:
                try:
                    self._on_line(line)
                except Exception:  # noqa: BLE001 - a printing problem must not stop the reader
                    pass

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def tail(self, n: int = 20) -> list[str]:
        return self.lines[-n:]

    def stop(self, grace: float = 10.0, *, hard: bool = False) -> int | None:
        """Stop the process and its descendants (see :func:`stop_tree`); return its exit code."""
        if self.proc.poll() is None or process_tree(self.pid):
            stop_tree(self.pid, grace, hard=hard)
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            code = None
        self._reader.join(timeout=5)
        self._log.close()
        return code


def _flwr(args: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` and return the parsed JSON (``success`` says how it went)."""
    res = subprocess.run(
        [_bin("flwr"), *args, "--format", "json"], env=dict(env), capture_output=True,
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
    ``out-dir`` in it must be absolute.
    """

    keys: Path
    out_dir: Path
    flat: dict[str, bool | int | float | str]
    host: str = "127.0.0.1"
    port: int = 9092
    resume: bool = False
    grid_poll: float = 0.5
    new_session: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


class _MetricsTail:
    """Follows ``metrics.jsonl`` from a byte offset and formats new complete lines."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.total = total
        self.offset = path.stat().st_size if path.exists() else 0

    def poll(self) -> Iterator[str]:
        from server.report import format_round

        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                continue
            yield format_round(row, self.total, detail=True)


def _newest_checkpoint(out_dir: Path) -> Path | None:
    from server.report import checkpoint_files

    files = checkpoint_files(out_dir)
    return files[-1] if files else None


def serve(opts: ServerOptions, say: Say) -> int:
    """Run ``fedguard server``: SuperLink, key registration, one run, progress; return exit code.

    Returns 0 when the run finished as completed, :data:`SERVER_EXIT_FAILED` when the ServerApp
    failed, :data:`SERVER_EXIT_SUPERLINK` when the SuperLink could not start or died.

    Raises
    ------
    DeployError
        Bad bundle, port in use, a run that could not be submitted, nothing to resume.
    """
    from crypto.keys import load_server_bundle
    from crypto.tls import certificate_fingerprint
    from federation.errors import FedguardError

    try:
        bundle = load_server_bundle(opts.keys)
    except FedguardError as exc:
        raise DeployError(f"server bundle {opts.keys}: {exc}") from None
    out_dir = opts.out_dir
    home = out_dir / ".flwr"
    home.mkdir(parents=True, exist_ok=True)
    ca_fp = certificate_fingerprint(bundle.ca_cert_path.read_bytes())
    say(f"server bundle: {bundle.directory} (federation {bundle.federation!r}, "
        f"{bundle.trainers} trainer key(s), CA {ca_fp[:23]}…, CKKS key {bundle.ckks_fingerprint})")
    say(f"run folder: {out_dir}")
    if opts.resume:
        ckpt = _newest_checkpoint(out_dir)
        if ckpt is None:
            raise DeployError(f"--resume: no checkpoint in {out_dir / 'checkpoints'}")
        say(f"resuming from {ckpt.name} (the run continues with the round after it)")

    if not _port_free(opts.host, opts.port):
        raise DeployError(f"port {opts.port} on {opts.host} is in use; choose another with --port")
    from server.app import GRID_POLL_ENV

    env = flower_env(home, {GRID_POLL_ENV: str(opts.grid_poll), **opts.extra_env})
    address = _address(_connect_host(opts.host), opts.port)
    write_connection(home, address, bundle.ca_cert_path)
    connected: list[str] = []

    def on_superlink(line: str) -> None:
        if m := re.search(r"Activated node_id=(\d+)", line):
            connected.append(m.group(1))
            say(f"client node {m.group(1)} connected ({len(connected)} so far)")
        elif m := re.search(r"Deactivated node_id=(\d+)", line):
            say(f"client node {m.group(1)} left")

    superlink = ManagedProcess(
        "superlink",
        [_bin("flower-superlink"),
         "--ssl-ca-certfile", str(bundle.ca_cert_path),
         "--ssl-certfile", str(bundle.server_cert_path),
         "--ssl-keyfile", str(bundle.server_key_path),
         "--enable-supernode-auth",
         "--disable-runtime-dependency-installation",
         "--host", opts.host, "--port", str(opts.port)],
        env=env, log_path=home / "superlink.log", on_line=on_superlink,
        new_session=opts.new_session,
    )
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

        app_dir = stage_app(project_dir(), home / "app" / "fedguard")
        config_file = home / "run-config.toml"
        flat = {**opts.flat, "resume": opts.resume}
        config_file.write_text(
            "".join(f"{k} = {_toml_value(v)}\n" for k, v in flat.items()), encoding="utf-8")
        say(f"app: {app_dir} (server.app:app, clients.app:app); run config: {config_file}")
        run_id: list[int] = []

        def on_stream(line: str) -> None:
            m = re.search(r"started run (\d+)", line)
            if m and not run_id:
                run_id.append(int(m.group(1)))

        stream = ManagedProcess(
            "flwr-run", [_bin("flwr"), "run", str(app_dir), CONNECTION,
                         "--run-config", str(config_file), "--stream"],
            env=env, log_path=home / "serverapp.log", on_line=on_stream,
            new_session=opts.new_session,
        )
        return _follow_run(opts, superlink, stream, run_id, env, say)
    finally:
        if registration.poll() is None:
            registration.kill()
            registration.communicate()
        if stream is not None:
            stream.stop(grace=3.0)
        superlink.stop(grace=10.0)


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


# `flwr supernode register` for many keys in one interpreter: Flower's own CLI code, called once
# per key. Separate `flwr` processes cost 1-2 s each of start-up (8-10 s for four keys on a busy
# two-core machine), and until registration ends the SuperLink refuses the nodes it has not seen.
_REGISTER_SCRIPT = """
import json, socket, sys, time
import typer
from flwr.cli.app import app
command = typer.main.get_command(app)
host, port = sys.argv[2].rsplit(":", 1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # started with the SuperLink: register the moment it listens
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
for key in sys.argv[3:]:
    print("@@fedguard-key " + key, flush=True)
    try:
        command.main(["supernode", "register", key, sys.argv[1], "--format", "json"],
                     standalone_mode=False)
    except SystemExit:
        pass
    except Exception as exc:
        print(json.dumps({"success": False, "error-message": repr(exc)}))
    sys.stdout.flush()
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
    return subprocess.Popen(
        [sys.executable, "-c", _REGISTER_SCRIPT, CONNECTION, address, *map(str, paths)],
        env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
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
                run_id: list[int], env: Mapping[str, str], say: Say) -> int:
    total = int(opts.flat.get("num-server-rounds", 0))
    metrics = _MetricsTail(opts.out_dir / "metrics.jsonl", total)
    announced = False
    started = time.monotonic()
    while True:
        if run_id and not announced:
            say(f"run {run_id[0]} started; waiting for {opts.flat.get('num-clients')} "
                f"client(s)  (ServerApp log: {stream.log_path})")
            announced = True
        for line in metrics.poll():
            say(line)
        if superlink.poll() is not None:
            say(f"the SuperLink exited unexpectedly (code {superlink.poll()}); last lines:")
            for line in superlink.tail(10):
                say("  " + line)
            say("restart with --resume to continue from the last checkpoint")
            return SERVER_EXIT_SUPERLINK
        if stream.poll() is not None:
            break
        time.sleep(0.2)
    stream.wait()
    for line in metrics.poll():
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
    wall = time.monotonic() - started
    if status == "finished:completed":
        summary_path = opts.out_dir / "summary.json"
        if summary_path.exists():
            s = json.loads(summary_path.read_text(encoding="utf-8"))
            acc = s.get("final_accuracy")
            say(f"run {run_id[0]} completed in {wall:.1f}s: {s.get('rounds_completed')} round(s), "
                f"final accuracy {'n/a' if acc is None else f'{100 * acc:.2f} %'}"
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


# ---------------------------------------------------------------------------------- client


@dataclass
class ClientOptions:
    """What ``fedguard client`` was asked to do."""

    keys: Path
    superlink: str
    state_dir: Path
    partition_id: int | None = None
    num_partitions: int | None = None
    data_dir: str | None = None
    ledger: Path | None = None
    port: int = 0  # the SuperNode's runtime (ClientApp I/O) port; 0 = pick a free one
    max_wait_time: float | None = None
    refused_retries: int = 3
    fast_polling: bool = True
    warm_start: bool = True  # ClientApps forked from a warm launcher (see simulations._clientexec)
    heartbeat: float = 10.0  # seconds; with fast polling (Flower's own: 30)
    torch_threads: int | None = None
    new_session: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


_LITERAL_UNSAFE = re.compile(r"['\n\r]")


def _literal(value: str, what: str) -> str:
    if _LITERAL_UNSAFE.search(value):
        raise DeployError(f"{what} must not contain a quote or a line break: {value!r}")
    return f"'{value}'"  # a TOML literal string: no escapes, spaces allowed


@dataclass
class _Attempt:
    connected: bool = False
    node_id: str = ""
    refused: bool = False
    tls_error: bool = False
    gave_up: bool = False
    retries: int = 0
    last_error: str = ""
    round_: str = ""
    receiving: str = ""
    busy: bool = False
    since: float = field(default_factory=time.monotonic)
    on_busy: Callable[[bool], None] | None = None  # told first, before anything is printed

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        if self.on_busy is not None:
            self.on_busy(busy)


def run_client(opts: ClientOptions, say: Say, stop: threading.Event | None = None) -> int:
    """Run ``fedguard client`` until stopped; return the exit code.

    Starts a SuperNode with the trainer's bundle, restarts it when a connected SuperLink
    forgets it (restarted SuperLink), and turns Flower's log into short progress lines.
    """
    from clients.ledger import LedgerFile
    from crypto.keys import PASSPHRASE_ENV_VAR, load_trainer_bundle, read_passphrase
    from federation.errors import DecryptionFailed, FedguardError

    stop = stop or threading.Event()
    try:
        passphrase = read_passphrase()
        bundle = load_trainer_bundle(opts.keys, passphrase)
    except DecryptionFailed:
        raise DeployError(f"trainer bundle {opts.keys}: cannot open the sealed CKKS secret "
                          f"(wrong passphrase in {PASSPHRASE_ENV_VAR}, or the file was altered)"
                          ) from None
    except FedguardError as exc:
        raise DeployError(f"trainer bundle {opts.keys}: {exc}") from None
    state = opts.state_dir
    state.mkdir(parents=True, exist_ok=True)
    ledger = (opts.ledger or state / "privacy-ledger.jsonl").expanduser().resolve()
    ledger.parent.mkdir(parents=True, exist_ok=True)
    try:
        events = len(LedgerFile(ledger).load().events)
    except FedguardError as exc:
        raise DeployError(str(exc)) from None
    say(f"trainer bundle: {bundle.directory} ({bundle.name} of federation {bundle.federation!r}, "
        f"CKKS key {bundle.ckks_fingerprint}; secret context unsealed)")
    say(f"authentication key: {bundle.auth_private_key_path}; CA: {bundle.ca_cert_path}")
    say(f"privacy ledger: {ledger} ({events} event(s) recorded so far)")

    extra_env = {PASSPHRASE_ENV_VAR: passphrase, **opts.extra_env}
    if opts.data_dir:
        from federation.data import load_fashion_mnist

        try:
            ds = load_fashion_mnist(opts.data_dir)
        except FedguardError as exc:
            raise DeployError(f"--data-dir: {exc}") from None
        pid, num = opts.partition_id or 0, opts.num_partitions or 1
        extra_env["FEDGUARD_DATA_DIR"] = str(Path(opts.data_dir).expanduser().resolve())
        say(f"data: {opts.data_dir} ({len(ds.train_y)} train / {len(ds.test_y)} test images)"
            + (f", partition {pid} of {num}" if num > 1 else "")
            + " — used when the server leaves data-dir unset")
    else:
        if opts.partition_id is None or opts.num_partitions is None:
            raise DeployError("give --partition-id and --num-partitions, or --data-dir")
        pid, num = opts.partition_id, opts.num_partitions
        say(f"data: partition {pid} of {num} of the data set the run names (local trial)")
    if not 0 <= pid < num:
        raise DeployError(f"--partition-id {pid} not in 0..{num - 1}")
    node_config = [f"partition-id={pid}", f"num-partitions={num}",
                   f"ledger-file={_literal(str(ledger), 'ledger path')}",
                   f"key-dir={_literal(str(bundle.directory), 'key directory')}"]
    if opts.torch_threads:
        extra_env["FEDGUARD_TORCH_THREADS"] = str(opts.torch_threads)
    if opts.fast_polling:
        extra_env["FEDGUARD_SUPERNODE_HEARTBEAT"] = str(opts.heartbeat)
    home = state / "flwr"
    env = flower_env(home, extra_env)
    port = opts.port or free_port()

    argv_base = (
        [sys.executable, "-m", "simulations._supernode"] if opts.fast_polling
        else [_bin("flower-supernode")]
    )
    argv = [*argv_base,
            "--root-certificates", str(bundle.ca_cert_path),
            "--superlink", opts.superlink,
            "--auth-supernode-private-key", str(bundle.auth_private_key_path),
            "--port", str(port),
            "--node-config", " ".join(node_config)]
    if opts.max_wait_time is not None:
        argv += ["--max-wait-time", str(opts.max_wait_time)]
    if opts.warm_start:
        argv += ["--isolation", "process"]
    say(f"SuperNode: ClientApp I/O on 127.0.0.1:{port}; connecting to {opts.superlink} "
        f"(log {state / 'supernode.log'})")
    launcher: ManagedProcess | None = None

    def start_launcher() -> ManagedProcess:
        return ManagedProcess(
            "clientapp-launcher",
            [sys.executable, "-m", "simulations._clientexec",
             "--runtime-api-address", f"127.0.0.1:{port}", "--parent-pid", str(os.getpid())],
            env=env, log_path=state / "clientapp.log", on_line=lambda line: _app_line(line, say),
            new_session=opts.new_session)

    lease = _Lease(state / "supernode.lease", opts.heartbeat if opts.fast_polling else 30.0)
    lease.claim(say, stop)
    refusals = 0
    restart_wait = 1.0
    try:
        while not stop.is_set():
            if opts.warm_start and (launcher is None or launcher.poll() is not None):
                if launcher is not None:
                    say(f"the ClientApp launcher exited (code {launcher.poll()}); restarting it")
                    launcher.stop(grace=1.0)
                launcher = start_launcher()
            attempt = _Attempt(on_busy=lease.beat)
            proc = ManagedProcess(
                "supernode", argv, env=env, log_path=state / "supernode.log",
                on_line=functools.partial(_client_line, a=attempt, opts=opts, say=say),
                new_session=opts.new_session)
            try:
                while proc.poll() is None and not stop.is_set():
                    lease.beat(attempt.busy)
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    proc.stop(grace=10.0)
                code = proc.wait()
                lease.beat(attempt.busy, force=True)
            if stop.is_set():
                say("stopped")
                return 0
            if attempt.tls_error:
                say(f"TLS handshake with {opts.superlink} failed: the server certificate does "
                    f"not match {bundle.ca_cert_path} or the host name; check --superlink and "
                    "the bundle")
                return CLIENT_EXIT_TLS
            if attempt.refused and not attempt.connected:
                refusals += 1
                if refusals > opts.refused_retries:
                    say(f"refused by the SuperLink {refusals} time(s): this node's key "
                        f"({bundle.auth_public_key_path.name}) is not registered there; "
                        "ask the operator to provision/register it. Giving up.")
                    return CLIENT_EXIT_REFUSED
                wait = min(5.0 * 2 ** (refusals - 1), 30.0)
                say(f"refused by the SuperLink: key not registered (yet?); retry {refusals}/"
                    f"{opts.refused_retries} in {wait:.0f}s")
                stop.wait(wait)
                continue
            if attempt.gave_up or (not attempt.connected and code != 0):
                say(f"could not reach the SuperLink at {opts.superlink}"
                    + (f" within {opts.max_wait_time:.0f}s" if opts.max_wait_time else "")
                    + (f": {attempt.last_error}" if attempt.last_error else "") + "; giving up")
                return CLIENT_EXIT_UNREACHABLE
            # It was connected and the SuperNode ended: the SuperLink went away or forgot us.
            if time.monotonic() - attempt.since > 60:
                restart_wait = 1.0
            why = attempt.last_error or (
                "the SuperLink dropped this node; it probably restarted" if code == 0 else "")
            say(f"the SuperNode stopped (exit code {code}" + (f": {why}" if why else "")
                + f"); starting a new one in {restart_wait:.0f}s (the privacy ledger is kept)")
            stop.wait(restart_wait)
            restart_wait = min(restart_wait * 2, 20.0)
            lease.claim(say, stop, superlink_restarted=attempt.retries > 0 or code == 0
                        or "no longer knows" in attempt.last_error)
        return 0
    finally:
        if launcher is not None:
            launcher.stop(grace=5.0)
        lease.release()


def _app_line(line: str, say: Say) -> None:
    """Pass on what matters from the ClientApp processes (fedguard warnings, errors)."""
    if line.startswith(("ERROR", "WARNING", "fedguard:", "Traceback")) or "could not" in line:
        say(line[:300])


class _Lease:
    """``STATE_DIR/supernode.lease``: when this client's SuperNode was last alive, and busy.

    A SuperNode killed while it holds a message (pulled, not yet answered) leaves the ServerApp
    waiting: the SuperLink answers for a node only once it is *offline*, which happens 2
    heartbeat intervals after its last heartbeat. A SuperNode with the same key that comes back
    sooner takes the same node id and the message is never answered, so the round waits for its
    timeout. :meth:`claim` therefore waits out that window when the previous SuperNode died busy.
    The file is refreshed every 2 s and removed on a clean stop.
    """

    def __init__(self, path: Path, heartbeat: float) -> None:
        self.path = path
        self.window = 2 * heartbeat + 3.0
        self._last = 0.0
        self._busy = False
        self._lock = threading.Lock()  # the main loop and the output reader both write

    def claim(self, say: Say, stop: threading.Event, *, superlink_restarted: bool = False) -> None:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            info, age = {}, float("inf")
        pid = info.get("pid") if isinstance(info, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and age < 5 and _alive(pid):
            raise DeployError(f"another fedguard client (pid {pid}) uses {self.path.parent}; "
                              "give each client its own --state-dir")
        # After a SuperLink restart the message died with the old SuperLink: nothing to wait for.
        if (isinstance(info, dict) and info.get("busy") and age < self.window
                and not superlink_restarted):
            wait = self.window - age
            say(f"the previous SuperNode of this client stopped {age:.0f}s ago while handling a "
                f"message; waiting {wait:.0f}s until the SuperLink reports that message as lost "
                "(otherwise the server would wait for it until its round timeout)")
            stop.wait(wait)
        self._busy = False
        self.beat(False, force=True)

    def beat(self, busy: bool, force: bool = False) -> None:
        with self._lock:
            now = time.time()
            if not force and busy == self._busy and now - self._last < 2.0:
                return
            self._busy, self._last = busy, now
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "busy": busy}), encoding="utf-8")
            os.replace(tmp, self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _what(message_type: str, round_: str) -> str:
    if message_type == "train":
        return f"round {round_ or '?'} (train)"
    if message_type == "evaluate":
        return "final evaluation"
    return f"{message_type} (round {round_ or '?'})"


_RE_NODE = re.compile(r"SuperNode ID: (\d+)")
_RE_RETRY = re.compile(r"Connection attempt failed, retrying in ([0-9.]+) seconds")
_RE_ROUND = re.compile(r"\[RUN (\d+)(?:, ROUND ([^\]]+))?\]")
_RE_RECV = re.compile(r"Receiving: (\S+) message")
_RE_SEND = re.compile(r"Sending: (\S+) message")


def _client_line(line: str, a: _Attempt, opts: ClientOptions, say: Say) -> None:
    """Turn one SuperNode log line into a progress line (or nothing)."""
    if m := _RE_NODE.search(line):
        a.connected, a.node_id = True, m.group(1)
        say(f"connected to the SuperLink at {opts.superlink} as node {a.node_id}; waiting for work")
    elif m := _RE_RETRY.search(line):
        a.retries += 1
        if a.retries > 3 and a.retries % 5 and float(m.group(1)) < 10:
            return  # keep the terminal readable during a long outage
        if a.connected:
            say(f"lost contact with the SuperLink at {opts.superlink}; "
                f"retrying in {float(m.group(1)):.1f}s (attempt {a.retries})")
        else:
            say(f"cannot reach the SuperLink at {opts.superlink}; "
                f"retrying in {float(m.group(1)):.1f}s (attempt {a.retries}, backoff up to 20s)")
    elif "Failed to activate SuperNode" in line:
        a.refused = True
    elif "SSL/TLS handshake error" in line or "CERTIFICATE_VERIFY_FAILED" in line:
        a.tls_error = True
    elif "Giving up reconnection" in line:
        a.gave_up = a.gave_up or not a.connected  # after connecting: a restart follows
    elif m := _RE_ROUND.search(line):
        a.round_ = m.group(2) or ""
    elif m := _RE_RECV.search(line):
        a.receiving = m.group(1)
        a.set_busy(True)
        say(f"{_what(a.receiving, a.round_)}: request received")
    elif m := _RE_SEND.search(line):
        say(f"{_what(m.group(1), a.round_)}: reply sent")
    elif "Sent successfully" in line or "Failed to send message" in line:
        a.set_busy(False)
    elif "Connection successful after" in line:
        say(f"reached the SuperLink at {opts.superlink}")
    elif "Exit Code: 305" in line:
        pass  # the connection failed; the lines after it say why
    elif line.startswith(("ERROR", "fedguard:")) or "could not handle" in line:
        a.last_error = line.split(":", 1)[-1].strip()[:200] or a.last_error
        say(line[:300])
    elif "401 Unauthorized" in line or "does not recognize this SuperNode" in line:
        a.last_error = "the SuperLink no longer knows this node (it restarted)"
