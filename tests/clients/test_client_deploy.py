"""``clients.deploy``: Flower's SuperNode log turned into progress and state."""

from __future__ import annotations

from clients.deploy import NodeAttempt, describe_line
from federation.flower_internals import SUPERNODE_PATTERNS


def _after(lines: list[str]) -> tuple[NodeAttempt, list[str]]:
    attempt = NodeAttempt()
    said: list[str] = []
    for line in lines:
        said += describe_line(line, attempt, "h:1")
    return attempt, said


def test_supernode_lines_become_progress() -> None:
    attempt, said = _after([
        "WARNING :   Connection attempt failed, retrying in 1.25 seconds",
        "INFO :      SuperNode ID: 42",
        "INFO :      [RUN 7, ROUND 1]",
        "INFO :      Receiving: train message (ID: ab)",
    ])
    assert said[0].startswith("cannot reach the SuperLink at h:1; retrying in 1.2s")
    assert "as node 42" in said[1]
    assert said[2] == "round 1 (train): request received"
    assert attempt.connected and attempt.busy
    attempt, _ = _after(["INFO :      Receiving: evaluate message (ID: x)",
                         "INFO :      Sent successfully"])
    assert not attempt.busy


def test_every_supernode_example_line_is_understood() -> None:
    quiet = {"round", "sent", "tls", "gave-up", "forgotten", "refused"}
    for name, (_pattern, example) in SUPERNODE_PATTERNS.items():
        _attempt, said = _after([example])
        if name in quiet:
            assert said == [], name
        else:
            assert len(said) == 1, name
    assert _after([SUPERNODE_PATTERNS["refused"][1]])[0].refused
    assert _after([SUPERNODE_PATTERNS["tls"][1]])[0].tls_error
    assert _after([SUPERNODE_PATTERNS["forgotten"][1]])[0].forgotten
