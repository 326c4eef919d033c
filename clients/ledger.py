"""Where a client keeps its privacy ledger: Flower node state and a node-local file.

The ledger itself (:class:`federation.privacy.PrivacyLedger`) is pure and immutable; this
module only stores it.

* **Node state** (``context.state``, a ``RecordDict``): the ledger's canonical JSON in a
  ``ConfigRecord`` under a caller-chosen key (field ``"json"``). This survives across rounds in
  one SuperNode / simulation, where client objects are re-created every round.
* **Ledger file** (real deployments): a JSON-lines file on the node — a header line, then one
  event per line. Every write rewrites the whole file to a temporary sibling, fsyncs it,
  atomically renames it over the old one and fsyncs the directory, all *before* the caller
  releases the update. A crash leaves either the old or the new file, never a torn line, so any
  parse failure is real corruption and raises :class:`LedgerError` naming the file and line;
  the ledger is never silently reset to zero.

:func:`record_event` is the only writer. Under one ``flock`` on a ``.lock`` sibling of the file
it reads the union of node state and file (by event label; never dropping an event, refusing
two different events under one label), checks the budget against that union, appends the
event and writes the *whole* union back to both places. So events that only the node state
held reach the file, a restarted client (empty state) counts everything it ever spent, and two
runs on one node cannot both pass the budget check on a stale view.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from federation.privacy import LedgerError, PrivacyBudget, PrivacyEvent, PrivacyLedger

__all__ = [
    "FILE_FORMAT",
    "FILE_VERSION",
    "LedgerFile",
    "ledger_from_state",
    "ledger_to_state",
    "load_ledger",
    "record_event",
]

FILE_FORMAT = "fedguard.privacy-ledger-log"
FILE_VERSION = 1
_STATE_FIELD = "json"


# --------------------------------------------------------------------------------------------
# Flower node state


def ledger_from_state(state: RecordDict, key: str) -> PrivacyLedger:
    """The ledger stored under ``key`` in ``state``, or an empty ledger if there is none.

    Raises :class:`LedgerError` if the key holds anything but a ledger written by
    :func:`ledger_to_state`.
    """
    if key not in state:
        return PrivacyLedger()
    record = state[key]
    if not isinstance(record, ConfigRecord) or set(record.keys()) != {_STATE_FIELD}:
        raise LedgerError(
            f"node state {key!r} does not hold a privacy ledger "
            f"(expected a ConfigRecord with one field {_STATE_FIELD!r})"
        )
    text = record[_STATE_FIELD]
    if not isinstance(text, str):
        raise LedgerError(f"node state {key!r}: the ledger must be stored as a JSON string")
    try:
        return PrivacyLedger.from_json(text)
    except LedgerError as exc:
        raise LedgerError(f"node state {key!r}: {exc}") from None


def ledger_to_state(state: RecordDict, key: str, ledger: PrivacyLedger) -> None:
    """Store ``ledger`` under ``key`` in ``state``, refusing to lose recorded events.

    Raises :class:`LedgerError` if the stored ledger has an event that ``ledger`` lacks or
    records differently: the state only ever grows.
    """
    if not isinstance(ledger, PrivacyLedger):
        raise TypeError(f"expected a PrivacyLedger, got {type(ledger).__name__}")
    _check_extends(ledger_from_state(state, key), ledger, f"node state {key!r}")
    state[key] = ConfigRecord({_STATE_FIELD: ledger.to_json()})


def _check_extends(old: PrivacyLedger, new: PrivacyLedger, where: str) -> None:
    mine = {ev.label: ev for ev in new.events}
    for ev in old.events:
        if mine.get(ev.label) != ev:
            raise LedgerError(
                f"{where}: refusing to drop or rewrite recorded privacy event {ev.label!r}"
            )


# --------------------------------------------------------------------------------------------
# node-local file


class LedgerFile:
    """An append-only, crash-safe ledger file on the client's node.

    Parameters
    ----------
    path:
        The file; its directory must exist. A missing file is an empty ledger (a new node);
        an existing file must parse completely.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LedgerFile({str(self.path)!r})"

    def load(self) -> PrivacyLedger:
        """Read the whole ledger; raises :class:`LedgerError` if the file is damaged."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return PrivacyLedger()
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot read the privacy ledger: {exc}") from None
        return self._parse(data)

    def _parse(self, data: bytes) -> PrivacyLedger:
        where = str(self.path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise LedgerError(f"{where}: privacy ledger is not UTF-8 text (corrupt?)") from None
        if not text.endswith("\n"):
            raise LedgerError(
                f"{where}: privacy ledger is empty or truncated (no final newline); refusing to "
                "guess what was spent — restore it from a backup or the node state"
            )
        lines = text[:-1].split("\n")
        header = _parse_line(lines[0], where, 1)
        if header != {"format": FILE_FORMAT, "version": FILE_VERSION}:
            raise LedgerError(f"{where}:1: not a fedguard privacy ledger (header {header!r})")
        events = []
        for i, line in enumerate(lines[1:], start=2):
            try:
                events.append(PrivacyEvent.from_dict(_parse_line(line, where, i)))
            except LedgerError as exc:
                raise LedgerError(f"{where}:{i}: {exc}") from None
        try:
            return PrivacyLedger(tuple(events))
        except LedgerError as exc:
            raise LedgerError(f"{where}: {exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot lock the privacy ledger: {exc}") from None
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - non-POSIX: single process per node
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _write(self, ledger: PrivacyLedger) -> None:
        header = json.dumps({"format": FILE_FORMAT, "version": FILE_VERSION}, sort_keys=True)
        lines = [header] + [
            json.dumps(ev.to_dict(), sort_keys=True, allow_nan=False) for ev in ledger.events
        ]
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        directory = self.path.parent
        try:
            self._replace(directory, payload)
        except OSError as exc:
            # The event may not be durable, so its update must not be released: make it loud.
            raise LedgerError(f"{self.path}: cannot write the privacy ledger: {exc}") from None

    def _replace(self, directory: Path, payload: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)


def _parse_line(line: str, where: str, lineno: int) -> Any:
    def reject(name: str) -> Any:
        raise LedgerError(f"{where}:{lineno}: non-finite number {name}")

    try:
        return json.loads(line, parse_constant=reject)
    except LedgerError:
        raise
    except (ValueError, RecursionError) as exc:
        raise LedgerError(f"{where}:{lineno}: corrupt privacy ledger line: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------------
# both


def load_ledger(state: RecordDict, key: str, file: LedgerFile | None = None) -> PrivacyLedger:
    """The full ledger: union of node state and file by label, never dropping an event.

    Read-only: use it to report ε or to plan; only :func:`record_event` writes.
    """
    ledger = ledger_from_state(state, key)
    if file is not None:
        ledger = ledger.merge(file.load())
    return ledger


def record_event(
    state: RecordDict,
    key: str,
    event: PrivacyEvent,
    file: LedgerFile | None = None,
    *,
    budget: PrivacyBudget | None = None,
) -> PrivacyLedger:
    """Record ``event`` durably — file first (fsynced), then node state — and return the ledger.

    Call after training and *before* releasing the update. Under the file's lock: the union of
    node state and file is read, ``budget`` (if given) is checked against that union plus
    ``event``, and the whole union plus ``event`` is written to the file and to the state, so
    both end up holding the same history.

    Raises
    ------
    PrivacyBudgetExceeded
        If ``event`` would take the whole history past ``budget``; nothing is written, and the
        update the event would have paid for must not be released.
    LedgerError
        If the label is already recorded, the two histories conflict, or the file cannot be
        read or written.
    """
    lock = file._locked() if file is not None else contextlib.nullcontext()
    with lock:
        ledger = load_ledger(state, key, file)
        if budget is not None:
            budget.check(ledger, event)
        ledger = ledger.append(event)
        if file is not None:
            file._write(ledger)
        ledger_to_state(state, key, ledger)
    return ledger
