"""A live progress line for long federations: which round, which phase, who replied, how long.

One component serves ``fedguard simulate``, ``scenarios``, ``bench`` and the deployment server.
It needs two things from a run, neither of which changes the round loop:

* :meth:`RoundProgress.watch` wraps the Flower ``Grid`` the loop talks to. Every message phase of
  the loop (train, screen, key setup, final evaluation) is one ``send_and_receive`` call; the
  wrapper pushes the messages, pulls replies itself and updates the live line after each pull
  (``replied / expected``, seconds since the phase began). Round number and phase come from the
  messages' ``group_id`` and ``message_type`` (:mod:`federation.protocol`).
* :meth:`RoundProgress.line` is the ``progress`` callable of :class:`server.report.RunWriter`:
  finished round lines are printed above the live line, so the console keeps one line per round.

Wiring in a ServerApp::

    display = RoundProgress(total_rounds=cfg.run.rounds)
    with display:
        app = make_server_app(flat, progress=display.line, grid_hook=display.watch)

When the console is not a terminal (a pipe, a file, CI) there is no live line and no terminal
control codes at all: only the finished lines are printed, as plain text.

In a deployment the round loop runs in Flower's ``flwr-serverapp`` process, not in the
``fedguard server`` process that owns the console. There the ServerApp's watcher writes the
phase to ``progress.json`` in the run folder (:data:`PROGRESS_FILE`, a few hundred bytes,
rewritten atomically when the phase or the reply count changes) and the ``fedguard server``
process draws it with :meth:`RoundProgress.follow`. The file also tells an operator without a
terminal what the server is waiting for (``cat RUN_DIR/progress.json``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from flwr.app import Message
from rich.console import Console
from rich.live import Live
from rich.text import Text

from federation import protocol as P
from server.report import atomic_write

__all__ = ["FLOWER_PULL_WAIT", "MAX_PULL_WAIT", "PHASE_NAMES", "PROGRESS_FILE", "RoundProgress", "phase_name",
           "polling"]

PROGRESS_FILE = "progress.json"
"""The run folder's phase status file: ``{"round", "message_type", "replied", "expected",
"started"}`` (``started``: Unix seconds when the phase began), written by the ServerApp."""

PHASE_NAMES: dict[str, str] = {
    P.MSG_TRAIN: "train",
    P.MSG_EVALUATE: "final evaluation",
    P.MSG_KEYS_SETUP: "key setup",
    P.MSG_KEYS_WRAP: "key setup",
    P.MSG_SCREEN: "encrypted screening",
    P.MSG_VERIFY: "verification (after a rollback)",
}
"""Message type -> the phase name shown on the live line."""

_MIN_PULL_WAIT = 0.05  # s: first pause between two pulls of replies
MAX_PULL_WAIT = 0.5  # s: the longest pause between two pulls (default)
FLOWER_PULL_WAIT = 3.0  # s: Flower 1.42's deployment grid's fixed pause (kept with max wait 0)
_PULL_WAIT_SHARE = 0.05  # the pause after an empty pull: this share of the phase's time so far


def phase_name(message_type: str) -> str:
    """The live line's name for a message type (the type itself when it is not ours)."""
    return PHASE_NAMES.get(message_type, message_type)


class RoundProgress:
    """Live ``round r/R · phase · k/n replied · t s`` line plus the finished round lines.

    Parameters
    ----------
    total_rounds:
        Rounds the run plans (the ``R`` shown); > 0.
    console:
        Where to draw; default a new stdout console. The live line is drawn only when this
        console is a terminal.
    live:
        Force the live line on or off (default: on exactly when ``console.is_terminal``).
    clock:
        Monotonic seconds (a parameter so tests can drive time).
    prefix:
        Put before every finished line and the live line (e.g. an indent under a heading).
    status_file:
        Also write each phase update there (:data:`PROGRESS_FILE` in a run folder), for a
        process that draws the line elsewhere (:meth:`follow`).

    Thread safety: the ServerApp of a simulation runs in a thread of its own; every update
    goes through one lock, and rich's ``Live`` redraws from its own thread.
    """

    def __init__(self, total_rounds: int, *, console: Console | None = None,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 prefix: str = "", status_file: Path | None = None) -> None:
        if total_rounds < 1:
            raise ValueError(f"total_rounds must be >= 1, got {total_rounds}")
        self.total_rounds = total_rounds
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.enabled = self.console.is_terminal if live is None else live
        self._clock = clock
        self.prefix = prefix
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._status = ""
        self.lines: list[str] = []
        """Every finished line printed so far (plain text)."""
        self.phases: list[tuple[str, str, int, int]] = []
        """``(round, phase, replied, expected)`` at the end of every phase seen so far."""
        self.status_file = status_file
        self._written: tuple[str, str, int, int] | None = None
        self._followed: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._phase: tuple[str, str, int, int, float] | None = None  # as read by follow()

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> RoundProgress:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start drawing the live line (nothing happens when it is disabled)."""
        with self._lock:
            self._status = f"{self.prefix}starting: clients, data and models load before the first phase"
            if self.enabled and self._live is None:
                self._live = Live(Text(self._status, style="dim"), console=self.console, transient=True,
                                  refresh_per_second=4, redirect_stdout=False,
                                  redirect_stderr=False)
                self._live.start()

    def stop(self) -> None:
        """Remove the live line; finished lines stay."""
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    # -- what the run feeds in --------------------------------------------------------------
    def line(self, text: str) -> None:
        """Print a finished line (a round, a note) above the live line, as plain text."""
        with self._lock:
            self.lines.append(text)
            self.console.print(Text(self.prefix + text))

    def status(self) -> str:
        """The live line's current text ('' before the first phase)."""
        with self._lock:
            return self._status

    def follow(self, path: Path, *, now: Callable[[], float] = time.time) -> None:
        """Show the phase another process writes to ``path`` (its ``status_file``).

        Cheap enough to call a few times a second: the file is read only when it changed, and
        the elapsed seconds are counted here from the phase's start time. A missing, partial or
        malformed file leaves the line as it is (the writer replaces the file atomically, so
        this happens only before the first phase).
        """
        try:
            st = path.stat()
        except OSError:
            return
        key = (st.st_mtime_ns, st.st_size)
        if key != self._followed:
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                phase = (str(raw["round"]), str(raw["message_type"]), int(raw["replied"]),
                         int(raw["expected"]), float(raw["started"]))
            except (OSError, ValueError, KeyError, TypeError):
                return
            self._followed, self._phase = key, phase
        if self._phase is not None:
            round_, mtype, replied, expected, started = self._phase
            self._update(round_, mtype, replied, expected, max(now() - started, 0.0))

    def _write_status(self, round_: str, message_type: str, replied: int, expected: int,
                      seconds: float) -> None:
        if self.status_file is None or self._written == (round_, message_type, replied, expected):
            return
        self._written = (round_, message_type, replied, expected)
        record = {"round": round_, "message_type": message_type, "replied": replied,
                  "expected": expected, "started": round(time.time() - seconds, 3)}
        try:
            atomic_write(self.status_file, json.dumps(record).encode())
        except OSError:  # the status line is a convenience: never let it fail a round
            pass

    def _update(self, round_: str, message_type: str, replied: int, expected: int,
                seconds: float) -> None:
        self._write_status(round_, message_type, replied, expected, seconds)
        if not round_.isdigit() or int(round_) > self.total_rounds:
            where = "after the last round"
        elif int(round_) == 0:  # setup phases (keys) come before round 1
            where = "before round 1"
        else:
            where = f"round {round_}/{self.total_rounds}"
        text = (f"{self.prefix}{where} · {phase_name(message_type)} · {replied}/{expected} replied · "
                f"{seconds:.1f} s")
        with self._lock:
            self._status = text
            if self._live is not None:
                self._live.update(Text(text, style="dim"), refresh=True)

    def _phase_done(self, round_: str, message_type: str, replied: int, expected: int) -> None:
        with self._lock:
            self.phases.append((round_, phase_name(message_type), replied, expected))
            if message_type == P.MSG_EVALUATE:  # the last phase: what remains is shutdown
                self._status = f"{self.prefix}finishing: writing the run folder, stopping the clients"
                if self._live is not None:
                    self._live.update(Text(self._status, style="dim"))

    def watch(self, grid: Any, *, max_wait: float = MAX_PULL_WAIT) -> Any:
        """``grid`` with its message phases reported on the live line (everything else as is).

        Replies are pulled at most ``max_wait`` s apart (see :func:`polling`); with
        ``max_wait <= 0``, every :data:`FLOWER_PULL_WAIT` s, as Flower's own grid does.
        """
        return _WatchedGrid(grid, self, max_wait)


def polling(grid: Any, max_wait: float = MAX_PULL_WAIT) -> Any:
    """``grid`` pulling replies at a short, growing interval (no progress reported).

    Flower 1.42's deployment grid sleeps a fixed 3 s between pulls, which adds about 1.5 s to
    every message phase; here the pause after an empty pull is 5 % of the phase's time so far
    (at least 50 ms, at most ``max_wait``) and drops back to 50 ms when a reply arrives, so a
    reply waits at most ~5 % of the phase (a 1 s screening phase: 50 ms, not the up to 0.5 s of a
    pause that grows by half per pull). Each pull is one request to the SuperLink next door.
    """
    return _WatchedGrid(grid, None, max_wait)


class _WatchedGrid:
    """A Grid whose ``send_and_receive`` reports its progress; the rest is delegated.

    It pushes the messages and pulls the replies itself (the same contract as Flower's
    ``send_and_receive``: return the replies that arrived before ``timeout``), pausing
    ``_MIN_PULL_WAIT`` s after a pull that brought replies and ``_PULL_WAIT_SHARE`` of the
    phase's time so far (up to ``max_wait`` s) after empty ones. Without a ``progress`` it only polls.
    """

    def __init__(self, grid: Any, progress: RoundProgress | None, max_wait: float) -> None:
        self._grid = grid
        self._progress = progress
        self._fixed = not max_wait > 0  # 0 (or NaN): Flower's fixed pause after every pull
        self._max_wait = FLOWER_PULL_WAIT if self._fixed else max_wait
        self._min_wait = self._max_wait if self._fixed else min(_MIN_PULL_WAIT, max_wait)

    def _update(self, *args: Any) -> None:
        if self._progress is not None:
            self._progress._update(*args)

    def _phase_done(self, *args: Any) -> None:
        if self._progress is not None:
            self._progress._phase_done(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        if not msgs:
            return []
        round_, mtype = msgs[0].metadata.group_id, msgs[0].metadata.message_type
        clock = self._progress._clock if self._progress is not None else time.monotonic
        started = clock()
        if not hasattr(self._grid, "push_messages"):  # a grid that only knows the whole phase
            self._update(round_, mtype, 0, len(msgs), 0.0)
            got = list(self._grid.send_and_receive(msgs, timeout=timeout))
            self._update(round_, mtype, len(got), len(msgs), clock() - started)
            self._phase_done(round_, mtype, len(got), len(msgs))
            return got
        pending = set(self._grid.push_messages(msgs))
        expected = len(pending)
        replies: list[Message] = []
        wait = self._min_wait
        end = None if timeout is None else started + timeout
        self._update(round_, mtype, 0, expected, 0.0)
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            now = clock()
            self._update(round_, mtype, len(replies), expected, now - started)
            if not pending or (end is not None and now >= end):
                break
            # after an empty pull, pause a fixed share of the time already waited: a reply is
            # seen at most that share (or _MIN_PULL_WAIT) after it arrived, however long the phase
            wait = self._min_wait if got else min(max(self._min_wait, _PULL_WAIT_SHARE * (now - started)),
                                                  self._max_wait)
            time.sleep(wait if end is None else max(min(wait, end - now), 0.0))
        self._phase_done(round_, mtype, len(replies), expected)
        return replies
