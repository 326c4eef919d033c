"""One malicious party never ends a federation: verified globals, rollback, attribution, caps.

Real ClientApp behind the in-memory fake grid; the deviating server is a test double that
takes the honest server's records and changes one thing at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flwr.app import ConfigRecord, RecordDict

from clients.app import app as client_app
from clients.encrypted import secret_context
from crypto import EncryptedVector, add, encrypt, weighted_sum, wire
from federation import protocol as P
from federation.aggregation import WEIGHT_DENOMINATOR, capped_counts, integer_weights
from federation.config import from_flat, to_flat
from federation.errors import ConfigError
from federation.records import bytes_record, vector_record
from server.app import make_scheme
from server.encrypted import CkksScheme, provenance_record
from server.loop import exchange, run_federation
from simulations.adversary import make_adversarial_client_app


def _cfg(**flat: object):
    base = {"num-clients": 3, "num-server-rounds": 1, "partition": "iid", "data-dir": "subset",
            "batch-size": 32, "secure-aggregation": "ckks"}
    return from_flat({**base, **flat})


def _send(grid, cfg, content: RecordDict, *, round_: int, global_round: int,
          kind: str = P.MSG_EVALUATE, node: int = 100) -> RecordDict:
    content[P.CFG] = ConfigRecord({**to_flat(cfg), "round": round_, "node-id": node,
                                   P.GLOBAL_ROUND: global_round})
    replies, lost = exchange(grid, {node: content}, kind, round_, 60)
    assert not lost, lost
    return replies[node].content


def _vote(reply: RecordDict) -> tuple[object, object]:
    vote = reply.config_records[P.VOTE]
    return vote[P.VOTE_ACCEPT], vote[P.VOTE_REASON]


def _refused_for(reply: RecordDict) -> str:
    accept, reason = _vote(reply)
    assert accept is False, "the trainer accepted a forged global"
    assert reply.config_records[P.STATUS]["code"] == P.STATUS_REFUSED_GLOBAL
    return str(reason).split(":")[0]


def test_a_deviating_server_is_refused_with_a_reason(fake_grid, recorder) -> None:
    cfg = _cfg()
    grid = fake_grid(client_app, 3)
    scheme = make_scheme(cfg)
    assert isinstance(scheme, CkksScheme)
    run_federation(grid, cfg, scheme, observer=recorder())
    assert scheme.global_round == 1 and scheme.global_enc is not None
    public = scheme.public
    assert public is not None
    secret = secret_context(RecordDict(), grid.nodes[100].state, {}, grid.nodes[100].run_id)
    honest = scheme.global_records(100, 2)
    prov = honest.config_records[P.PROVENANCE]

    def forged(**meta: object) -> RecordDict:
        rd = scheme.global_records(100, 2)
        rd[P.KEYS] = ConfigRecord({**dict(rd.config_records[P.KEYS]), **meta})  # type: ignore[arg-type]
        return rd

    def with_global(enc: EncryptedVector, entries: list[tuple[bytes, int, int]] | None) -> RecordDict:
        rd = scheme.global_records(100, 2)
        rd[P.GLOBAL_CIPHER] = bytes_record({"g": wire.encode(enc)})
        if entries is not None:
            rd[P.PROVENANCE] = provenance_record([entries])
        return rd

    # uploads the server never saw (made with a trainer's key): real seeded ciphertexts
    rng = np.random.default_rng(0)
    ups = [encrypt(secret, (rng.standard_normal(scheme.dim) * 1e-4).astype(np.float32))
           for _ in range(6)]
    from crypto.provenance import upload_seed

    def entries(vectors: list[EncryptedVector], weights: list[int], rnd: int):
        return [(upload_seed(v), w, rnd) for v, w in zip(vectors, weights, strict=True)]

    zero = public.encrypt(np.zeros(scheme.dim, np.float32))  # G := 0 under the public key
    doubled = add(public, scheme.global_enc, scheme.global_enc)  # G scaled through the weights
    old = [(bytes(prov[P.PROV_SEEDS])[32 * i: 32 * i + 32], int(w), int(r))  # type: ignore[index]
           for i, (w, r) in enumerate(zip(prov[P.PROV_WEIGHTS], prov[P.PROV_ROUNDS], strict=True))]  # type: ignore[arg-type]
    lonely = weighted_sum(public, [ups[0]], [WEIGHT_DENOMINATOR])
    skewed = weighted_sum(public, ups[:3], [4094, 1, 1])
    cases: dict[str, tuple[RecordDict, int, str]] = {
        "denominator True": (forged(denominator=True), 1, "denominator"),
        "denominator 1": (forged(denominator=1), 1, "denominator"),
        "denominator float": (forged(denominator=float(WEIGHT_DENOMINATOR)), 1, "denominator"),
        "denominator 2K": (forged(denominator=2 * WEIGHT_DENOMINATOR), 1, "denominator"),
        "another preset": (forged(preset="scr-4096-v1"), 1, "preset"),
        "another key": (forged(fingerprint="00" * 8), 1, "key-fingerprint"),
        "G := 0 (public-key encryption)": (with_global(zero, None), 1, "provenance"),
        "G x 2 with its weights doubled": (with_global(doubled, [(s, 2 * w, r) for s, w, r in old]),
                                           1, "weights"),
        "one update alone": (with_global(lonely, entries([ups[0]], [WEIGHT_DENOMINATOR], 1)), 1,
                             "too-few-updates"),
        "weights beyond the cap": (with_global(skewed, entries(ups[:3], [4094, 1, 1], 1)), 1,
                                   "weights"),
        "global-round after the round": (scheme.global_records(100, 2), 3, "round"),
    }
    plain = scheme.global_records(100, 2)
    del plain[P.GLOBAL_CIPHER]
    plain[P.GLOBAL_PLAIN] = vector_record(np.zeros(scheme.dim, np.float32))
    cases["a plaintext global under CKKS"] = (plain, 1, "replaced-global")
    for name, (content, global_round, reason) in cases.items():
        reply = _send(grid, cfg, content, round_=2, global_round=global_round)
        assert _vote(reply)[0] is False, f"{name}: accepted"
        assert _refused_for(reply) == reason, name

    # The honest global passes the same checks (so each refusal above is the forged field's).
    reply = _send(grid, cfg, scheme.global_records(100, 2), round_=2, global_round=1)
    assert _vote(reply) == (True, "")

    # Attribution requests that would decrypt less than a sum of k disjoint uploads.
    w3 = [int(w) for w in integer_weights([1, 1, 1])]

    def verify(groups: list[tuple[list[EncryptedVector], list[int]]], node: int) -> RecordDict:
        rd = scheme.candidate_records(groups, 2)
        return _send(grid, cfg, rd, round_=3, global_round=2, kind=P.MSG_VERIFY, node=node)

    small = _vote(verify([(ups[:1], [WEIGHT_DENOMINATOR]), (ups[1:4], w3)], 101))
    assert small[0] == [False, True] and str(small[1][0]).startswith("too-few-updates")  # type: ignore[index]
    overlap = verify([(ups[:3], w3), (ups[2:5], w3)], 102)
    assert _refused_for(overlap) == "candidates"
    fine = verify([(ups[:3], w3), (ups[3:6], w3)], 100)
    assert _vote(fine) == ([True, True], ["", ""])
    again = verify([(ups[:3], w3), (ups[3:6], w3)], 100)  # a second request for round 2
    assert _refused_for(again) == "candidates"


def test_group_size_and_weight_cap_have_floors() -> None:
    with pytest.raises(ConfigError, match="group-size"):
        _cfg(**{"group-size": 1})
    with pytest.raises(ConfigError, match="weight-cap"):
        _cfg(**{"weight-cap": 50})
    assert capped_counts([10, 10, 10_000], 3.0) == [10, 10, 30]


def test_an_inflated_sample_count_is_clipped_and_recorded(fake_grid, recorder) -> None:
    cfg = _cfg(**{"secure-aggregation": "none", "num-clients": 3})

    def inflate(node: int, reply):
        if node == 101 and reply.metadata.message_type == P.MSG_TRAIN and reply.has_content():
            reply.content[P.METRICS]["num-examples"] = 1e9
        return reply

    rec = recorder()
    run_federation(fake_grid(client_app, 3, tamper=inflate), cfg, make_scheme(cfg), observer=rec)
    report = rec.rounds[0]
    declared, used = report.clipped[101]
    assert declared == 10**9 and used < 10**4
    assert max(report.weights.values()) <= 3 * min(report.weights.values()) + 1
    aggregated = [e for e in rec.audit if e.get("event") == "aggregated"]
    assert aggregated[0]["weights"] == {str(n): w for n, w in sorted(report.weights.items())}
    assert aggregated[0]["clipped"]["101"] == [declared, used]


def test_garbage_without_a_filter_is_rejected_by_the_validity_check_before_aggregation(
        fake_grid: Any, recorder: Any) -> None:
    # Under CKKS the uploads' validity check runs with --defense none too: a garbage upload
    # costs its own update (with a reason), never the aggregate of the round.
    cfg = _cfg(**{"num-clients": 6, "num-server-rounds": 2, "attack": "garbage",
                  "malicious": 0.17})
    assert cfg.defense.defenses == ()
    rec = recorder()
    result = run_federation(fake_grid(make_adversarial_client_app(cfg), 6), cfg, make_scheme(cfg),
                            observer=rec)
    assert result.rounds_completed == 2 and not result.stopped_early
    assert result.rolled_back_rounds == []
    assert not [e for e in rec.audit if e.get("event") == "global-refused"]
    for report in rec.rounds:
        assert len(report.rejected) == 1 and len(report.accepted) == 5
        ((node, why),) = report.rejected.items()
        assert why.startswith("statistic:")
        filtered = [e for e in rec.audit if e.get("event") == "filtered" and e["round"] == report.round]
        assert [e["node"] for e in filtered] == [node] and filtered[0]["reasons"] == [why]
        assert report.accuracy is not None and report.accuracy > 0.3


SPIKE = 40.0  # norm of the added mass; the update stays below the screen's honest bound B = 50


def _spiking_app(attacker: int) -> Any:
    """Partition ``attacker`` pushes class 0's output unit (its 32 weights and its bias) up
    by a vector of norm SPIKE: a bounded update the validity check must accept (its norm is
    below B) that makes the model answer class 0 for everything."""
    from clients.app import make_client_app
    from clients.handlers import ClientHooks

    def spike(update: npt.NDArray[np.float32], info: dict[str, Any]) -> npt.NDArray[np.float32]:
        out = np.array(update, dtype=np.float32, copy=True)
        # the last 330 parameters are the output layer: 10 x 32 weights, then 10 biases
        unit0 = np.r_[np.arange(-330, -298), -10]
        out[unit0] += SPIKE / np.sqrt(unit0.size)
        return out

    return make_client_app(lambda nc: ClientHooks(poison_update=spike)
                           if int(nc["partition-id"]) == attacker else ClientHooks())


def test_a_bounded_update_the_validity_check_cannot_see_is_rolled_back_attributed_and_redone(
        fake_grid: Any, recorder: Any) -> None:
    cfg = _cfg(**{"num-clients": 6, "num-server-rounds": 2})
    assert cfg.defense.screen_norm_bound > SPIKE + 5
    rec = recorder()
    result = run_federation(fake_grid(_spiking_app(attacker=2), 6), cfg, make_scheme(cfg),
                            observer=rec)
    assert result.rounds_completed == 2 and not result.stopped_early
    assert result.rolled_back_rounds == [1, 2]
    assert not any(str(e.get("reasons", [""])[0]).startswith("statistic:")
                   for e in rec.audit if e.get("event") == "filtered")  # it passed validity
    refused = [e for e in rec.audit if e.get("event") == "global-refused"]
    assert refused and all(str(e["reason"]).startswith("loss-regression") for e in refused)
    for report in rec.rounds:
        assert report.rolled_back and report.recovery["redone"]
        assert report.recovery["phases"] == 1
        excluded = report.recovery["excluded"]
        assert len(excluded) == 3 and 102 in excluded and set(excluded).isdisjoint(report.accepted)
        assert report.accuracy is not None and report.accuracy > 0.3


def test_a_loss_regression_is_rolled_back_and_a_round_too_small_to_attribute_is_lost(
        fake_grid, recorder) -> None:
    from federation.records import record_vector

    cfg = _cfg(**{"secure-aggregation": "none", "num-server-rounds": 2})

    def boost(node: int, reply):  # a x50 update: in range, but it ruins the model
        if node == 101 and reply.metadata.message_type == P.MSG_TRAIN and reply.has_content() \
                and P.UPDATE_PLAIN in reply.content.array_records:
            vec = record_vector(reply.content.array_records[P.UPDATE_PLAIN], 39210)
            reply.content[P.UPDATE_PLAIN] = vector_record(vec * 50)
        return reply

    rec = recorder()
    scheme = make_scheme(cfg)
    result = run_federation(fake_grid(client_app, 3, tamper=boost), cfg, scheme, observer=rec)
    assert result.rounds_completed == 2 and not result.stopped_early
    assert result.rolled_back_rounds == [1, 2]
    refused = [e for e in rec.audit if e.get("event") == "global-refused"]
    assert refused and all(str(e["reason"]).startswith("loss-regression") for e in refused)
    lost = [e for e in rec.audit if e.get("event") == "round-lost"]
    assert [e["round"] for e in lost] == [1, 2]  # 3 updates: one group, nothing to attribute
    assert scheme.global_round == 0  # the initial model stands; the run still ended normally
