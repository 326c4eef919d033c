"""Trainer role logic: ledger persistence across restarts and key-holder request limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from clients.app import app as client_app
from clients.encrypted import encrypt_update, handle_screen, note_round, secret_context
from clients.ledger import load_ledger
from clients.private import LEDGER_KEY
from crypto import Preset
from crypto.stats import FLOOD_BITS, Challenge, commitment, directions, repetitions, upload_tag
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


ROUND_NONCE = b"\x07" * 32
LENGTH = 39210  # the bundled CNN's parameters: what the holder uploads in its round


def _holder_round(ctx, round_: int, clients: int, nonce: bytes = ROUND_NONCE) -> None:
    """A round this trainer trains in: the train message's commitment, then its own upload."""
    note_round(ctx.state, round_, clients, commitment(round_, nonce))
    encrypt_update(np.zeros(LENGTH, np.float32), ctx.state)


def _screen_request(ctx, round_: int, seeds: list[bytes], reps: int | None = None,
                    length: int = LENGTH, nonce: bytes = ROUND_NONCE,
                    tags: list[bytes] | None = None) -> RecordDict:
    """A request as the server sends it; by default every seed tagged by its uploader (a
    trainer with the same key) for the commitment of ``nonce``."""
    secret = secret_context(RecordDict(), ctx.state, {}, ctx.run_id)
    if tags is None:
        tags = [upload_tag(secret, round_, commitment(round_, ROUND_NONCE), LENGTH, sd) for sd in seeds]
    return RecordDict({P.SCREEN: ConfigRecord({
        P.SCREEN_ROUND: round_, P.SCREEN_REPETITIONS: repetitions() if reps is None else reps,
        P.SCREEN_LENGTH: length, P.SCREEN_NONCE: nonce, P.SCREEN_SEEDS: seeds,
        P.SCREEN_TAGS: tags})})


def _trained_key_holder(fake_grid, recorder):
    cfg = _cfg(**{"secure-aggregation": "ckks", "dp-noise": 0.0})
    grid = fake_grid(client_app, 2)
    run_federation(grid, cfg, make_scheme(cfg), observer=recorder())
    ctx = next(iter(grid.nodes.values()))
    # Round 1 was screened for validity by the run itself (CKKS checks every upload, filter or
    # not); the requests below are about a round 2 this trainer took part in, with 2 clients.
    _holder_round(ctx, 2, 2)
    return ctx


def test_a_key_holder_answers_one_checked_screen_request_per_round(fake_grid, recorder) -> None:
    ctx = _trained_key_holder(fake_grid, recorder)
    seeds = [bytes([k]) * 32 for k in range(3)]
    r = repetitions()
    refusals = {
        "another round": _screen_request(ctx, 5, seeds[:2]),
        "more seeds": _screen_request(ctx, 2, seeds),
        "distinct": _screen_request(ctx, 2, [seeds[0], seeds[0]]),
        "too many repetitions": _screen_request(ctx, 2, seeds[:2], reps=10_000),
        "more repetitions than the soundness needs": _screen_request(ctx, 2, seeds[:2], reps=r + 1),
        "no length": _screen_request(ctx, 2, seeds[:2], length=0),
        "one chunk only": _screen_request(ctx, 2, seeds[:2], length=4096),
        "short nonce": _screen_request(ctx, 2, seeds[:2], nonce=b"short"),
        "another nonce": _screen_request(ctx, 2, seeds[:2], nonce=b"\x09" * 32),
        "no tags": _screen_request(ctx, 2, seeds[:2], tags=[]),
    }
    for why, request in refusals.items():
        with pytest.raises(ProtocolError):
            handle_screen(request, ctx.state, {}, ctx.run_id)
        assert why  # each refusal above is a different check
    reply = handle_screen(_screen_request(ctx, 2, seeds[:2]), ctx.state, {}, ctx.run_id)
    values = list(reply[P.SCREEN][P.SCREEN_VALUES])
    assert len(values) == 2 * r and all(isinstance(v, int) for v in values)
    assert list(reply[P.SCREEN][P.SCREEN_UNBOUND]) == []
    with pytest.raises(ProtocolError, match="second screening request"):
        handle_screen(_screen_request(ctx, 2, seeds[2:]), ctx.state, {}, ctx.run_id)
    # next round: a seed whose tag is not its uploader's is named, not projected
    _holder_round(ctx, 3, 2)
    fresh = [bytes([7]) * 32, bytes([8]) * 32]
    good = _screen_request(ctx, 3, fresh)[P.SCREEN][P.SCREEN_TAGS]
    reply = handle_screen(_screen_request(ctx, 3, fresh, tags=[good[0], b"\x00" * 32]),  # type: ignore[index]
                          ctx.state, {}, ctx.run_id)
    assert list(reply[P.SCREEN][P.SCREEN_UNBOUND]) == [1]
    assert len(list(reply[P.SCREEN][P.SCREEN_VALUES])) == r


def test_a_key_holder_is_no_decryption_oracle(fake_grid, recorder) -> None:
    """What broke on main at ec4c360: the server sent a "statistic" ciphertext of its own
    choosing (c0 = 0, c1 = 2^20 X^j) and the key holder returned 2048 * 2^20 * (X^j s)_0 / Delta,
    i.e. a secret-key coefficient per request (64 of 64 recovered). Now the request format has
    no ciphertext in it, the polynomial multiplied by ``s`` is PRG(seed), and every answer
    carries a flood keyed by the secret; a seed is answered once, ever."""
    ctx = _trained_key_holder(fake_grid, recorder)
    secret = secret_context(RecordDict(), ctx.state, {}, ctx.run_id)
    # 1) the old request shape (masked-statistic blobs) is refused outright
    old = RecordDict({P.SCREEN: bytes_record({"s000000": b"x" * 64}), P.CFG: ConfigRecord({"round": 2})})
    with pytest.raises(ProtocolError):
        handle_screen(old, ctx.state, {}, ctx.run_id)
    # 2) a seed-only request: the answer is never the exact linear form in s
    seeds = [bytes([9]) * 32, bytes([10]) * 32]
    r = repetitions()
    reply = handle_screen(_screen_request(ctx, 2, seeds), ctx.state, {}, ctx.run_id)
    got = np.array(list(reply[P.SCREEN][P.SCREEN_VALUES]), dtype=object).reshape(2, r)
    challenge = Challenge(2, r, LENGTH, ROUND_NONCE, tuple(seeds))
    exact = _exact_seed_projections(secret, challenge)
    q = Preset.AGGREGATION.spec.data_moduli[0]
    diff = [(int(g) - e + q // 2) % q - q // 2 for g, e in zip(got.ravel(), exact, strict=True)]
    assert all(0 < abs(d) <= 2**FLOOD_BITS for d in diff if d != 0)
    assert sum(d != 0 for d in diff) >= 2 * r - 3  # a zero flood has probability 1/2049 per value
    assert len(set(diff)) > r  # spread, not a constant offset one could subtract
    # 3) asking about the same seeds again (next round, its own nonce) is refused
    _holder_round(ctx, 3, 2, nonce=b"\x08" * 32)
    with pytest.raises(ProtocolError, match="answered before"):
        handle_screen(_screen_request(ctx, 3, seeds, nonce=b"\x08" * 32), ctx.state, {}, ctx.run_id)


def _exact_seed_projections(secret, challenge: Challenge) -> list[int]:
    """Oracle: <z_k, a_i * s> mod q with no flood; SEAL itself decrypts (0, a_i) to a_i * s."""
    from crypto import _seal  # test oracle only: SEAL's own arithmetic, not the code under test

    spec = Preset.AGGREGATION.spec
    q = spec.data_moduli[0]
    chunks = -(-challenge.length // spec.values_per_chunk)
    z = directions(challenge)
    ring = secret._keys.ring
    out = []
    for seed in challenge.seeds:
        a = _seal.expand_uniform(seed, spec.data_moduli, spec.poly_degree, 0, chunks)
        rows = []
        for c in range(chunks):
            ct = ring.load_ciphertext(np.stack([np.zeros_like(a[c]), a[c]]), spec.scale)
            pt = _seal._S.Plaintext()
            secret._keys._decryptor.decrypt(ct, pt)
            rows.append(ring.read_plaintext(pt)[0])
        y = _seal.ntt_inverse(np.stack(rows), q).reshape(-1).astype(object)
        y = np.where(y > q // 2, y - q, y)
        out.extend(int(y[row == 1].sum() - y[row == -1].sum()) % q for row in z)
    return out


def test_a_replayed_real_screen_request_is_refused(fake_grid, recorder) -> None:
    cfg = _cfg(**{"num-clients": 3, "secure-aggregation": "ckks", "dp-noise": 0.0, "defense": "norm"})
    grid = fake_grid(client_app, 3)
    rec = recorder()
    run_federation(grid, cfg, make_scheme(cfg), observer=rec)
    assert len(rec.rounds[0].accepted) == 3  # the quorum answered the round's screening request
    screens = [m for m in grid.sent if m.metadata.message_type == P.MSG_SCREEN]
    asked = {m.metadata.dst_node_id for m in screens}
    assert len(asked) == 2 == len(screens)  # --screen-quorum 2 of 3 trainers
    real = screens[0].content
    holder = grid.nodes[screens[0].metadata.dst_node_id]
    with pytest.raises(ProtocolError, match="second screening request"):
        handle_screen(RecordDict(real), holder.state, {}, holder.run_id)
    # The trainer that was not asked answers the real request once, then never again.
    idle = grid.nodes[(set(grid.nodes) - asked).pop()]
    answer = handle_screen(RecordDict(real), idle.state, {}, idle.run_id)
    assert len(answer[P.SCREEN][P.SCREEN_VALUES]) == 3 * real[P.SCREEN][P.SCREEN_REPETITIONS]  # type: ignore[operator]
    with pytest.raises(ProtocolError, match="second screening request"):
        handle_screen(RecordDict(real), idle.state, {}, idle.run_id)


def test_a_replayed_train_message_is_refused_before_anything_is_spent(fake_grid, recorder) -> None:
    # Under CKKS a second train message for a round would be a second upload of the same update
    # under a fresh screening commitment: another z, more projections of it. Refused first.
    cfg = _cfg(**{"secure-aggregation": "ckks"})
    grid = fake_grid(client_app, 2)
    run_federation(grid, cfg, make_scheme(cfg), observer=recorder())
    train = next(m for m in grid.sent if m.metadata.message_type == P.MSG_TRAIN)
    node = grid.nodes[train.metadata.dst_node_id]
    spent = len(load_ledger(node.state, LEDGER_KEY).events)
    assert spent == 1  # round 1 was trained, with DP
    [reply] = grid.send_and_receive([Message(train.content, dst_node_id=train.metadata.dst_node_id,
                                             message_type=P.MSG_TRAIN, group_id="1")])
    status = reply.content.config_records[P.STATUS]
    assert status[P.STATUS_CODE] == P.STATUS_ERROR
    assert "not after the last round" in str(status[P.STATUS_REASON])
    assert len(load_ledger(node.state, LEDGER_KEY).events) == spent  # nothing spent twice
