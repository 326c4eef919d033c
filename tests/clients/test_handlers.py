"""Trainer role logic: ledger persistence across restarts and key-holder request limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, RecordDict

from clients.app import app as client_app
from clients.encrypted import handle_screen
from federation import protocol as P
from federation.config import from_flat
from federation.errors import ProtocolError
from federation.records import bytes_record
from server.app import make_scheme
from server.loop import run_federation


def _cfg(**flat: object):
    return from_flat({"num-clients": 2, "num-server-rounds": 1, "partition": "iid",
                      "data-dir": "subset", "batch-size": 32, "dp-noise": 1.0, **flat})


def test_a_restarted_client_keeps_its_privacy_ledger(fake_grid, tmp_path: Path, recorder) -> None:
    def node_config(i: int) -> dict[str, object]:
        return {"partition-id": i, "num-partitions": 2, "ledger-file": str(tmp_path / f"l{i}.jsonl")}

    first = recorder()
    grid = fake_grid(client_app, 2, run_id=1, node_config=node_config)
    run_federation(grid, _cfg(), make_scheme(_cfg()), observer=first)
    # A new process: fresh node state, same ledger files, the next run of the federation.
    second = recorder()
    grid2 = fake_grid(client_app, 2, run_id=2, node_config=node_config)
    run_federation(grid2, _cfg(), make_scheme(_cfg()), observer=second)
    eps1 = first.rounds[0].epsilon_by_client
    eps2 = second.rounds[0].epsilon_by_client
    assert set(eps1) == set(eps2) == {"client-0", "client-1"}
    for client in eps1:
        assert eps2[client] > eps1[client] * 1.2  # two rounds spent, not one
    for i in range(2):
        lines = (tmp_path / f"l{i}.jsonl").read_text().splitlines()
        assert [line for line in lines if '"label"' in line] == [
            line for line in lines if "run1/round1" in line or "run2/round1" in line]
        assert sum('"label"' in line for line in lines) == 2


def test_a_key_holder_answers_one_bounded_screen_request_per_round(fake_grid, recorder) -> None:
    cfg = _cfg(**{"num-clients": 3, "secure-aggregation": "ckks", "dp-noise": 0.0, "defense": "norm"})
    grid = fake_grid(client_app, 3)
    rec = recorder()
    run_federation(grid, cfg, make_scheme(cfg), observer=rec)
    assert len(rec.rounds[0].accepted) == 3  # the quorum answered the round's screening request
    screens = [m for m in grid.sent if m.metadata.message_type == P.MSG_SCREEN]
    asked = {m.metadata.dst_node_id for m in screens}
    assert len(asked) == 2 == len(screens)  # --screen-quorum 2 of 3 trainers
    real = screens[0].content

    # A key holder that answered refuses the same well-formed request again.
    holder = grid.nodes[screens[0].metadata.dst_node_id]
    with pytest.raises(ProtocolError, match="second screening request"):
        handle_screen(RecordDict(real), holder.state, {}, holder.run_id)

    # The trainer that was not asked: its state remembers round 1 with 3 clients, so at most
    # 3 + 3 statistics, for round 1 only, once.
    idle = grid.nodes[(set(grid.nodes) - asked).pop()]
    too_many = RecordDict({P.SCREEN: bytes_record({f"s{k:06d}": b"x" for k in range(7)}),
                           P.CFG: ConfigRecord({"round": 1})})
    with pytest.raises(ProtocolError, match="more statistics"):
        handle_screen(too_many, idle.state, {}, idle.run_id)
    other_round = RecordDict({P.SCREEN: bytes_record({"s000000": b"x"}),
                              P.CFG: ConfigRecord({"round": 5})})
    with pytest.raises(ProtocolError, match="another round"):
        handle_screen(other_round, idle.state, {}, idle.run_id)
    answer = handle_screen(RecordDict(real), idle.state, {}, idle.run_id)
    assert len(answer[P.SCREEN]["values"]) == len(real[P.SCREEN])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="second screening request"):
        handle_screen(RecordDict(real), idle.state, {}, idle.run_id)
