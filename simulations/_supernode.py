"""``flower-supernode`` with shorter polling: run as ``python -m simulations._supernode ARGS``.

Flower 1.42's SuperNode sleeps a fixed 3 s whenever its pull for work comes back empty, and
0.5 s between checks for the ClientApp's reply; it announces a 30 s heartbeat interval, so the
SuperLink declares a crashed node dead only after up to 60 s. Neither is configurable. This
launcher runs the unchanged SuperNode in this process after two narrow adjustments:

* the worker loop's idle pause starts at ``FEDGUARD_SUPERNODE_POLL_MIN`` (default 0.05 s),
  grows by half after each empty pull up to ``FEDGUARD_SUPERNODE_POLL_MAX`` (default 0.5 s)
  and drops back as soon as work arrives; the 0.5 s reply check becomes the minimum pause;
* the heartbeat interval becomes ``FEDGUARD_SUPERNODE_HEARTBEAT`` (default 10 s, the smallest
  the SuperLink accepts), so a killed node is declared dead within about 20 s.

The adjustments are applied only to Flower 1.42.x and only when the attributes they replace
exist; otherwise the SuperNode runs exactly as ``flower-supernode`` would, with a warning.
Every argument is passed through unchanged.
"""

from __future__ import annotations

import os
import sys
import time as _time
from types import ModuleType
from typing import Any

__all__: list[str] = []

_IDLE_SLEEP = 3.0  # what start_client_internal sleeps after an empty pull (Flower 1.42)


def _env_float(name: str, default: float, low: float, high: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        value = default
    return min(max(value, low), high)


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


def _patch() -> str:
    """Apply the adjustments; return a note for the log (empty when applied)."""
    try:
        from flwr.supercore import heartbeat
        from flwr.supercore.version import package_version
        from flwr.supernode import fleet_http_connection, start_client_internal
    except ImportError as exc:  # pragma: no cover - another Flower layout
        return f"fast polling not applied ({exc}); running the stock SuperNode"
    if not str(package_version).startswith("1.42."):
        return f"fast polling not applied (Flower {package_version}, made for 1.42)"
    needed = [(start_client_internal, "time"), (heartbeat, "HEARTBEAT_DEFAULT_INTERVAL"),
              (fleet_http_connection, "HEARTBEAT_DEFAULT_INTERVAL")]
    if not all(hasattr(mod, attr) for mod, attr in needed):
        return "fast polling not applied (Flower internals changed); running the stock SuperNode"
    low = _env_float("FEDGUARD_SUPERNODE_POLL_MIN", 0.05, 0.01, 3.0)
    high = max(low, _env_float("FEDGUARD_SUPERNODE_POLL_MAX", 0.5, 0.01, 3.0))
    beat = _env_float("FEDGUARD_SUPERNODE_HEARTBEAT", 10.0, 10.0, 1800.0)
    start_client_internal.time = _PollClock(_time, low, high)  # type: ignore[attr-defined,assignment]
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = beat  # type: ignore[attr-defined,assignment]
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = beat  # type: ignore[attr-defined,assignment]
    return ""


def main(argv: list[str]) -> None:
    note = _patch()
    if note:
        print(f"fedguard: {note}", file=sys.stderr, flush=True)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
