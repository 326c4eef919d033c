"""Every touch of Flower internals, in one module, gated on the Flower version it was made for.

fedguard's real deployment uses Flower's public commands (``flower-superlink``,
``flower-supernode``, ``flwr``) and a few private pieces that no public API offers. They all
live here, so that a Flower upgrade is checked in one place and a newcomer sees what is private:

============================  ==============================================  ===================
fedguard feature              Flower internal it needs                        off on another
                                                                              Flower version
============================  ==============================================  ===================
SuperNode fast polling and    ``flwr.supernode.start_client_internal.time``,   stock SuperNode
10 s heartbeat                ``HEARTBEAT_DEFAULT_INTERVAL`` (two modules)     (3 s polling, 30 s)
SuperNode exit record         ``flwr_exit`` as imported by the SuperNode       log lines only
node leaves at once on       ``start_client_internal.http_request_response``, wait out the
SIGTERM; release of a node a  ``FleetHttpClient``, ``NodeAuthHttpInterceptor``, heartbeat window
dead SuperNode left online    ``add_exit_handler`` (Fleet ``DeactivateNode``)   (2 beats)
ServerApp fast reply polling  ``flwr.superlink.grid.http_grid.HttpGrid``       Flower's 3 s pulls
warm ClientApp launcher       ``flwr.proto.runtime_pb2.AcquireTaskRequest``,   a fresh process per
                              ``flwr.supercore.runtime.RuntimeHttpClient``,    message (Flower's
                              ``run_clientapp``                                SuperExec)
key registration in one       ``flwr.cli.app.app`` (the typer app)             one ``flwr``
interpreter                                                                    process per key
helpers die with their parent  Flower starts SuperExec / ServerApp /            (still on: a shim on
                              ClientApp processes by name from ``PATH``        PATH is harmless)
an in-process Grid (the       ``Metadata._message_id`` (no public setter),     refused: raises
tests' fake; drives the real  ``Message(content=, metadata=)``,                RuntimeError
loop and ClientApp)           ``flwr.supercore.task_identity.TaskIdentity``
============================  ==============================================  ===================

:func:`features_off` names the rows that are off for the installed Flower; both commands print
it at start. Off means "Flower's stock behaviour", never a failure.

Flower's log text is read where Flower offers no structured signal. The patterns are here too
(:data:`SUPERNODE_PATTERNS`, :data:`SUPERLINK_PATTERNS`), each with the Flower 1.42 line it
matches, and a test feeds them those lines. The structured signals used instead of text: the
SuperNode's exit record (:func:`install_exit_record`: Flower's own exit code and API error code,
written to a JSON file before the process exits), ``flwr ls --format json`` for a run's final
status, process exit codes, and the process tree.

This module imports nothing of fedguard's and no Flower module at import time.
"""

from __future__ import annotations

import contextlib
import json
import re
import time as _time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "API_CODE_ACTIVATION_FAILED",
    "FLOWER_HELPERS",
    "FLOWER_SERIES",
    "RELEASE_LINE_PREFIX",
    "SUPERLINK_PATTERNS",
    "SUPERNODE_PATTERNS",
    "SUPERNODE_RELEASE_ENV",
    "SUPERNODE_STATUS_ENV",
    "ExitRecord",
    "RuntimeTasks",
    "deliver_in_process",
    "features_off",
    "flower_version",
    "http_grid_type",
    "install_exit_record",
    "install_node_handover",
    "patch_supernode_polling",
    "read_exit_record",
    "register_keys",
    "run_clientapp_task",
    "run_supernode",
    "set_task_identity",
    "supported",
]

FLOWER_HELPERS = ("flower-superexec", "flwr-serverapp", "flwr-clientapp")
"""Flower's helper processes that the SuperLink, SuperExec and SuperNode start *by name* from
``PATH`` (Flower 1.42). :func:`federation.processes.flower_env` puts a shim of each first on
``PATH`` so that they, too, die with their parent."""

FLOWER_SERIES = "1.42."
"""The Flower release series every private touch below was written and tested against."""

SUPERNODE_STATUS_ENV = "FEDGUARD_SUPERNODE_STATUS"
"""Environment variable naming the JSON file the SuperNode's exit record is written to."""

SUPERNODE_RELEASE_ENV = "FEDGUARD_SUPERNODE_RELEASE"
"""Environment variable ``NODE_ID:SETTLE_SECONDS``: the node a dead predecessor left online,
which the SuperNode releases before it connects (:func:`install_node_handover`)."""

RELEASE_LINE_PREFIX = "fedguard release: "
"""How the SuperNode's lines about that release start (``fedguard client`` passes them on)."""

API_CODE_ACTIVATION_FAILED = 2004
"""Flower's ``ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED``: the SuperLink did not activate the
node, because its key is not registered *or* a node with that key is still online."""

_IDLE_SLEEP = 3.0  # what start_client_internal sleeps after an empty pull (Flower 1.42)

# Flower 1.42 log lines that carry information no API exposes. Each pattern sits beside an
# example line (tests/federation/test_flower_internals.py feeds these examples).
SUPERNODE_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "node-id": (re.compile(r"SuperNode ID: (\d+)"), "INFO :      SuperNode ID: 42"),
    "retry": (re.compile(r"Connection attempt failed, retrying in ([0-9.]+) seconds"),
              "WARNING :   Connection attempt failed, retrying in 1.25 seconds"),
    "round": (re.compile(r"\[RUN (\d+)(?:, ROUND ([^\]]+))?\]"), "INFO :      [RUN 7, ROUND 1]"),
    "receiving": (re.compile(r"Receiving: (\S+) message"),
                  "INFO :      Receiving: train message (ID: ab)"),
    "sending": (re.compile(r"Sending: (\S+) message"), "INFO :      Sending: train message (ID: c)"),
    "sent": (re.compile(r"Sent successfully|Failed to send message"),
             "INFO :      Sent successfully"),
    "reconnected": (re.compile(r"Connection successful after"),
                    "INFO :      Connection successful after 2.50 seconds and 3 tries."),
    "refused": (re.compile(r"Failed to activate SuperNode"),
                "[code: 2004] Failed to activate SuperNode."),
    "tls": (re.compile(r"SSL/TLS handshake error|CERTIFICATE_VERIFY_FAILED"),
            "ERROR :     SSL/TLS handshake error detected."),
    "gave-up": (re.compile(r"Giving up reconnection"),
                "WARNING :   Giving up reconnection after 30.00 seconds and 9 tries."),
    "forgotten": (re.compile(r"401 Unauthorized|does not recognize this SuperNode"),
                  "ERROR :     Client error '401 Unauthorized' for url 'https://h/api/v0/fleet'"),
}
"""SuperNode log: name -> (pattern, an example Flower 1.42 line)."""

SUPERLINK_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "activated": (re.compile(r"Activated node_id=(\d+)"),
                  "INFO :      [Fleet.ActivateNode] Activated node_id=123"),
    "deactivated": (re.compile(r"Deactivated node_id=(\d+)"),
                    "INFO :      [Fleet.DeactivateNode] Deactivated node_id=123"),
    "refused-unknown-key": (
        re.compile(r"\[ApiError:2004\].*No SuperNode found with the given public key"),
        "ERROR :     [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode "
        "with public key: b'x', exception: No SuperNode found with the given public key."),
    "refused-online": (
        re.compile(r"\[ApiError:2004\].*SuperNode with node ID (\d+) could not be activated"),
        "ERROR :     [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode "
        "with public key: b'x', exception: SuperNode with node ID 77 could not be activated."),
    "run-started": (re.compile(r"started run (\d+)"),
                    "🎊 Successfully started run 1234567"),
}
"""SuperLink / ``flwr run`` output: name -> (pattern, an example Flower 1.42 line)."""


def flower_version() -> str:
    """The installed Flower version string ("unknown" if it cannot be read)."""
    try:
        from flwr.supercore.version import package_version
    except ImportError:  # pragma: no cover - another Flower layout
        return "unknown"
    return str(package_version)


def supported() -> bool:
    """Whether the installed Flower is the series the private touches were made for."""
    return flower_version().startswith(FLOWER_SERIES)


def features_off() -> list[str]:
    """The fedguard deployment features that fall back to Flower's stock behaviour here.

    Empty on Flower 1.42.x. Each entry names the feature and what runs instead.
    """
    if supported():
        return []
    return [
        "SuperNode fast polling and 10 s heartbeat (stock SuperNode: 3 s idle polling, 30 s "
        "heartbeat; a dead client is noticed after up to 60 s)",
        "SuperNode exit record (refusal causes come from log lines only)",
        "prompt leave on SIGTERM and release of a node a dead SuperNode left online (a "
        "restarted client may wait until the SuperLink declares it dead: 2 heartbeats)",
        "ServerApp fast reply polling (Flower's fixed 3 s between pulls)",
        "warm ClientApp launcher (Flower's SuperExec starts a fresh process per message)",
        "key registration in one interpreter (one flwr process per key)",
    ]


# ----------------------------------------------------------------------------------- SuperNode


class _PollClock:
    """Stands in for the ``time`` module inside Flower's SuperNode worker loop."""

    def __init__(self, real: ModuleType, low: float, high: float) -> None:
        self._real = real
        self._low = low
        self._high = high
        self._idle = low

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        if seconds >= _IDLE_SLEEP:  # idle: nothing to do, back off gently
            pause, self._idle = self._idle, min(self._idle * 1.5, self._high)
        else:  # waiting for a reply or an object of a message being handled
            pause, self._idle = min(seconds, self._low), self._low
        self._real.sleep(pause)


def run_supernode(argv: Sequence[str]) -> None:
    """Run Flower's SuperNode in this process, as ``flower-supernode ARGV`` would."""
    import sys

    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def patch_supernode_polling(low: float, high: float, heartbeat: float) -> str:
    """Shorten the SuperNode's idle polling and heartbeat, in this process.

    Parameters
    ----------
    low, high:
        Idle pause bounds in seconds: the pause starts at ``low``, grows by half after each
        empty pull up to ``high`` and drops back when work arrives.
    heartbeat:
        Heartbeat interval in seconds (the SuperLink accepts >= 10); a node is declared dead
        after two missed beats.

    Returns
    -------
    str
        Empty when applied, else a one-line note saying why the stock SuperNode runs.
    """
    if not supported():
        return (f"fast polling not applied (Flower {flower_version()}, made for "
                f"{FLOWER_SERIES}x); running the stock SuperNode")
    try:
        from flwr.supercore import heartbeat as hb
        from flwr.supernode import fleet_http_connection, start_client_internal
    except ImportError as exc:  # pragma: no cover - another Flower layout
        return f"fast polling not applied ({exc}); running the stock SuperNode"
    needed = [(start_client_internal, "time"), (hb, "HEARTBEAT_DEFAULT_INTERVAL"),
              (fleet_http_connection, "HEARTBEAT_DEFAULT_INTERVAL")]
    if not all(hasattr(mod, attr) for mod, attr in needed):
        return "fast polling not applied (Flower internals changed); running the stock SuperNode"
    start_client_internal.time = _PollClock(_time, low, high)  # type: ignore[attr-defined,assignment]
    hb.HEARTBEAT_DEFAULT_INTERVAL = heartbeat  # type: ignore[attr-defined,assignment]
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = heartbeat  # type: ignore[attr-defined,assignment]
    return ""


class ExitRecord:
    """Why a SuperNode ended, as Flower itself decided it (not parsed from its log).

    Attributes
    ----------
    code:
        Flower's ``ExitCode`` (e.g. 305 = connection to the SuperLink failed).
    api_code:
        Flower's ``ApiErrorCode`` of the SuperLink's refusal, when there was one
        (:data:`API_CODE_ACTIVATION_FAILED`), else None.
    message:
        Flower's exit message (first 500 characters).
    left:
        The SuperNode's connection clean-up ran (it deactivated the node at the SuperLink).
    """

    def __init__(self, code: int, api_code: int | None, message: str, left: bool = False) -> None:
        self.code = code
        self.api_code = api_code
        self.message = message
        self.left = left

    @property
    def tls(self) -> bool:
        """The connection failed in the TLS handshake (wrong CA or host name)."""
        return bool(re.search(r"CERTIFICATE_VERIFY_FAILED|SSL|certificate", self.message))


_API_CODE = re.compile(r"\[code: (\d+)\]")  # how fleet_http_connection renders a FlowerError


def install_exit_record(path: Path) -> bool:
    """Make the SuperNode in this process write its exit record to ``path`` before exiting.

    Flower's SuperNode ends through ``flwr_exit(code, message)`` but its process exit status is
    1 for every error; the record keeps Flower's own code and the SuperLink's API error code.
    Returns False (nothing installed) on another Flower version.
    """
    if not supported():
        return False
    try:
        from flwr.supernode import fleet_http_connection, start_client_internal
    except ImportError:  # pragma: no cover
        return False
    modules = [m for m in (fleet_http_connection, start_client_internal)
               if callable(getattr(m, "flwr_exit", None))]
    if not modules:
        return False
    real: Callable[..., Any] = modules[0].flwr_exit

    def recording_exit(code: int, message: str | None = None, *args: Any, **kwargs: Any) -> Any:
        text = message or ""
        api = _API_CODE.search(text)
        _merge_record(path, {"code": int(code), "api-code": int(api.group(1)) if api else None,
                             "message": text[:500]})
        return real(code, message, *args, **kwargs)

    for mod in modules:
        mod.flwr_exit = recording_exit  # type: ignore[attr-defined]
    # The connection's own clean-up deactivates the node at the SuperLink; once it has run,
    # the record says so ("left"), so a restarted client knows no message is held.
    connect = getattr(start_client_internal, "http_request_response", None)
    if connect is not None:
        @contextlib.contextmanager
        def recording_connection(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                with connect(*args, **kwargs) as conn:
                    yield conn
            finally:
                _merge_record(path, {"left": True})

        start_client_internal.http_request_response = recording_connection  # type: ignore[attr-defined]
    return True


def install_node_handover(release: tuple[int, float] | None,
                          emit: Callable[[str], None]) -> bool:
    """Make the SuperNode in this process leave the SuperLink promptly, and clean up after
    a predecessor that did not.

    * **Leaving.** On SIGTERM, Flower's SuperNode runs its exit handlers under a 5 s force-exit
      timer and deactivates its node only when the connection unwinds afterwards; when the
      handlers take longer, the process ends without deactivating and the node stays
      *online* at the SuperLink for two heartbeats. Here the node is deactivated first, by an
      exit handler that runs before that timer starts (Flower's Fleet ``DeactivateNode``).
    * **Releasing.** With ``release = (node_id, settle)``: a SuperNode that died without
      leaving (SIGKILL, a machine crash) left ``node_id`` online, and a SuperNode with the
      same key is refused until two heartbeats pass. Its successor holds that key, so before
      connecting it sends the ``DeactivateNode`` the dead one could not, signed with it, then
      waits ``settle`` seconds (non-zero when the dead one held a message: the server must
      pull once while the node is offline to record that message as lost; fedguard's
      ServerApp pulls every 0.5 s or less, Flower's grid every 3 s).

    ``emit`` receives one line about the release. Returns False (nothing installed) on
    another Flower version.
    """
    if not supported():
        return False
    try:
        import httpx
        from flwr.proto.fleet_pb2 import DeactivateNodeRequest
        from flwr.supercore.exit.exit_handler import add_exit_handler
        from flwr.supercore.interceptors.http.runtime_version import (
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supernode import start_client_internal
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor
    except ImportError:  # pragma: no cover - another Flower layout
        return False
    connect = getattr(start_client_internal, "http_request_response", None)
    if connect is None:  # pragma: no cover
        return False
    pending = release

    def deactivate(target: tuple[str, bool, Any, Any], node_id: int) -> None:
        """Flower's ``DeactivateNode`` for ``node_id``, signed with the node's key (raises)."""
        address, insecure, roots, keys = target
        with FleetHttpClient.from_server_address(
            address, insecure, roots,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                          NodeAuthHttpInterceptor(*keys)],
        ) as client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))

    def release_predecessor(target: tuple[str, bool, Any, Any], node_id: int,
                            settle: float) -> None:
        try:
            deactivate(target, node_id)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == httpx.codes.UNAUTHORIZED:
                emit(f"node {node_id} is not this key's node at the SuperLink (it restarted): "
                     "nothing to release")
            else:  # FLEET_NODE_DEACTIVATION_FAILED: offline already
                emit(f"node {node_id} is already offline at the SuperLink: nothing to release")
            return
        except (httpx.HTTPError, OSError, ValueError) as exc:
            emit(f"could not release node {node_id} at the SuperLink ({type(exc).__name__}); "
                 "connecting anyway")
            return
        emit(f"released node {node_id} at the SuperLink (its previous SuperNode died without "
             "leaving)" + (f"; waiting {settle:g}s so that the server records the message it "
                           "held as lost" if settle > 0 else ""))
        _time.sleep(settle)

    @contextlib.contextmanager
    def handing_over(*args: Any, **kwargs: Any) -> Iterator[Any]:
        nonlocal pending
        target = (str(args[0]), bool(args[1]), args[2], args[3]) if len(args) >= 4 else None
        if pending is not None and target is not None and target[3] is not None:
            node_id, settle = pending
            pending = None  # once: later connections of this process are its own node's
            release_predecessor(target, node_id, settle)
        with connect(*args, **kwargs) as conn:
            if target is not None and target[3] is not None and conn and isinstance(conn[0], int):
                node_id = conn[0]

                def leave_first() -> None:
                    try:
                        deactivate(target, node_id)
                    # BaseException: a second signal (KeyboardInterrupt) during the request
                    # must not escape an exit handler, or Flower's shutdown stops halfway and
                    # the process lingers (seen in the server-restart test under load).
                    except BaseException:  # noqa: BLE001 - Flower's own deactivation follows
                        pass

                add_exit_handler(leave_first, run_before_force_exit=True)
            yield conn

    start_client_internal.http_request_response = handing_over  # type: ignore[attr-defined]
    return True


def _merge_record(path: Path, values: dict[str, Any]) -> None:
    """Add ``values`` to the JSON record at ``path`` (a courtesy: never raises)."""
    try:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        data.update(values)
        path.write_text(json.dumps(data), encoding="utf-8")
    except OSError:  # Flower's exit must still happen
        pass


def read_exit_record(path: Path) -> ExitRecord | None:
    """The record :func:`install_exit_record` wrote, or None (clean exit, or none written)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    left = data.get("left") is True
    if not isinstance(data.get("code"), int):
        return ExitRecord(0, None, "", left) if left else None
    api = data.get("api-code")
    return ExitRecord(int(data["code"]), api if isinstance(api, int) else None,
                      str(data.get("message", ""))[:500], left)


# ------------------------------------------------------------------------- ClientApp launcher


class RuntimeTasks:
    """Asks a SuperNode's Runtime API for ClientApp tasks, as Flower's SuperExec does.

    Parameters
    ----------
    address:
        ``HOST:PORT`` of the SuperNode's ClientApp I/O (Runtime) API, loopback, no TLS.

    Raises
    ------
    RuntimeError
        On another Flower version (the caller falls back to Flower's SuperExec).
    """

    def __init__(self, address: str) -> None:
        if not supported():
            raise RuntimeError(f"warm ClientApp launcher needs Flower {FLOWER_SERIES}x, "
                               f"found {flower_version()}")
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        self._client = RuntimeHttpClient.from_server_address(  # no retry: the caller retries
            server_address=address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        )
        self._request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])

    def acquire(self) -> str | None:
        """The token of the next ClientApp task, or None when there is none (raises on I/O)."""
        res = self._client.AcquireTask(self._request)
        return str(res.token) if res.HasField("task") and res.token else None

    def close(self) -> None:
        self._client.close()


def run_clientapp_task(address: str, token: str, parent_pid: int) -> None:
    """Run one ClientApp task with Flower's own runtime (in a forked child)."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(runtime_api_address=address, token=token, insecure=True,
                  certificates=None, parent_pid=parent_pid,
                  runtime_dependency_install=False)


# ------------------------------------------------------------------------------ registration


def register_keys(connection: str, keys: Sequence[str],
                  emit: Callable[[str], None]) -> None:
    """``flwr supernode register KEY CONNECTION --format json`` for every key, in this process.

    Separate ``flwr`` processes cost 1-2 s each of start-up; Flower's own CLI code is called
    once per key instead. ``emit`` receives a marker line per key followed by Flower's JSON.
    On another Flower version every key is registered by a ``flwr`` process of its own.
    """
    if not supported():
        import subprocess

        for key in keys:
            emit("@@fedguard-key " + key)
            res = subprocess.run(["flwr", "supernode", "register", key, connection,
                                  "--format", "json"], capture_output=True, text=True,
                                 check=False, stdin=subprocess.DEVNULL)
            emit(res.stdout or json.dumps({"success": False, "error-message": res.stderr}))
        return
    import typer
    from flwr.cli.app import app

    command = typer.main.get_command(app)
    for key in keys:
        emit("@@fedguard-key " + key)
        try:
            command.main(["supernode", "register", key, connection, "--format", "json"],
                         standalone_mode=False)
        except SystemExit:
            pass
        except Exception as exc:  # noqa: BLE001 - reported as this key's result
            emit(json.dumps({"success": False, "error-message": repr(exc)}))


# ---------------------------------------------------------------------------------- ServerApp


def http_grid_type() -> type | None:
    """Flower's deployment grid class (``HttpGrid``) on Flower 1.42.x, else None."""
    if not supported():
        return None
    try:
        from flwr.superlink.grid.http_grid import HttpGrid
    except ImportError:  # pragma: no cover
        return None
    grid_type: type = HttpGrid
    return grid_type


# ------------------------------------------------------------------------- an in-process Grid


def _require_supported(what: str) -> None:
    if not supported():
        raise RuntimeError(f"{what} touches Flower {FLOWER_SERIES}x internals; "
                           f"Flower {flower_version()} is installed")


def deliver_in_process(message: Any) -> Any:
    """What a Grid and the wire do to a message pushed to a ClientApp in this process.

    The caller's ``message`` gets a fresh message id, as a Grid's ``push_messages`` sets it (the
    round loop matches replies to nodes through ``reply_to_message_id``). Returned is the copy
    the node receives: the same metadata with that id, and its own ``RecordDict`` (a handler
    never shares the server's object). Flower 1.42 has no public setter for the id and no
    public constructor taking metadata (its own grids use both); on another Flower version this
    raises ``RuntimeError``.

    Parameters
    ----------
    message:
        A ``flwr.app.Message`` built by the server side, not yet sent.

    Returns
    -------
    flwr.app.Message
        The message as delivered to the destination node.
    """
    import uuid

    _require_supported("deliver_in_process")
    from flwr.app import Message, Metadata, RecordDict

    sent = message.metadata
    sent.__dict__["_message_id"] = uuid.uuid4().hex
    metadata = Metadata(
        run_id=sent.run_id, message_id=sent.message_id, src_node_id=sent.src_node_id,
        dst_node_id=sent.dst_node_id, reply_to_message_id="", group_id=sent.group_id,
        created_at=_time.time(), ttl=sent.ttl, message_type=sent.message_type)
    # the metadata= form is Flower's internal constructor (not in its typed overloads)
    return Message(content=RecordDict(dict(message.content)), metadata=metadata)  # type: ignore[call-overload]


def set_task_identity(run_id: int, node_id: int = 0, task_id: int = 1) -> None:
    """Set the process-wide task identity that Flower's runtimes set before running an app.

    Messages built in a process that Flower did not start (an in-process Grid) need it. Flower
    1.42 only; on another version this raises ``RuntimeError``.
    """
    _require_supported("set_task_identity")
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = task_id
