"""A tamper-evident audit log: JSON lines chained by SHA-256.

Every line of ``audit.jsonl`` is one JSON object with three chain fields besides the entry:

* ``seq``: 0 for the run's start line, then 1, 2, ...
* ``prev``: the ``hash`` of the line before (64 zero hex digits for the start line);
* ``start``: the ``hash`` of the start line (the same in every line of one run);
* ``hash``: SHA-256 over the canonical JSON (sorted keys, no spaces) of the line without
  ``hash`` itself.

Editing a line breaks its own ``hash``; deleting or reordering lines breaks a ``prev`` or
``seq`` link; a line from another run breaks ``start``. Cutting lines off the end leaves a
valid shorter chain, so the run's ``summary.json`` records the head (``audit_entries``,
``audit_head``) and :func:`verify_log` compares with it when it is there. The chain makes
edits evident to whoever holds a copy of the head; it does not stop whoever writes the file
from rewriting all of it (sign or publish the head for that).

A resumed run continues the chain of the lines already in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = ["GENESIS", "AuditLog", "ChainReport", "entry_hash", "verify_log"]

GENESIS: Final = "0" * 64
"""The ``prev`` of a start line."""

_CHAIN_FIELDS: Final = ("seq", "prev", "start", "hash")


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return sorted(o) if isinstance(o, (set, frozenset)) else list(o)
    raise TypeError(type(o).__name__)


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default,
                      allow_nan=True).encode()


def entry_hash(line: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a line's canonical JSON without its ``hash`` field."""
    body = {k: v for k, v in line.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


class AuditLog:
    """Appends chained lines to ``path`` (flushed and fsynced one by one).

    Parameters
    ----------
    path:
        The ``audit.jsonl`` file; created with a start line if missing or empty, else its
        chain is continued (a resumed run).
    start:
        What the start line records about the run (e.g. the config digest); ignored when
        the file already has lines.
    """

    def __init__(self, path: Path, start: Mapping[str, Any]) -> None:
        self.path = path
        self._seq, self._head, self._start = -1, GENESIS, ""
        if path.exists() and path.stat().st_size > 0:
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            last, first = json.loads(lines[-1]), json.loads(lines[0])
            self._seq, self._head, self._start = int(last["seq"]), str(last["hash"]), str(first["hash"])
        else:
            self._write({"event": "run-start", **dict(start)})

    @property
    def entries(self) -> int:
        """Lines in the chain so far (the start line included)."""
        return self._seq + 1

    @property
    def head(self) -> str:
        """The ``hash`` of the newest line."""
        return self._head

    def append(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Chain ``entry`` (its own keys must not be chain fields) and write it; return the line."""
        clash = [k for k in _CHAIN_FIELDS if k in entry]
        if clash:
            raise ValueError(f"audit entries may not set {clash}")
        return self._write(dict(entry))

    def _write(self, entry: dict[str, Any]) -> dict[str, Any]:
        line = {**entry, "seq": self._seq + 1, "prev": self._head,
                "start": self._start or None}
        if line["start"] is None:  # the start line: it names itself after hashing
            line.pop("start")
        line["hash"] = entry_hash(line)
        if not self._start:
            self._start = line["hash"]
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True, default=_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._seq, self._head = int(line["seq"]), str(line["hash"])
        return line


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_log` found.

    ``ok`` is True when every link holds; otherwise ``line`` is the 1-based number of the
    first line whose link is broken and ``reason`` says which link.
    """

    ok: bool
    entries: int
    line: int = 0
    reason: str = ""
    head: str = ""


def verify_log(path: Path, expected: Mapping[str, Any] | None = None) -> ChainReport:
    """Check the chain of ``path``; ``expected`` may give ``audit_entries`` / ``audit_head``.

    Never raises for a malformed file: a line that is not JSON is a broken link.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return ChainReport(False, 0, 0, f"cannot read {path.name}: {type(exc).__name__}")
    prev, start, count = GENESIS, "", 0
    for number, text in enumerate(lines, 1):
        if not text.strip():
            return ChainReport(False, count, number, "blank line")
        try:
            line = json.loads(text)
        except ValueError:
            return ChainReport(False, count, number, "not a JSON object")
        if not isinstance(line, dict) or not all(k in line for k in ("seq", "prev", "hash")):
            return ChainReport(False, count, number, "missing chain fields")
        if line["hash"] != entry_hash(line):
            return ChainReport(False, count, number, "hash does not match the line (edited)")
        if line["seq"] != number - 1:
            return ChainReport(False, count, number,
                               f"sequence number {line['seq']}, expected {number - 1} "
                               "(a line was deleted, inserted or moved)")
        if line["prev"] != prev:
            return ChainReport(False, count, number,
                               "prev does not match the line before (deleted or reordered)")
        if number == 1:
            if "start" in line:
                return ChainReport(False, count, number, "the first line is not a start line")
            start = str(line["hash"])
        elif line.get("start") != start:
            return ChainReport(False, count, number, "start hash of another run")
        prev, count = str(line["hash"]), count + 1
    if count == 0:
        return ChainReport(False, 0, 1, "empty log")
    if expected:
        want_n, want_head = expected.get("audit_entries"), expected.get("audit_head")
        if want_n is not None and want_n != count:
            return ChainReport(False, count, count + 1,
                               f"{count} lines, the run summary records {want_n} (truncated?)")
        if want_head is not None and want_head != prev:
            return ChainReport(False, count, count, "last hash differs from the run summary")
    return ChainReport(True, count, head=prev)
