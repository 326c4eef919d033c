"""A client that crashes and comes back misses one round, not two; a dead one costs one wait.

The grid models what Flower's SuperLink does with nodes that go away: an offline node is not
in ``get_node_ids()``, and a message to it is answered at once with an error reply (no
delivery). The real ClientApp trains on the vendored subset; time is a fake clock that only
the loop's own sleeps advance, so the waits are exact and cost no wall time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from clients.app import app as client_app
from federation import protocol as P
from federation.config import from_flat
from server.app import make_scheme
from server.loop import run_federation


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[tuple[int, float]] = []  # (train round in progress, seconds)
        self.round = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append((self.round, seconds))
        self.now += seconds


def _flaky_grid(fake_grid: Any, clock: _Clock, *, crash_round: int, back_after: float,
                returns: int, dies: int) -> Any:
    class FlakyGrid(fake_grid):  # type: ignore[misc]
        """Nodes ``returns`` and ``dies`` crash in ``crash_round`` (their reply is lost and
        they go offline); ``returns`` is back ``back_after`` fake seconds later."""

        def __init__(self) -> None:
            super().__init__(client_app, 4, tamper=self._tamper)
            self.offline: set[int] = set()
            self.back_at = float("inf")

        def _tamper(self, node: int, reply: Message) -> Message | None:
            if node in self.offline:
                return None  # what the SuperLink answers for an offline node
            if (reply.metadata.message_type == P.MSG_TRAIN and node in (returns, dies)
                    and clock.round == crash_round):
                self.offline.add(node)
                self.back_at = clock.now + back_after
                return None
            return reply

        def get_node_ids(self) -> Iterable[int]:
            if clock.now >= self.back_at:
                self.offline.discard(returns)
            return [n for n in self.nodes if n not in self.offline]

        def send_and_receive(self, messages: Iterable[Message], *,
                             timeout: float | None = None) -> list[Message]:
            msgs = list(messages)
            train = [m for m in msgs if m.metadata.message_type == P.MSG_TRAIN]
            if train:
                clock.round = int(train[0].metadata.group_id)
            replies: list[Message] = super().send_and_receive(msgs, timeout=timeout)
            return replies

    return FlakyGrid()


def test_a_restarted_client_rejoins_the_next_round_and_a_dead_one_is_waited_for_once(
        fake_grid: Any, recorder: Any) -> None:
    cfg = from_flat({"num-clients": 4, "num-server-rounds": 3, "partition": "iid",
                     "data-dir": "subset", "batch-size": 64, "rejoin-wait": 5.0})
    clock = _Clock()
    grid = _flaky_grid(fake_grid, clock, crash_round=1, back_after=2.0, returns=102, dies=103)
    rec = recorder()
    result = run_federation(grid, cfg, make_scheme(cfg), observer=rec, clock=clock,
                            sleep=clock.sleep)
    assert result.rounds_completed == 3 and not result.stopped_early
    r1, r2, r3 = rec.rounds
    # round 1: both crash mid-round; their replies are lost
    assert r1.accepted == [100, 101]
    assert r1.refused[102].startswith("lost") and r1.refused[103].startswith("lost")
    # round 2: 102 is back within rejoin-wait and trains in the same round; 103 is waited for
    # (the whole rejoin-wait, no longer) and then recorded as offline
    assert r2.accepted == [100, 101, 102], r2.refused
    assert r2.refused == {103: "lost: offline: not connected during the round"}
    waited = sum(s for rnd, s in clock.slept if rnd == 2)
    assert 5.0 <= waited <= 5.5
    # round 3: 103 already had its chance: nobody waits for it again
    assert r3.accepted == [100, 101, 102]
    assert r3.refused == {103: "lost: offline: not connected during the round"}
    assert sum(s for rnd, s in clock.slept if rnd == 3) == 0.0
    # the offline node was never sent a message while it was away
    sent = [(int(m.metadata.group_id), m.metadata.dst_node_id) for m in grid.sent
            if m.metadata.message_type == P.MSG_TRAIN]
    assert (2, 103) not in sent and (3, 103) not in sent and (2, 102) in sent
    assert any(e.get("node") == 103 and e.get("round") == 2 and e.get("event") == "lost"
               for e in rec.audit)
