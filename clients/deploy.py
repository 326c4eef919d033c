"""``fedguard client``: the SuperNode side of a real deployment (the trainer role's launcher).

Why here: DESIGN §2 puts each role's real-process launcher with that role. This module starts
and owns one trainer's processes; the ClientApp they run is :mod:`clients.app`. It imports no
``server`` code; the process rules it shares with the server launcher are in
:mod:`federation.processes`, every private Flower touch in :mod:`federation.flower_internals`.

What runs::

    fedguard client ─┬─ python -m clients._supernode   (flower-supernode, faster polling,
                     │                                    --isolation process, exit record)
                     └─ python -m clients._clientexec  (warm launcher: forks one ClientApp
                                                         per message, clients.app:app)

``FLWR_HOME`` is ``STATE_DIR/flwr``. Every child gets the parent-death signal, so a killed
``fedguard client`` takes its SuperNode (which then deactivates its node at the SuperLink) and
its launcher with it; ``STATE_DIR/client.pid`` lets the next ``fedguard client`` on the same
state directory stop anything that survived, and refuses a second live client there.

Why a SuperNode ended comes from its exit record (Flower's exit code and the SuperLink's API
error code, :func:`federation.flower_internals.read_exit_record`), not from its log:

* refused (API code 2004): either the key is not registered, or a node with this key is still
  online at the SuperLink (another client with the same bundle, or a predecessor that died
  less than two heartbeats ago). The SuperLink gives the same answer for both; the client
  tells them apart by what it knows (a predecessor's lease, an earlier connection) and says so;
* TLS failure: exit code 4 at once; unreachable: the SuperNode retries with backoff, then
  exit code 5 after ``--max-wait-time``;
* a SuperLink that restarted (and forgot this node): a fresh SuperNode, with backoff.

A client whose predecessor died without leaving the SuperLink has its new SuperNode release
that node first (Flower's Fleet ``DeactivateNode``, signed with the trainer's own key), so it
is not refused as "still online" for two heartbeats; if the predecessor held a message, it
then waits a few seconds for the server to record that message as lost (:class:`_Lease`),
because a node back too soon would leave the server waiting for it until ``--round-timeout``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.flower_internals import (
    API_CODE_ACTIVATION_FAILED,
    RELEASE_LINE_PREFIX,
    SUPERNODE_PATTERNS,
    SUPERNODE_RELEASE_ENV,
    SUPERNODE_STATUS_ENV,
    ExitRecord,
    features_off,
    read_exit_record,
)
from federation.processes import (
    DeployError,
    Incarnation,
    ManagedProcess,
    flower_bin,
    flower_env,
    free_port,
)

__all__ = [
    "CLIENT_EXIT_REFUSED",
    "CLIENT_EXIT_TLS",
    "CLIENT_EXIT_UNREACHABLE",
    "EXIT_CODES",
    "ClientOptions",
    "NodeAttempt",
    "describe_line",
    "run_client",
]

Say = Callable[[str], None]

CLIENT_EXIT_REFUSED = 3
"""``fedguard client``: the SuperLink refused this node (key not registered, or still online)."""
CLIENT_EXIT_TLS = 4
"""``fedguard client``: the TLS handshake failed (wrong CA or host name)."""
CLIENT_EXIT_UNREACHABLE = 5
"""``fedguard client``: gave up reaching the SuperLink (``--max-wait-time``)."""
EXIT_CODES = {0: "stopped (SIGTERM)", 2: "usage or bundle error (wrong passphrase included)",
              CLIENT_EXIT_REFUSED: "refused by the SuperLink", CLIENT_EXIT_TLS: "TLS failure",
              CLIENT_EXIT_UNREACHABLE: "SuperLink unreachable", 130: "interrupted (Ctrl-C)"}
"""Every exit code of ``fedguard client`` and its meaning (docs/deployment.md lists them)."""

EXIT_GRACE_S = 15.0
"""Seconds a SuperNode may keep running after writing its exit record before the supervisor
stops it. Why 15: Flower's own force-exit timer is 5 s; a SuperNode still alive three times
later is stuck in its shutdown (a retry thread), and the client must restart or end."""


# ---------------------------------------------------------------------------------- client


@dataclass
class ClientOptions:
    """What ``fedguard client`` was asked to do (times in seconds)."""

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
    warm_start: bool = True  # ClientApps forked from a warm launcher (see clients._clientexec)
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
class NodeAttempt:
    """What one SuperNode's life showed (from its log lines and its exit record)."""

    connected: bool = False
    node_id: str = ""
    refused: bool = False
    tls_error: bool = False
    gave_up: bool = False
    forgotten: bool = False
    retries: int = 0
    last_error: str = ""
    round_: str = ""
    busy: bool = False
    since: float = field(default_factory=time.monotonic)
    on_busy: Callable[[bool], None] | None = None  # told first, before anything is printed

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        if self.on_busy is not None:
            self.on_busy(busy)

    def read_record(self, record: ExitRecord | None) -> None:
        """Take the cause from the SuperNode's exit record (structured) where there is one."""
        if record is None or self.connected:
            return
        if record.api_code == API_CODE_ACTIVATION_FAILED:
            self.refused = True
        elif record.tls:
            self.tls_error = True
        elif record.code != 0 and not self.last_error:
            self.last_error = record.message.splitlines()[-1][:200] if record.message else ""


def _load_bundle(opts: ClientOptions) -> tuple[object, str]:
    from crypto.keys import PASSPHRASE_ENV_VAR, load_trainer_bundle, read_passphrase
    from federation.errors import DecryptionFailed, FedguardError

    try:
        passphrase = read_passphrase()
        return load_trainer_bundle(opts.keys, passphrase), passphrase
    except DecryptionFailed:
        raise DeployError(f"--keys {opts.keys}: cannot open the sealed CKKS secret (wrong "
                          f"passphrase in {PASSPHRASE_ENV_VAR}, or the file was altered)"
                          ) from None
    except FedguardError as exc:
        raise DeployError(f"--keys {opts.keys}: {exc}") from None


def run_client(opts: ClientOptions, say: Say, stop: threading.Event | None = None) -> int:
    """Run ``fedguard client`` until stopped; return the exit code (:data:`EXIT_CODES`).

    Starts a SuperNode with the trainer's bundle, restarts it when a connected SuperLink
    forgets it (restarted SuperLink), and turns Flower's log into short progress lines.

    Raises
    ------
    DeployError
        Bad bundle or passphrase, data directory, partition flags, ledger; another live client
        on the same ``--state-dir``.
    """
    from clients.ledger import LedgerFile
    from crypto.keys import PASSPHRASE_ENV_VAR
    from federation.errors import FedguardError

    stop = stop or threading.Event()
    bundle, passphrase = _load_bundle(opts)
    b: Any = bundle
    state = opts.state_dir
    state.mkdir(parents=True, exist_ok=True)
    owner = Incarnation(state / "client.pid", "fedguard client",
                        "give each client its own --state-dir")
    owner.claim(say)
    try:
        ledger = (opts.ledger or state / "privacy-ledger.jsonl").expanduser().resolve()
        ledger.parent.mkdir(parents=True, exist_ok=True)
        try:
            events = len(LedgerFile(ledger).load().events)
        except FedguardError as exc:
            raise DeployError(f"--ledger {ledger}: {exc}") from None
        for note in features_off():
            say(f"Flower internals: {note} — off on this Flower version")
        say(f"trainer bundle: {b.directory} ({b.name} of federation {b.federation!r}, "
            f"CKKS key {b.ckks_fingerprint}; secret context unsealed)")
        say(f"authentication key: {b.auth_private_key_path}; CA: {b.ca_cert_path}")
        say(f"privacy ledger: {ledger} ({events} event(s) recorded so far)")
        extra_env = {PASSPHRASE_ENV_VAR: passphrase, **opts.extra_env}
        node_config = _node_config(opts, ledger, b.directory, extra_env, say)
        return _supervise(opts, b, node_config, extra_env, owner, say, stop)
    finally:
        owner.release()


def _node_config(opts: ClientOptions, ledger: Path, key_dir: Path,
                 extra_env: dict[str, str], say: Say) -> list[str]:
    if opts.data_dir:
        from federation.data import load_fashion_mnist
        from federation.errors import FedguardError

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
        raise DeployError(f"--partition-id {pid} not in 0..{num - 1} (--num-partitions {num})")
    if opts.torch_threads:
        extra_env["FEDGUARD_TORCH_THREADS"] = str(opts.torch_threads)
    return [f"partition-id={pid}", f"num-partitions={num}",
            f"ledger-file={_literal(str(ledger), 'ledger path')}",
            f"key-dir={_literal(str(key_dir), 'key directory')}"]


def _supervise(opts: ClientOptions, b: Any, node_config: list[str], extra_env: dict[str, str],
               owner: Incarnation, say: Say, stop: threading.Event) -> int:
    """The SuperNode (and launcher) loop: start, watch, restart, or end with an exit code."""
    state = opts.state_dir
    status_file = state / "supernode-exit.json"
    if opts.fast_polling:
        extra_env["FEDGUARD_SUPERNODE_HEARTBEAT"] = str(opts.heartbeat)
    extra_env[SUPERNODE_STATUS_ENV] = str(status_file)
    extra_env["FEDGUARD_SUPERNODE_LOG"] = str(state / "supernode.log")
    env = flower_env(state / "flwr", extra_env)
    port = opts.port or free_port()
    argv_base = ([sys.executable, "-m", "clients._supernode"] if opts.fast_polling
                 else [flower_bin("flower-supernode")])
    argv = [*argv_base,
            "--root-certificates", str(b.ca_cert_path),
            "--superlink", opts.superlink,
            "--auth-supernode-private-key", str(b.auth_private_key_path),
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
            [sys.executable, "-m", "clients._clientexec",
             "--runtime-api-address", f"127.0.0.1:{port}", "--parent-pid", str(os.getpid())],
            env=env, log_path=state / "clientapp.log", on_line=lambda line: _app_line(line, say),
            new_session=opts.new_session)

    lease = _Lease(state / "supernode.lease", opts.heartbeat if opts.fast_polling else 30.0)
    # The launcher's imports (torch, Opacus, TenSEAL) take longest; they compete for the CPU
    # with the SuperNode's start, and a node that connects sooner joins a round sooner (a
    # message waits at the SuperNode for the launcher). So the launcher starts during a lease
    # wait, or else once the SuperNode is connected.
    if opts.warm_start and lease.will_wait(clean_exit=_clean_exit(status_file)):
        launcher = start_launcher()
    release = lease.claim(say, stop, clean_exit=_clean_exit(status_file))
    refusals = 0
    restart_wait = 1.0
    ever_connected = False
    try:
        while not stop.is_set():
            if opts.warm_start and launcher is not None and launcher.poll() is not None:
                say(f"the ClientApp launcher exited (code {launcher.poll()}); restarting it")
                launcher.stop(grace=1.0)
                launcher = start_launcher()
            attempt = NodeAttempt(on_busy=lease.beat)
            status_file.unlink(missing_ok=True)

            def on_line(line: str, a: NodeAttempt = attempt) -> None:
                for text in describe_line(line, a, opts.superlink):
                    say(text)

            proc = ManagedProcess("supernode", argv, log_path=state / "supernode.log",
                                  env={**env, SUPERNODE_RELEASE_ENV: release} if release else env,
                                  on_line=on_line, new_session=opts.new_session)
            exit_seen: float | None = None  # when the SuperNode first wrote its exit record
            try:
                while proc.poll() is None and not stop.is_set():
                    if exit_seen is None and status_file.exists():
                        exit_seen = time.monotonic()
                    elif exit_seen is not None and time.monotonic() - exit_seen > EXIT_GRACE_S:
                        say(f"the SuperNode recorded its exit {EXIT_GRACE_S:g} s ago but is still "
                            "running; stopping it")
                        break
                    if opts.warm_start and launcher is None and attempt.connected:
                        launcher = start_launcher()
                    if attempt.connected and lease.node_id != attempt.node_id:
                        lease.node_id = attempt.node_id  # a successor may have to release it
                        lease.beat(attempt.busy, force=True)
                    lease.beat(attempt.busy)
                    owner.refresh()
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    proc.stop(grace=10.0)
                code = proc.wait()
                lease.beat(attempt.busy, force=True)
            attempt.read_record(read_exit_record(status_file))
            ever_connected = ever_connected or attempt.connected
            if stop.is_set():
                say("stopped")
                return 0
            if attempt.tls_error:
                say(f"TLS handshake with {opts.superlink} failed: the server certificate does "
                    f"not match {b.ca_cert_path} or the host name; check --superlink and "
                    "the bundle (--keys)")
                return CLIENT_EXIT_TLS
            if attempt.refused and not attempt.connected:
                refusals += 1
                key = b.auth_public_key_path.name
                if ever_connected or lease.predecessor_recent:
                    cause = (f"a node with this key ({key}) is still online there: another "
                             "fedguard client with this bundle is running, or a predecessor "
                             "died less than two heartbeats ago")
                else:
                    cause = (f"this node's key ({key}) is not registered there, or another "
                             "fedguard client with this bundle is online")
                if refusals > opts.refused_retries:
                    say(f"refused by the SuperLink {refusals} time(s): {cause}. Giving up "
                        "(--refused-retries); ask the operator to register the key, or stop "
                        "the other client")
                    return CLIENT_EXIT_REFUSED
                wait = min(5.0 * 2 ** (refusals - 1), 30.0)
                say(f"refused by the SuperLink: {cause}; retry {refusals}/"
                    f"{opts.refused_retries} in {wait:.0f}s")
                stop.wait(wait)
                continue
            if attempt.gave_up or (not attempt.connected and code != 0):
                say(f"could not reach the SuperLink at {opts.superlink}"
                    + (f" within {opts.max_wait_time:.0f}s (--max-wait-time)"
                       if opts.max_wait_time else "")
                    + (f": {attempt.last_error}" if attempt.last_error else "") + "; giving up")
                return CLIENT_EXIT_UNREACHABLE
            # It was connected and the SuperNode ended: the SuperLink went away or forgot us.
            refusals = 0
            if time.monotonic() - attempt.since > 60:
                restart_wait = 1.0
            why = attempt.last_error or (
                "the SuperLink dropped this node; it probably restarted or the run ended"
                if code == 0 else "")
            say(f"the SuperNode stopped (exit code {code}" + (f": {why}" if why else "")
                + f"); starting a new one in {restart_wait:.0f}s (the privacy ledger is kept)")
            stop.wait(restart_wait)
            restart_wait = min(restart_wait * 2, 20.0)
            release = lease.claim(say, stop, superlink_restarted=attempt.retries > 0 or code == 0
                                  or attempt.forgotten, clean_exit=_clean_exit(status_file))
        return 0
    finally:
        if launcher is not None:
            launcher.stop(grace=5.0)
        lease.release()


def _clean_exit(status_file: Path) -> bool:
    """Whether the last SuperNode left the SuperLink on its way out (node deactivated)."""
    record = read_exit_record(status_file)
    if record is not None and record.left:
        return True
    try:  # Flower's whole shutdown ran (clients._supernode marks it)
        return bool(json.loads(status_file.read_text(encoding="utf-8")).get("ended"))
    except (OSError, ValueError, AttributeError):
        return False


def _app_line(line: str, say: Say) -> None:
    """Pass on what matters from the ClientApp processes (fedguard warnings, errors)."""
    if line.startswith(("ERROR", "WARNING", "fedguard:", "Traceback")) or "could not" in line:
        say(line[:300])


_RELEASE_SETTLE = 3.5
"""Seconds a SuperNode waits after releasing a node that died holding a message: the server
must pull once while the node is offline to record that message as lost (fedguard's ServerApp
pulls every 0.5 s or less, Flower's own grid every 3 s)."""


class _Lease:
    """``STATE_DIR/supernode.lease``: this client's SuperNode, when last alive, node id, busy.

    A SuperNode killed without leaving the SuperLink (SIGKILL of the SuperNode itself, a
    machine crash) keeps its node *online* there for 2 heartbeat intervals, so a SuperNode
    with the same key is refused until then; if it held a message (pulled, not yet answered),
    the SuperLink answers for it only once the node is offline, and a node back too soon
    takes the same node id and leaves the ServerApp waiting for that message until its
    ``--round-timeout``. :meth:`claim` therefore has the next SuperNode *release* the node
    first (Flower's Fleet ``DeactivateNode``, signed with the same key:
    :func:`federation.flower_internals.install_node_handover`), and only where that is not
    available waits out the window. The file is refreshed every 2 s and removed on a clean stop.
    """

    def __init__(self, path: Path, heartbeat: float) -> None:
        self.path = path
        self.window = 2 * heartbeat + 3.0
        self.predecessor_recent = False
        self.node_id = ""  # set once this client's SuperNode is connected
        self._last = 0.0
        self._busy = False
        self._lock = threading.Lock()  # the main loop and the output reader both write

    def _read(self) -> tuple[bool, float, int | None]:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return False, float("inf"), None
        if not isinstance(info, dict):
            return False, age, None
        node = info.get("node")
        return bool(info.get("busy")), age, node if isinstance(node, int) else None

    def _stale(self, superlink_restarted: bool, clean_exit: bool) -> tuple[bool, float, int | None]:
        """(busy, age, node) of a predecessor that may still hold its node online, else age inf."""
        busy, age, node = self._read()
        # After a SuperLink restart the node and its message died with the old SuperLink, and a
        # SuperNode that shut down cleanly deactivated its node: nothing is held.
        if age >= self.window or superlink_restarted or clean_exit:
            return False, float("inf"), None
        return busy, age, node

    def will_wait(self, *, superlink_restarted: bool = False, clean_exit: bool = False) -> bool:
        """Whether :meth:`claim` would wait (died busy without leaving; node not releasable)."""
        from federation.flower_internals import supported

        busy, age, node = self._stale(superlink_restarted, clean_exit)
        return busy and age < self.window and (node is None or not supported())

    def claim(self, say: Say, stop: threading.Event, *, superlink_restarted: bool = False,
              clean_exit: bool = False) -> str:
        """Take over from the previous SuperNode; return the release request for the next one.

        The return value is ``NODE_ID:SETTLE`` for
        :data:`~federation.flower_internals.SUPERNODE_RELEASE_ENV`, or empty.
        """
        from federation.flower_internals import supported

        self.predecessor_recent = self._read()[1] < self.window
        busy, age, node = self._stale(superlink_restarted, clean_exit)
        release = ""
        if node is not None and supported():
            settle = _RELEASE_SETTLE if busy else 0.0
            release = f"{node}:{settle:g}"
            say(f"the previous SuperNode of this client died {age:.0f}s ago without leaving the "
                f"SuperLink (node {node}" + (", holding a message" if busy else "") + "); the new "
                "one releases that node first" + (f" and waits {settle:g}s for the server to "
                                                  "record the message as lost" if busy else ""))
        elif busy and age < self.window:
            wait = self.window - age
            say(f"the previous SuperNode of this client stopped {age:.0f}s ago while handling a "
                f"message; waiting {wait:.0f}s until the SuperLink reports that message as lost "
                "(otherwise the server would wait for it until its --round-timeout)")
            stop.wait(wait)
        self._busy = False
        self.node_id = ""
        self.beat(False, force=True)
        return release

    def beat(self, busy: bool, force: bool = False) -> None:
        with self._lock:
            now = time.time()
            if not force and busy == self._busy and now - self._last < 2.0:
                return
            self._busy, self._last = busy, now
            info: dict[str, object] = {"pid": os.getpid(), "busy": busy}
            if self.node_id.isdigit():
                info["node"] = int(self.node_id)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(info), encoding="utf-8")
            os.replace(tmp, self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _what(message_type: str, round_: str) -> str:
    if message_type == "train":
        return f"round {round_ or '?'} (train)"
    if message_type == "evaluate":
        return "final evaluation"
    return f"{message_type} (round {round_ or '?'})"


_P = {name: pattern for name, (pattern, _example) in SUPERNODE_PATTERNS.items()}


def describe_line(line: str, a: NodeAttempt, superlink: str) -> list[str]:
    """Read one SuperNode log line into ``a``; return the progress lines it gives (maybe none).

    Parameters
    ----------
    line:
        One line of the SuperNode's output, colours removed.
    a:
        The state of this SuperNode's life; updated in place (connected, busy, retries...).
    superlink:
        ``HOST:PORT`` as the user gave it (``--superlink``), for the messages.
    """
    if m := _P["node-id"].search(line):
        a.connected, a.node_id = True, m.group(1)
        return [f"connected to the SuperLink at {superlink} as node {a.node_id}; waiting for work"]
    if m := _P["retry"].search(line):
        a.retries += 1
        if a.retries > 3 and a.retries % 5 and float(m.group(1)) < 10:
            return []  # keep the terminal readable during a long outage
        if a.connected:
            return [f"lost contact with the SuperLink at {superlink}; "
                    f"retrying in {float(m.group(1)):.1f}s (attempt {a.retries})"]
        return [f"cannot reach the SuperLink at {superlink}; retrying in "
                f"{float(m.group(1)):.1f}s (attempt {a.retries}, backoff up to 20s)"]
    if _P["refused"].search(line):
        a.refused = True  # also in the exit record; this line serves other Flower versions
        return []
    if _P["tls"].search(line):
        a.tls_error = True
        return []
    if _P["gave-up"].search(line):
        a.gave_up = a.gave_up or not a.connected  # after connecting: a restart follows
        return []
    if m := _P["round"].search(line):
        a.round_ = m.group(2) or ""
        return []
    if m := _P["receiving"].search(line):
        a.set_busy(True)
        return [f"{_what(m.group(1), a.round_)}: request received"]
    if m := _P["sending"].search(line):
        return [f"{_what(m.group(1), a.round_)}: reply sent"]
    if _P["sent"].search(line):
        a.set_busy(False)
        return []
    if _P["reconnected"].search(line):
        return [f"reached the SuperLink at {superlink}"]
    if _P["forgotten"].search(line):
        a.forgotten = True
        a.last_error = "the SuperLink no longer knows this node (it restarted)"
        return []
    if line.startswith(RELEASE_LINE_PREFIX):  # clients._supernode on a dead predecessor's node
        return [line[len(RELEASE_LINE_PREFIX):]]
    if "Exit Code:" in line:
        return []  # the exit record says why; the lines after it repeat it
    if line.startswith(("ERROR", "fedguard:")) or "could not handle" in line:
        a.last_error = line.split(":", 1)[-1].strip()[:200] or a.last_error
        return [line[:300]]
    return []
