"""``flower-supernode`` with shorter polling and an exit record: ``python -m clients._supernode``.

Started by :mod:`clients.deploy` (the trainer role's launcher, hence in ``clients/``). Flower
1.42's SuperNode sleeps a fixed 3 s whenever its pull for work comes back empty, and 0.5 s
between checks for the ClientApp's reply; it announces a 30 s heartbeat interval, so the
SuperLink declares a crashed node dead only after up to 60 s. Neither is configurable. This
launcher runs the unchanged SuperNode in this process after the adjustments of
:func:`federation.flower_internals.patch_supernode_polling` (idle pause from
``FEDGUARD_SUPERNODE_POLL_MIN``, default 0.05 s, growing to ``FEDGUARD_SUPERNODE_POLL_MAX``,
default 0.5 s; heartbeat ``FEDGUARD_SUPERNODE_HEARTBEAT``, default 10 s, the smallest the
SuperLink accepts) and with Flower's exit code recorded in ``$FEDGUARD_SUPERNODE_STATUS``
(:func:`federation.flower_internals.install_exit_record`); ``"ended": true`` is added once
Flower's own shutdown (which deactivates the node) has run. When ``fedguard client`` names a
node its dead predecessor left online (``$FEDGUARD_SUPERNODE_RELEASE``), that node is released
at the SuperLink first; on SIGTERM the node leaves the SuperLink before anything else
(:func:`federation.flower_internals.install_node_handover`).

On another Flower version the SuperNode runs exactly as ``flower-supernode`` would, with a
note. Every argument is passed through unchanged.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from federation.flower_internals import (
    RELEASE_LINE_PREFIX,
    SUPERNODE_RELEASE_ENV,
    SUPERNODE_STATUS_ENV,
    install_exit_record,
    install_node_handover,
    patch_supernode_polling,
    run_supernode,
)

__all__: list[str] = []

SUPERNODE_LOG_ENV = "FEDGUARD_SUPERNODE_LOG"
"""Where the SuperNode writes its output itself once ``fedguard client`` is gone."""


def _env_float(name: str, default: float, low: float, high: float) -> float:
    """An operator's setting from the environment; out of bounds or unreadable: the default."""
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if low <= value <= high else default


def _release_request(value: str) -> tuple[int, float] | None:
    """``NODE_ID:SETTLE`` from ``fedguard client`` (a dead predecessor's node), else None."""
    node, _, settle = value.partition(":")
    try:
        pause = float(settle or 0.0)
        return (int(node), min(pause, 30.0)) if 0.0 <= pause else None  # NaN fails too
    except ValueError:
        return None


def _mark_ended(path: Path | None) -> None:
    if path is None:
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        data = data if isinstance(data, dict) else {}
        data["ended"] = True
        path.write_text(json.dumps(data), encoding="utf-8")
    except (OSError, ValueError):  # a courtesy for the next client; never fail the exit
        pass


class _Output(io.TextIOBase):
    """stdout/stderr that outlive the reader: once the pipe to ``fedguard client`` breaks
    (it died), lines go straight to the SuperNode log, so Flower's shutdown (which deactivates
    the node) never trips over a broken pipe and its last lines are kept."""

    def __init__(self, stream: TextIO, fallback: Path | None) -> None:
        self._stream = stream
        self._fallback = fallback
        self._broken = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                self._stream.write(text)
                self._stream.flush()
                return len(text)
            except (OSError, ValueError):
                self._broken = True
        if self._fallback is not None:
            try:
                with open(self._fallback, "a", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError:
                pass
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._broken = True


def main(argv: list[str]) -> None:
    log = os.environ.get(SUPERNODE_LOG_ENV)
    # Before Flower is imported: its log handler keeps the stream it finds at import.
    sys.stdout = _Output(sys.stdout, Path(log) if log else None)
    sys.stderr = _Output(sys.stderr, Path(log) if log else None)
    low = _env_float("FEDGUARD_SUPERNODE_POLL_MIN", 0.05, 0.01, 3.0)
    high = max(low, _env_float("FEDGUARD_SUPERNODE_POLL_MAX", 0.5, 0.01, 3.0))
    beat = _env_float("FEDGUARD_SUPERNODE_HEARTBEAT", 10.0, 10.0, 1800.0)
    note = patch_supernode_polling(low, high, beat)
    if note:
        print(f"fedguard: {note}", file=sys.stderr, flush=True)
    status = os.environ.get(SUPERNODE_STATUS_ENV)
    status_path = Path(status) if status else None
    if status_path is not None:
        install_exit_record(status_path)
    install_node_handover(_release_request(os.environ.get(SUPERNODE_RELEASE_ENV, "")),
                          lambda line: print(RELEASE_LINE_PREFIX + line, flush=True))
    try:
        run_supernode(argv)
    finally:
        _mark_ended(status_path)


if __name__ == "__main__":
    main(sys.argv[1:])
