"""The trainer's scheme (clients/schemes.py): key installation is an explicit first step.

Real parts throughout: the real ClientApp on the in-memory grid, the server's real schemes
(in-band CKKS key setup with real TenSEAL keys, X25519 wrapping), real DP-SGD on the bundled
subset. Each test drives the trainer through its public surfaces (a message to the ClientApp,
``trainer_scheme``) and checks what leaves the node: the reply, its ledger file, its key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from clients.app import app as client_app
from clients.encrypted import holds_key, secret_context
from clients.schemes import trainer_scheme
from federation import protocol as P
from federation.config import FedConfig, from_flat, to_flat
from federation.errors import RejectedUpdate
from federation.updates import PlainUpdate
from server.app import make_scheme
from server.encrypted import CkksScheme


def _cfg(mode: str) -> FedConfig:
    return from_flat({"num-clients": 2, "num-server-rounds": 2, "partition": "iid",
                      "data-dir": "subset", "batch-size": 32, "dp-noise": 1.0,
                      "secure-aggregation": mode})


def _message(records: RecordDict, cfg: FedConfig, node: int, round_: int, global_round: int,
             kind: str = P.MSG_TRAIN) -> Message:
    records[P.CFG] = ConfigRecord({**to_flat(cfg), P.CFG_ROUND: round_, P.CFG_NODE_ID: node,
                                   P.GLOBAL_ROUND: global_round})
    return Message(records, dst_node_id=node, message_type=kind, group_id=str(round_))


def _status(reply: Message) -> tuple[Any, Any]:
    rec = reply.content.config_records[P.STATUS]
    return rec[P.STATUS_CODE], rec[P.STATUS_REASON]


def _ledger_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if '"label"' in ln] if path.exists() else []


def test_a_ckks_train_message_without_a_key_is_refused_before_anything_is_spent(
        fake_grid: Any, tmp_path: Path) -> None:
    cfg = _cfg("ckks")
    grid = fake_grid(client_app, 1, node_config=lambda i: {
        "partition-id": i, "num-partitions": 2, "ledger-file": str(tmp_path / "ledger.jsonl")})
    server = make_scheme(cfg)  # no key setup has run: this node holds no key and no wrap key
    no_keys = server.global_records(100, 1)
    no_keys.config_records.pop(P.KEYS)
    wrapped = server.global_records(100, 1)  # a wrapped copy, but no prior in-band setup
    wrapped.config_records[P.KEYS][P.KEY_WRAPPED_SECRET] = b"\x01" * 200
    wrapped.config_records[P.KEYS][P.KEY_RECIPIENT] = "100"
    expected = {"no keys record": (no_keys, "holds no CKKS secret key"),
                "no prior key setup": (wrapped, "without a prior key setup")}
    for why, (records, reason) in expected.items():
        [reply] = grid.send_and_receive([_message(records, cfg, 100, 1, 0)])
        code, text = _status(reply)
        assert code == P.STATUS_ERROR and reason in text, (why, text)
        assert P.UPDATE_CIPHER not in reply.content.array_records, why
        assert P.UPDATE_PLAIN not in reply.content.array_records, why
    # refused before training: no epsilon was spent, on the ledger file or in the node's state
    assert _ledger_lines(tmp_path / "ledger.jsonl") == []
    assert not holds_key(grid.nodes[100].state)
    [reply] = grid.send_and_receive([_message(server.global_records(100, 1), cfg, 100, 1, 0,
                                              P.MSG_EVALUATE)])
    assert _status(reply)[0] == P.STATUS_ERROR  # evaluate runs the same first step


def _in_band(fake_grid: Any, cfg: FedConfig) -> tuple[Any, CkksScheme]:
    grid = fake_grid(client_app, 2)
    server = make_scheme(cfg)
    assert isinstance(server, CkksScheme)
    server.setup(grid, sorted(grid.nodes), cfg)  # node 100 generates, node 101 gets a wrapped copy
    return grid, server


def test_installing_the_key_twice_is_harmless(fake_grid: Any) -> None:
    cfg = _cfg("ckks")
    grid, server = _in_band(fake_grid, cfg)
    assert server.public is not None
    member = grid.nodes[101]
    first = server.global_records(101, 1)  # carries node 101's wrapped secret, once
    assert P.KEY_WRAPPED_SECRET in first.config_records[P.KEYS]
    for _ in range(2):
        scheme = trainer_scheme(cfg, member.state, member.node_config, member.run_id)
        scheme.install_keys(first)
        assert secret_context(RecordDict(), member.state, {}, member.run_id).fingerprint \
            == server.public.fingerprint
    other = RecordDict({P.KEYS: ConfigRecord({P.KEY_WRAPPED_SECRET: b"\x02" * 200,
                                              P.KEY_RECIPIENT: "101"})})
    scheme.install_keys(other)  # an installed key is kept: a later wrapped copy is ignored
    assert secret_context(RecordDict(), member.state, {}, member.run_id).fingerprint \
        == server.public.fingerprint
    # the same message, delivered after the explicit installs, trains and encrypts normally
    [reply] = grid.send_and_receive([_message(first, cfg, 101, 1, 0)])
    assert _status(reply) == (P.STATUS_OK, "")
    enc = server.parse_update(101, reply.content)  # under the federation's public key
    assert enc.seeded and enc.multiplier == 1


def test_a_key_holder_is_not_downgraded_by_a_plaintext_config(fake_grid: Any) -> None:
    cfg = _cfg("ckks")
    grid, server = _in_band(fake_grid, cfg)  # node 100 (the generator) holds the key
    plain_cfg = _cfg("none")
    initial = make_scheme(plain_cfg)
    [reply] = grid.send_and_receive([_message(initial.global_records(100, 1), plain_cfg, 100, 1, 0)])
    assert _status(reply) == (P.STATUS_OK, "")
    assert P.UPDATE_PLAIN not in reply.content.array_records  # never a plaintext update
    # decoded under the federation's key (the tag is checked last), but untagged: a plaintext config carries no
    # screening commitment, and the CKKS server refuses an upload its key holders cannot bind
    with pytest.raises(RejectedUpdate, match="untagged"):
        server.parse_update(100, reply.content)
    # and a plaintext global that is not the public initial model is refused, not trained on
    other = make_scheme(plain_cfg)
    other.aggregate([PlainUpdate(np.full(other.dim, 0.01, np.float32))], [1], 1)
    [reply] = grid.send_and_receive([_message(other.global_records(100, 2), plain_cfg, 100, 2, 1)])
    code, text = _status(reply)
    assert code == P.STATUS_REFUSED_GLOBAL and text.startswith("replaced-global")
    # nor does it check plaintext attribution candidates of the server's choosing
    step = PlainUpdate(np.full(other.dim, 0.02, np.float32))
    candidates = other.candidate_records([([step], [1])], 2)
    [reply] = grid.send_and_receive([_message(candidates, plain_cfg, 100, 2, 1, P.MSG_VERIFY)])
    code, text = _status(reply)
    assert code == P.STATUS_REFUSED_GLOBAL and text.startswith("metadata"), text


def test_a_plaintext_scheme_ignores_key_records(fake_grid: Any) -> None:
    cfg = _cfg("none")
    grid = fake_grid(client_app, 1)
    records = make_scheme(cfg).global_records(100, 1)
    records[P.KEYS] = ConfigRecord({P.KEY_WRAPPED_SECRET: b"\x03" * 200, P.KEY_RECIPIENT: "100",
                                    P.KEY_PRESET: "aggregation"})
    state = grid.nodes[100].state
    scheme = trainer_scheme(cfg, state, {}, 7)
    scheme.install_keys(records)
    assert scheme.name == "none" and not holds_key(state)
    [reply] = grid.send_and_receive([_message(records, cfg, 100, 1, 0)])
    assert _status(reply) == (P.STATUS_OK, "")
    assert P.UPDATE_PLAIN in reply.content.array_records
    assert P.UPDATE_CIPHER not in reply.content.array_records
    assert not holds_key(state)
