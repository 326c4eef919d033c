"""Child processes a fedguard command owns: started, watched, stopped and never orphaned.

Both role launchers (:mod:`server.deploy` for the SuperLink side, :mod:`clients.deploy` for the
SuperNode side) start Flower processes. The roles may not import each other (DESIGN §2), so
the one set of rules for owning processes lives here, in the layer below both:

* **Death of the owner is death of the child.** Every child is started with the Linux
  parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``, set in the child between fork and
  exec) so it is told to stop the moment its fedguard process dies, however it dies, SIGKILL
  included. Flower's own helpers (SuperExec, ``flwr-serverapp``, ``flwr-clientapp``) are
  started by name from ``PATH``; a shim of each (:func:`helper_shims`) asks for SIGKILL on its
  parent's death before it executes the real one, so the chain holds down to the ServerApp.
  SIGTERM rather than SIGKILL: a SuperNode that is told to stop deactivates its node at the
  SuperLink, which frees the node for a restarted client at once.
* **A restart cleans up after a crash.** :class:`Incarnation` keeps ``<name>.pid`` (JSON: the
  owner's pid and start time, and the process tree it owned, refreshed every 2 s). A new
  owner finds a dead predecessor's record, stops whatever of that tree is still alive (pids
  are checked against their recorded start time, so a recycled pid is never touched) and
  says so; a *live* predecessor is refused with its pid.
* **Everything is stopped by process id**, the whole tree (:func:`stop_tree`); Flower starts
  some helpers in sessions of their own, so process groups alone do not reach them.

Linux only (``/proc`` and ``prctl``); elsewhere the parent-death signal is skipped and the
restart clean-up still runs.
"""

from __future__ import annotations

import ctypes
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from federation.errors import FedguardError

__all__ = [
    "DeployError",
    "Incarnation",
    "ManagedProcess",
    "die_with_parent",
    "flower_bin",
    "flower_env",
    "free_port",
    "helper_shims",
    "parent_death_preexec",
    "port_free",
    "port_holders",
    "process_tree",
    "stop_tree",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class DeployError(FedguardError):
    """A deployment step failed; the message says which, names the flag, and what to do."""


# ------------------------------------------------------------------------------ /proc


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) < 20:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live, non-zombie process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] != "Z":
            out[int(entry)] = st[1]
    return out


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:160] or "?"


def process_tree(root: int, parents: Mapping[int, int] | None = None) -> list[int]:
    """``root`` and all its live descendants (sessions of their own included), root first.

    ``parents`` is a snapshot of pid -> parent pid (one /proc scan serves many roots).
    """
    if parents is None:
        parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree: list[int] = []
    todo = [root] if root in parents else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(root: int, grace: float = 10.0, *, hard: bool = False,
              extra: Sequence[int] = ()) -> None:
    """Stop ``root``, every descendant and the pids in ``extra``, by process id.

    ``SIGTERM`` to the root first (Flower shuts its helpers down and a SuperNode tells the
    SuperLink it leaves), ``SIGTERM`` to what is left after half of ``grace`` seconds, and
    ``SIGKILL`` to everything still alive after ``grace``. With ``hard``, ``SIGKILL`` at once.
    """
    known = set(process_tree(root)) | set(extra)
    if hard:
        _signal(sorted(known), signal.SIGKILL)
    else:
        _signal([root, *extra], signal.SIGTERM)
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


# ------------------------------------------------------------------------------ ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether a TCP server could bind ``host:port`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holders(port: int) -> list[str]:
    """``"pid N (command line)"`` for each visible process listening on TCP ``port``.

    Only this user's processes are visible (``/proc/PID/fd``); an empty list means the holder
    belongs to someone else or the port is free.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            # local address "HEX_IP:HEX_PORT", state 0A = LISTEN, inode in column 9
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    holders: list[str] = []
    if not inodes:
        return holders
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                holders.append(f"pid {entry} ({_cmdline(int(entry))})")
                break
    return holders


# ------------------------------------------------------------------------------ environment


def flower_bin(name: str) -> str:
    """A Flower executable next to this interpreter (the virtual environment), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found next to {sys.executable} or on PATH; install flwr")
    return found


_SHIM = """#!{python}
# fedguard: {name} that dies with its parent (written by federation.processes.helper_shims)
import ctypes, os, signal, sys
parent = os.getppid()
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(1)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def helper_shims(dest: Path) -> Path:
    """Write a shim for each Flower helper (:data:`~federation.flower_internals.FLOWER_HELPERS`).

    Flower's own helpers watch their parent and stop when it goes, but only cooperatively
    (a signal to themselves, then a graceful shutdown that may wait on a SuperLink that is
    gone). A shim asks for SIGKILL on its parent's death, then executes the real helper (the
    request survives ``exec``), so the chain from a fedguard command down to every ServerApp or
    ClientApp process holds even then. Returns ``dest``, to put first on ``PATH``.
    """
    from federation.flower_internals import FLOWER_HELPERS

    dest.mkdir(parents=True, exist_ok=True)
    for name in FLOWER_HELPERS:
        real = Path(sys.executable).parent / name
        if not real.is_file():
            found = shutil.which(name)
            if found is None:
                continue
            real = Path(found)
        shim = dest / name
        shim.write_text(_SHIM.format(python=sys.executable, name=name, real=str(real)),
                        encoding="utf-8")
        shim.chmod(0o755)
    return dest


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: our FLWR_HOME, no telemetry, no dependency installs.

    ``PATH`` starts with the helper shims (:func:`helper_shims`, in ``FLWR_HOME/bin``) and the
    interpreter's directory, because the SuperLink and SuperNode start their helpers by name.
    ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's default: 1 s) is set to 0.1 s unless the
    caller's environment sets it.
    """
    env = dict(os.environ)
    shims = helper_shims(flwr_home / "bin")
    env["PATH"] = os.pathsep.join([str(shims), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------ children


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no glibc
        return None
    return fn


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies.

    Call it in the parent, just before starting the child: libc is looked up here, so the
    child only makes one system call between fork and exec (nothing that could take a lock
    another thread holds). If the parent is already gone when the call is made, the child
    exits at once. None where there is no ``prctl`` (not Linux).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return set_death_signal


def die_with_parent() -> None:
    """In this (already running) process: receive SIGTERM when the parent process dies.

    For children made with ``fork()`` alone (the warm ClientApp launcher's tasks).
    """
    prctl = _prctl()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


class ManagedProcess:
    """A child process whose output is logged to a file and handed line by line to a callback.

    The child gets the parent-death signal (see the module docstring): it is told to stop when
    the *thread* that started it ends, so start long-lived children from the main thread.

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
            start_new_session=new_session, preexec_fn=parent_death_preexec(),
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        if stream is None:  # pragma: no cover - stdout is always a pipe here
            return
        with stream:
            for raw in stream:
                self._line(_ANSI.sub("", raw.rstrip("\n")))

    def _line(self, line: str) -> None:
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
        """The exit code, or None while it runs."""
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code (and the last output line)."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` output lines."""
        return self.lines[-n:]

    def stop(self, grace: float = 10.0, *, hard: bool = False) -> int | None:
        """Stop the process and its descendants (see :func:`stop_tree`); return its exit code."""
        if self.proc.poll() is None or process_tree(self.pid):
            stop_tree(self.pid, grace, hard=hard)
        try:
            code: int | None = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            code = None
        self._reader.join(timeout=5)
        self._log.close()
        return code


# ------------------------------------------------------------------------------ incarnations


class Incarnation:
    """``<folder>/<name>.pid``: which process owns a run folder or state directory, and its tree.

    Parameters
    ----------
    path:
        The record file (JSON: ``pid``, ``start`` in clock ticks since boot, ``tree``: a list
        of ``[pid, start]`` pairs, refreshed at most every 2 s by :meth:`refresh`).
    what:
        How messages name the owner ("fedguard server").
    hint:
        What to do about a live owner (names the flag that picks another folder).
    """

    def __init__(self, path: Path, what: str, hint: str) -> None:
        self.path = path
        self.what = what
        self.hint = hint
        self._last = 0.0
        self._lock = threading.Lock()

    def claim(self, say: Callable[[str], None]) -> None:
        """Take the folder: refuse a live owner, stop what a dead one left, write our record.

        Raises
        ------
        DeployError
            Another live process owns the folder (its pid is named).
        """
        record = self._read()
        if record is not None:
            pid, start, tree = record
            st = _stat(pid)
            if pid != os.getpid() and st is not None and st[2] == start and st[0] != "Z":
                raise DeployError(f"another {self.what} (pid {pid}) is running on "
                                  f"{self.path.parent}; stop it (kill {pid}) or {self.hint}")
            left = [p for p, s in tree if p != os.getpid() and (x := _stat(p)) is not None
                    and x[2] == s and x[0] != "Z"]
            if left:
                names = ", ".join(f"{p} ({_cmdline(p).split(' ')[0].rsplit('/', 1)[-1]})"
                                  for p in left[:6])
                say(f"a previous {self.what} (pid {pid}) died and left {len(left)} "
                    f"process(es) running: {names}; stopping them")
                for p in left:
                    stop_tree(p, 5.0)
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Record our current process tree (at most every 2 s unless ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < 2.0:
                return
            self._last = now
            me = os.getpid()
            parents = _parents()
            tree = [[p, st[2]] for p in process_tree(me, parents)
                    if (st := _stat(p)) is not None]
            own = _stat(me)
            data = {"pid": me, "start": own[2] if own else 0, "tree": tree}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.path)

    def release(self) -> None:
        """Remove the record (a clean stop)."""
        with self._lock:
            self.path.unlink(missing_ok=True)

    def _read(self) -> tuple[int, int, list[tuple[int, int]]] | None:
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        pid, start, tree = data.get("pid"), data.get("start"), data.get("tree")
        if not isinstance(pid, int) or not isinstance(start, int) or not isinstance(tree, list):
            return None
        pairs = [(int(p), int(s)) for p, s in
                 (t for t in tree if isinstance(t, list) and len(t) == 2)
                 if isinstance(p, int) and isinstance(s, int)]
        return pid, start, pairs
