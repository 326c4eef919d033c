"""One readable line for a node's error reply.

Flower reports a ClientApp failure as an error reply whose reason is a whole Ray traceback with
ANSI colour codes (``<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\\x1b[36mray::…``).
Cut at a fixed length it says nothing. :func:`describe_error_reply` keeps what a reader needs:
the exception line at the bottom of the traceback, and — when the cause is that the node does
not run a fedguard-capable ClientApp (an unregistered fedguard message type, or a vanilla app
tripping over fedguard's records) — a sentence saying so and what to add.
"""

from __future__ import annotations

import re

__all__ = ["NOT_FEDGUARD_CAPABLE", "describe_error_reply"]

NOT_FEDGUARD_CAPABLE = (
    "node is not running a fedguard-capable ClientApp (add fedguard's mod and query handlers: "
    "clients.mods.enable_fedguard(app))"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNREGISTERED = re.compile(r"No (\w+) function registered with name '(\w+)'")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)):?\s*(.*)$")
_MAX = 300
_WRAPPERS = {"ClientAppException", "RayTaskError", "RayActorError"}


def describe_error_reply(code: int | None, reason: str | None) -> str:
    """``error-reply: code N: <one line>`` for an error reply's code and (possibly None) reason.

    The line has no ANSI codes and no newlines, is at most a few hundred characters, and
    names the missing handler when the node is not fedguard-capable.
    """
    text = _ANSI.sub("", reason or "")
    missing = _UNREGISTERED.search(text)
    if missing:
        detail = f"{NOT_FEDGUARD_CAPABLE}; it has no '{missing.group(1)}.{missing.group(2)}' handler"
        return f"error-reply: code {code}: {detail}"
    lines = [ln.strip() for ln in text.replace("\\n", "\n").splitlines() if ln.strip()]
    found = ""
    for ln in reversed(lines):  # the last exception line of a traceback names the cause...
        m = _EXCEPTION_LINE.match(ln)
        name = m.group(1).rsplit(".", 1)[-1] if m else ""
        if m and name not in _WRAPPERS:  # ...once Flower's and Ray's wrappers are peeled off
            found = f"{name}: {m.group(3)}".rstrip(": ")
            break
    detail = found or (lines[-1] if lines else "no reason")
    if found.startswith("KeyError"):
        detail += f" ({NOT_FEDGUARD_CAPABLE}?)"
    detail = " ".join(detail.split())
    if len(detail) > _MAX:
        detail = detail[: _MAX - 1] + "…"
    return f"error-reply: code {code}: {detail}"
