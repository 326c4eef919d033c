"""Shared fixtures: an in-memory fake of Flower's Grid that drives the real ClientApp."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from flwr.app import Context, Error, Message, RecordDict

from federation.flower_internals import deliver_in_process, set_task_identity

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FEDGUARD_TORCH_THREADS", "1")


ReplyTamper = Callable[[int, Message], Message | Error | None]


class FakeGrid:
    """Delivers each message to a ClientApp in this process, synchronously.

    ``tamper(node_id, reply)`` may replace a reply (a malicious or broken client), return an
    :class:`~flwr.app.Error` (sent back as the error reply to the delivered message), or return
    ``None`` (the node died: an error reply comes back, as from a real SuperLink).
    """

    def __init__(self, client_app: Any, num_nodes: int, *, run_id: int = 7,
                 tamper: ReplyTamper | None = None,
                 node_config: Callable[[int], dict[str, Any]] | None = None) -> None:
        set_task_identity(run_id)
        self.client_app = client_app
        self.tamper = tamper
        self.nodes = {100 + i: Context(
            run_id=run_id, node_id=100 + i,
            node_config=(node_config(i) if node_config else {"partition-id": i, "num-partitions": num_nodes}),
            state=RecordDict(), run_config={}) for i in range(num_nodes)}
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            delivered = deliver_in_process(msg)  # msg gets its id; the node gets a copy
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            reply = self.client_app(delivered, self.nodes[node])
            if self.tamper is not None:
                tampered = self.tamper(node, reply)
                if tampered is None:
                    tampered = Error(code=5, reason="node unavailable")
                reply = tampered if isinstance(tampered, Message) else Message(tampered, reply_to=delivered)
            replies.append(reply)
        return replies


@pytest.fixture
def fake_grid() -> type[FakeGrid]:
    return FakeGrid


class Recorder:
    """A RunObserver that keeps everything the round loop reports, in memory."""

    def __init__(self) -> None:
        self.rounds: list[Any] = []
        self.audit: list[dict[str, object]] = []
        self.checkpoints: list[int] = []
        self.states: list[dict[str, object]] = []

    def on_round(self, report: Any) -> None:
        self.rounds.append(report)

    def on_audit(self, entry: dict[str, object]) -> None:
        self.audit.append(entry)

    def on_checkpoint(self, round_: int, state: dict[str, object]) -> None:
        self.checkpoints.append(round_)
        self.states.append(state)


@pytest.fixture
def recorder() -> type[Recorder]:
    return Recorder
