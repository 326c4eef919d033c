"""FedguardStrategy around a stock FedAvg, in process (the fake grid delivers to the real
converted quickstart ClientApp): a boosted update is filtered, an error reply is one readable
line, and the run goes on with the honest nodes; the model the strategy returns is theirs."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.serverapp.strategy import FedAvg

from examples.quickstart.quickstart import client_app_fedguard
from examples.quickstart.quickstart.task import Net
from federation import protocol as P
from federation.records import record_vector, vector_record
from server.strategy import FedguardStrategy

BOOSTED, BROKEN = 102, 103
RAY_REASON = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::x\x1b[39m\n"
              "KeyError: 'arrays'\n\nflwr.clientapp.client_app.ClientAppException: \n"
              "Exception ClientAppException occurred. Message: 'arrays''>")


def tamper(node: int, reply: Message) -> Message | Error:
    if reply.metadata.message_type == P.MSG_TRAIN and node == BOOSTED and reply.has_content():
        rec = reply.content.array_records[P.UPDATE_PLAIN]
        vec = record_vector(rec, rec["v"].shape[0])
        reply.content[P.UPDATE_PLAIN] = vector_record(vec * 1000.0)
    if node == BROKEN:
        return Error(code=2, reason=RAY_REASON)
    return reply


def test_the_wrapped_fedavg_filters_a_boosted_update_and_reports_a_broken_node(
        fake_grid: Any) -> None:
    grid = fake_grid(client_app_fedguard.app, 4, tamper=tamper)
    strategy = FedguardStrategy(
        FedAvg(fraction_train=1.0, min_train_nodes=4, min_available_nodes=4),
        {"defense": "norm", "dp-noise": 0.5, "max-grad-norm": 1.0, "dp-accountant": "rdp"}, primary_metric="eval_acc")
    initial = ArrayRecord(Net().state_dict())
    result = strategy.start(grid, initial, num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))
    reports = strategy.reports
    assert [r.round for r in reports] == [1, 2]
    for r in reports:
        assert sorted(r.accepted) == [100, 101]
        assert "norm" in r.rejected[BOOSTED]
        assert r.refused[BROKEN].startswith("error-reply: code 2: KeyError: 'arrays'")
        assert "\x1b" not in r.refused[BROKEN] and "\n" not in r.refused[BROKEN]
        assert r.accuracy is not None and set(r.epsilon_by_client) == {
            "node-100", "node-101", f"node-{BOOSTED}"}
    # plaintext mode hands back the aggregate of the honest updates, finite and changed
    final = result.arrays
    assert list(final.keys()) == list(initial.keys())
    moved = [float(np.abs(final[k].numpy() - initial[k].numpy()).max()) for k in initial.keys()]
    assert all(np.isfinite(moved)) and 0 < max(moved) < 10


def test_a_plaintext_round_trains_from_the_current_global(fake_grid: Any) -> None:
    # every train message after round 1 carries the global the previous round produced: a
    # trainer never trains the initial model again (it refuses a later message without one)
    sent: list[Message] = []

    class Recording(fake_grid):  # type: ignore[misc]
        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
            messages = list(messages)
            sent.extend(messages)
            return list(super().send_and_receive(messages, timeout=timeout))

    grid = Recording(client_app_fedguard.app, 3)
    strategy = FedguardStrategy(FedAvg(fraction_train=1.0, min_train_nodes=3, min_available_nodes=3),
                                {"defense": "none"}, primary_metric="eval_acc")
    initial = ArrayRecord(Net().state_dict())
    strategy.start(grid, initial, num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))
    round2 = [m for m in sent if m.metadata.message_type == P.MSG_TRAIN
              and m.content.config_records[P.CFG][P.CFG_ROUND] == 2]
    assert len(round2) == 3
    first = np.concatenate([v.numpy().ravel() for v in initial.values()])
    for msg in round2:
        assert P.GLOBAL_PLAIN in msg.content.array_records
        g = record_vector(msg.content.array_records[P.GLOBAL_PLAIN], first.size)
        assert np.isfinite(g).all() and float(np.abs(g - first).max()) > 0
    assert [r.round for r in strategy.reports] == [1, 2] and all(
        sorted(r.accepted) == [100, 101, 102] for r in strategy.reports)


def test_a_replayed_train_message_is_refused_by_the_partner_mod(fake_grid: Any) -> None:
    # A deviating server re-sends a round's train message (under CKKS: a second upload of the
    # same update under a fresh screening commitment). The mod refuses it before the partner's
    # code trains or anything is spent, as the fedguard ClientApp does
    # (tests/clients/test_handlers.py).
    grid = fake_grid(client_app_fedguard.app, 2)
    strategy = FedguardStrategy(FedAvg(fraction_train=1.0, min_train_nodes=2, min_available_nodes=2),
                                {"defense": "none"}, primary_metric="eval_acc")
    strategy.start(grid, ArrayRecord(Net().state_dict()), num_rounds=1,
                   train_config=ConfigRecord({"lr": 0.1}))
    train = next(m for m in grid.sent if m.metadata.message_type == P.MSG_TRAIN)
    again = Message(train.content, dst_node_id=train.metadata.dst_node_id,
                    message_type=P.MSG_TRAIN, group_id="1")
    [reply] = grid.send_and_receive([again])
    status = reply.content.config_records[P.STATUS]
    assert status[P.STATUS_CODE] == P.STATUS_ERROR
    assert "not after the last round" in str(status[P.STATUS_REASON])
