"""The live progress line, fed by a real round loop and the real ClientApp over a push/pull grid."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import Message
from rich.console import Console

from clients.app import app as client_app
from federation import protocol as P
from federation.config import FedConfig, from_flat
from server.app import run_server
from server.progress import PROGRESS_FILE, RoundProgress

ANSI = re.compile(r"\x1b\[")


class _PushPullGrid:
    """The conftest FakeGrid behind Flower's push/pull interface: one reply per pull."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.queue: dict[str, Message] = {}
        self.pulls = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.inner.get_node_ids())

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        msgs = list(messages)
        replies = self.inner.send_and_receive(msgs)
        for reply in replies:
            self.queue[reply.metadata.reply_to_message_id] = reply
        return [m.metadata.message_id for m in msgs]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        for mid in message_ids:
            if mid in self.queue:
                return [self.queue.pop(mid)]
        return []


def _cfg(tmp_path: Path, **flat: Any) -> FedConfig:
    return from_flat({"num-clients": 3, "num-server-rounds": 2, "partition": "iid",
                      "data-dir": "subset", "batch-size": 32, "out-dir": str(tmp_path / "run"),
                      "secure-aggregation": "ckks", "defense": "norm,cosine", **flat})


def test_every_phase_shows_replied_over_expected_and_rounds_print_once(fake_grid: Any, tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    cfg = _cfg(tmp_path)
    grid = _PushPullGrid(fake_grid(client_app, 3))
    with RoundProgress(cfg.run.rounds, console=console) as display:
        assert display.enabled
        summary = run_server(display.watch(grid), cfg, progress=display.line)
    assert summary["rounds_completed"] == 2
    phases = display.phases
    # key setup, then per round: train and encrypted screening; then the final evaluation
    assert ("1", "train", 3, 3) in phases and ("2", "train", 3, 3) in phases
    assert ("1", "encrypted screening", 2, 2) in phases  # a quorum of 2 key holders
    assert phases[0][1] == "key setup" and phases[-1] == ("3", "final evaluation", 3, 3)
    assert grid.pulls >= 3 * 2  # replies were pulled one by one: the line could count them
    assert phases[0][0] == "0"  # shown as "before round 1"
    assert display.status().startswith("finishing")  # after the last phase only shutdown remains
    # one finished line per round, in order, above the live line
    assert [line.split()[1] for line in display.lines] == ["1/2", "2/2"]
    text = buf.getvalue()
    assert "round   1/2" in text and "round   2/2" in text
    assert re.search(r"round 2/2 · train · [0-3]/3 replied · \d+\.\d s", text)  # the drawn live line


def test_not_a_terminal_means_no_live_line_and_no_control_codes(fake_grid: Any, tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=120)  # a StringIO is not a terminal
    cfg = _cfg(tmp_path, **{"num-server-rounds": 1, "secure-aggregation": "none", "defense": "none"})
    with RoundProgress(1, console=console) as display:
        assert not display.enabled
        run_server(display.watch(_PushPullGrid(fake_grid(client_app, 3))), cfg, progress=display.line)
    text = buf.getvalue()
    assert not ANSI.search(text)
    assert text.splitlines() == display.lines and len(display.lines) == 1
    assert display.phases[0] == ("1", "train", 3, 3)  # still counted, only not drawn


def test_rounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="total_rounds"):
        RoundProgress(0)


def test_a_deployment_draws_the_phase_the_serverapp_writes(fake_grid: Any, tmp_path: Path) -> None:
    """The ServerApp side writes progress.json; the `fedguard server` side draws it live."""
    status = tmp_path / PROGRESS_FILE
    cfg = _cfg(tmp_path, **{"num-server-rounds": 1, "secure-aggregation": "none",
                            "defense": "none"})
    seen: list[dict[str, Any]] = []

    class _Spy(_PushPullGrid):  # what the file said while each phase was still open
        def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
            seen.append(json.loads(status.read_text()))
            return super().pull_messages(message_ids)

    writer = RoundProgress(1, console=Console(file=io.StringIO()), live=False, status_file=status)
    run_server(writer.watch(_Spy(fake_grid(client_app, 3))), cfg)
    phases = {(s["round"], s["message_type"]) for s in seen}
    assert ("1", P.MSG_TRAIN) in phases and ("2", P.MSG_EVALUATE) in phases
    assert any(0 < s["replied"] < s["expected"] for s in seen)  # written while replies came in
    final = json.loads(status.read_text())
    assert final["replied"] == final["expected"] == 3 and final["started"] <= time.time()

    buf = io.StringIO()
    reader = RoundProgress(1, console=Console(file=buf, force_terminal=True, width=120))
    with reader:
        reader.follow(tmp_path / "missing.json")  # nothing yet: the line keeps its start text
        assert reader.status().startswith("starting")
        status.write_text(json.dumps({"round": "1", "message_type": "train", "replied": 2,
                                      "expected": 3, "started": time.time() - 4.0}))
        reader.follow(status)
        assert re.fullmatch(r"round 1/1 · train · 2/3 replied · 4\.\d s", reader.status())
        status.write_text("{not json")  # a torn or foreign file changes nothing
        reader.follow(status)
        assert reader.status().startswith("round 1/1 · train · 2/3")
    assert "2/3 replied" in buf.getvalue()


class _LateGrid:
    """Push/pull grid on a fake clock: every reply becomes available ``after`` s after the push."""

    def __init__(self, clock: list[float], after: float) -> None:
        self.clock, self.after = clock, after
        self.pushed = 0.0
        self.pulled_at: list[float] = []

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        self.pushed = self.clock[0]
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulled_at.append(self.clock[0])
        if self.clock[0] - self.pushed < self.after:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids]


@pytest.mark.parametrize("after", [0.2, 0.95, 10.2, 200.0])
def test_a_reply_waits_at_most_a_twentieth_of_its_phase(after: float, monkeypatch: Any) -> None:
    from server import progress
    from server.progress import polling

    clock = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        assert s >= 0
        sleeps.append(s)
        clock[0] += s

    monkeypatch.setattr(progress.time, "sleep", sleep)
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    grid = _LateGrid(clock, after)
    msgs = [SimpleNamespace(metadata=SimpleNamespace(group_id="1", message_type=P.MSG_TRAIN))
            for _ in (1, 2)]
    got = polling(grid).send_and_receive(msgs, timeout=600.0)
    assert len(got) == 2
    seen = grid.pulled_at[-1]
    assert seen - after <= max(0.05 * after, 0.05) + 1e-9  # waited <= 5 % of the phase (or 50 ms)
    assert max(sleeps) <= 0.5 and min(sleeps) >= 0.05  # no busy loop, never past the cap
    # max wait 0 keeps Flower's own fixed 3 s between pulls
    clock[0], sleeps[:] = 0.0, []
    grid = _LateGrid(clock, after)
    RoundProgress(1, live=False).watch(grid, max_wait=0).send_and_receive(msgs, timeout=600.0)
    assert set(sleeps) == {3.0}
