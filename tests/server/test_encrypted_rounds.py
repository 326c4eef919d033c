"""CKKS rounds end to end against the in-memory fake grid driving the real ClientApp."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from numpy.typing import NDArray

from clients.app import app as client_app
from clients.encrypted import secret_context
from crypto import Preset, PublicContext, SecretContext, decrypt, encrypt, wire
from crypto.stats import repetitions
from federation import protocol as P
from federation.aggregation import WEIGHT_DENOMINATOR
from federation.config import FedConfig, from_flat
from federation.records import bytes_record
from server.app import make_scheme
from server.encrypted import CkksScheme
from server.loop import run_federation
from server.schemes import PlaintextScheme
from simulations.adversary import make_adversarial_client_app
from simulations.attacks import select_malicious
from tests.conftest import FakeGrid, Recorder, ReplyTamper


def _cfg(**flat: object) -> FedConfig:
    base = {"num-clients": 3, "num-server-rounds": 2, "partition": "iid", "data-dir": "subset",
            "batch-size": 32, "secure-aggregation": "ckks"}
    return from_flat({**base, **flat})


def _trainer_secret(grid: FakeGrid) -> SecretContext:
    ctx = next(iter(grid.nodes.values()))
    return secret_context(RecordDict(), ctx.state, {}, ctx.run_id)


def _decrypted_global(scheme: CkksScheme, grid: FakeGrid) -> NDArray[np.float64]:
    secret = _trainer_secret(grid)
    assert scheme.global_enc is not None
    return scheme.initial + decrypt(secret, scheme.global_enc).astype(np.float64) / WEIGHT_DENOMINATOR


@dataclass(frozen=True)
class _Pair:
    """The same 3-round federation (3 clients, same seeds) under CKKS and in plaintext."""

    enc_grid: FakeGrid
    enc_scheme: CkksScheme
    enc_rec: Recorder
    plain_scheme: PlaintextScheme
    plain_rec: Recorder


@pytest.fixture(scope="module")
def three_rounds() -> _Pair:
    """One run of each, read by the tests below (each would otherwise train its own)."""
    enc_cfg = _cfg(**{"num-server-rounds": 3})
    plain_cfg = _cfg(**{"num-server-rounds": 3, "secure-aggregation": "none"})
    enc_grid, plain_grid = FakeGrid(client_app, 3), FakeGrid(client_app, 3)
    enc_scheme, plain_scheme = make_scheme(enc_cfg), make_scheme(plain_cfg)
    assert isinstance(enc_scheme, CkksScheme) and isinstance(plain_scheme, PlaintextScheme)
    enc_rec, plain_rec = Recorder(), Recorder()
    run_federation(enc_grid, enc_cfg, enc_scheme, observer=enc_rec)
    run_federation(plain_grid, plain_cfg, plain_scheme, observer=plain_rec)
    return _Pair(enc_grid, enc_scheme, enc_rec, plain_scheme, plain_rec)


def test_one_encrypted_round_equals_the_plaintext_round(three_rounds: _Pair) -> None:
    # Same seeds, same public initial model: the clients' updates are identical, so the only
    # difference after round 1 is CKKS noise (~1e-6 per value). The round-1 checkpoints give
    # both globals of that round (the encrypted one decrypted by a trainer).
    run = three_rounds
    enc_state, plain_state = run.enc_rec.states[0], run.plain_rec.states[0]
    assert enc_state["round"] == plain_state["round"] == 1
    secret = _trainer_secret(run.enc_grid)
    blob = enc_state[P.GLOBAL_CIPHER]
    assert isinstance(blob, bytes)
    enc_global = wire.decode(blob, secret.public(), expected_length=run.enc_scheme.initial.size,
                             max_bytes=len(blob))
    enc_model = (run.enc_scheme.initial
                 + decrypt(secret, enc_global).astype(np.float64) / WEIGHT_DENOMINATOR)
    plain_scheme = make_scheme(_cfg(**{"secure-aggregation": "none"}))
    assert isinstance(plain_scheme, PlaintextScheme)
    plain_scheme.restore(plain_state)
    assert np.abs(enc_model - plain_scheme.global_model).max() < 2e-5
    ups = [b for r in run.enc_rec.rounds for b in r.bytes_up.values()]
    assert max(ups) <= 7 * 4 * enc_model.size  # uploads at most 7x float32


def test_encrypted_fedavg_tracks_plaintext_over_rounds(three_rounds: _Pair) -> None:
    # Over rounds, SGD amplifies the ~1e-6 differences; the models stay close and the
    # accuracy the same within a point.
    run = three_rounds
    enc_model = _decrypted_global(run.enc_scheme, run.enc_grid)
    start_scheme = make_scheme(_cfg(**{"secure-aggregation": "none"}))
    assert isinstance(start_scheme, PlaintextScheme)
    start = start_scheme.global_model
    moved = run.plain_scheme.global_model - start
    rel = np.linalg.norm(enc_model - run.plain_scheme.global_model) / np.linalg.norm(moved)
    assert rel < 0.1, rel
    assert len(run.enc_rec.rounds) == len(run.plain_rec.rounds) == 3
    # at most 2 points: the subset's small test split moves in steps of ~2 points per image
    # (seen: exactly 0.020 once, from fresh encryption noise)
    assert abs(run.enc_rec.rounds[-1].accuracy - run.plain_rec.rounds[-1].accuracy) <= 0.02 + 1e-9


def test_the_server_side_holds_no_secret_key(three_rounds: _Pair) -> None:
    scheme, grid, rec = three_rounds.enc_scheme, three_rounds.enc_grid, three_rounds.enc_rec
    secret = _trainer_secret(grid)
    # The secret context serialises as header | packed secret key | packed public key: probe
    # with 64 bytes from the middle of the secret-key part.
    secret_bytes = secret.to_bytes()
    public_len = len(secret.public().to_bytes())
    secret_part = secret_bytes[: len(secret_bytes) - public_len]
    assert isinstance(scheme.public, PublicContext)
    assert not hasattr(scheme.public, "decrypt")
    for value in vars(scheme).values():
        assert not isinstance(value, SecretContext)
    # Nothing the server keeps or sent contains the secret context.
    probe = secret_part[len(secret_part) // 2 : len(secret_part) // 2 + 64]
    assert probe in secret_bytes
    assert probe not in scheme.public.to_bytes()
    assert len(rec.states) == 3  # every round's checkpoint
    for state in rec.states:
        for v in state.values():
            assert not (isinstance(v, bytes) and probe in v)
    for msg in grid.sent:
        for rec_ in msg.content.config_records.values():
            for v in rec_.values():
                assert not (isinstance(v, bytes) and probe in v), "secret sent in clear"


def _tamper_update(target: int, make: Callable[[ArrayRecord], ArrayRecord]) -> ReplyTamper:
    def tamper(node: int, reply: Message) -> Message | None:
        if node == target and reply.metadata.message_type == P.MSG_TRAIN and reply.has_content():
            reply.content[P.UPDATE_CIPHER] = make(reply.content.array_records[P.UPDATE_CIPHER])
        return reply
    return tamper


def _blob(rec: ArrayRecord) -> bytes:
    return bytes(rec["u"].data)


_OTHER_KEY = SecretContext.generate(Preset.AGGREGATION)

MALFORMED = {
    "truncated": lambda r: bytes_record({"u": _blob(r)[: len(_blob(r)) // 2]}),
    "random-bytes": lambda r: bytes_record({"u": os.urandom(len(_blob(r)))}),
    "empty": lambda r: bytes_record({"u": b""}),
    "trailing-garbage": lambda r: bytes_record({"u": _blob(r) + b"\x00" * 16}),
    "another-key": lambda r: bytes_record({"u": wire.encode(
        encrypt(_OTHER_KEY, np.zeros(39210, np.float32)))}),
    "float-array": lambda r: ArrayRecord({"u": Array(np.zeros(10, np.float32))}),
    "oversized": lambda r: bytes_record({"u": b"\x00" * (8 * 2**20)}),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_ciphertexts_are_rejected_and_the_round_goes_on(
        fake_grid: type[FakeGrid], kind: str, recorder: type[Recorder]) -> None:
    cfg = _cfg(**{"num-server-rounds": 1})
    rec = recorder()
    grid = fake_grid(client_app, 3, tamper=_tamper_update(101, MALFORMED[kind]))
    result = run_federation(grid, cfg, make_scheme(cfg), observer=rec)
    assert result.rounds_completed == 1
    assert sorted(rec.rounds[0].accepted) == [100, 102]
    reason = rec.rounds[0].rejected[101]
    assert reason.split(":")[0] in ("ciphertext", "malformed", "too-large"), reason


def _lying_screen(liar: int) -> ReplyTamper:
    def tamper(node: int, reply: Message) -> Message | None:
        if node == liar and reply.metadata.message_type == P.MSG_SCREEN and reply.has_content():
            values = reply.content[P.SCREEN][P.SCREEN_VALUES]
            assert isinstance(values, list)
            reply.content[P.SCREEN] = MetricRecord({P.SCREEN_VALUES: [float(v) + 1 for v in values]})
        return reply
    return tamper


def test_a_lying_key_holder_is_caught(fake_grid: type[FakeGrid], recorder: type[Recorder]) -> None:
    cfg = _cfg(**{"num-clients": 4, "num-server-rounds": 1, "defense": "norm,cosine",
                  "screen-quorum": 4})
    rec = recorder()
    grid = fake_grid(client_app, 4, tamper=_lying_screen(102))
    result = run_federation(grid, cfg, make_scheme(cfg), observer=rec)
    assert result.rounds_completed == 1
    liars = [e for e in rec.audit if e.get("event") == "key-holder-disagrees"]
    assert [e["node"] for e in liars] == [102]
    # The honest majority's statistics decided: nobody honest was filtered.
    assert sorted(rec.rounds[0].accepted) == [100, 101, 102, 103]


def _colluding_screen(liars: set[int]) -> ReplyTamper:
    """Colluding key holders: the same lie from each, making the first upload of the request
    look wrapped (a quarter of the modulus added to its projections) -- it would be rejected
    if the lie decided."""
    q = Preset.AGGREGATION.spec.data_moduli[0]

    def tamper(node: int, reply: Message) -> Message | None:
        if node in liars and reply.metadata.message_type == P.MSG_SCREEN and reply.has_content():
            rec = reply.content[P.SCREEN]
            values = [int(v) for v in rec[P.SCREEN_VALUES]]  # type: ignore[union-attr]
            r = repetitions()
            lie = [(v + q // 4) % q if k < r else v for k, v in enumerate(values)]
            reply.content[P.SCREEN] = MetricRecord({P.SCREEN_VALUES: lie,
                                                    P.SCREEN_UNBOUND: list(rec[P.SCREEN_UNBOUND])})  # type: ignore[arg-type]
        return reply
    return tamper


class _LiarsFirst(random.Random):
    """The server's holder draw, rigged so that the colluders are the first holders asked."""

    def __init__(self, liars: set[int]) -> None:
        super().__init__(0)
        self.liars = liars

    def sample(self, population: Any, k: int, **_: Any) -> list[Any]:  # type: ignore[override]
        return sorted(population, key=lambda n: (n not in self.liars, n))[:k]


def test_colluding_key_holders_cannot_decide_the_screen(
        fake_grid: type[FakeGrid], recorder: type[Recorder]) -> None:
    # f = 2: an answer counts once 3 holders gave it. The two colluders are drawn first and
    # agree on a lie that would make node 100's upload look wrapped; with the default quorum
    # of 2 (the rule before f + 1) their pair alone decided. Now the truth decides, both named.
    liars = {101, 102}
    cfg = _cfg(**{"num-clients": 5, "num-server-rounds": 1, "defense": "norm", "max-malicious": 2})
    rec = recorder()
    grid = fake_grid(client_app, 5, tamper=_colluding_screen(liars))
    scheme = CkksScheme(make_scheme(cfg).initial, cfg, rng=_LiarsFirst(liars))
    result = run_federation(grid, cfg, scheme, observer=rec)
    assert result.rounds_completed == 1
    named = sorted(e["node"] for e in rec.audit if e.get("event") == "key-holder-disagrees")
    assert named == [101, 102]
    assert sorted(rec.rounds[0].accepted) == [100, 101, 102, 103, 104]  # nobody made to look wrapped


def test_dp_and_ckks_together(fake_grid: type[FakeGrid], recorder: type[Recorder]) -> None:
    cfg = _cfg(**{"dp-epsilon": 4.0})
    rec = recorder()
    result = run_federation(fake_grid(client_app, 3), cfg, make_scheme(cfg), observer=rec)
    assert result.rounds_completed == 2
    eps = rec.rounds[-1].epsilon_by_client
    assert len(eps) == 3 and all(0 < e <= 4.0 for e in eps.values())


@pytest.mark.parametrize("attack", ["wrap", "shift"])
def test_encoding_attacks_are_rejected_through_the_real_paths(
        fake_grid: type[FakeGrid], recorder: type[Recorder], attack: str) -> None:
    # One attacker among four (partition 0 under this seed), the real adversarial ClientApp,
    # the real server scheme; the attacker's upload is well formed and under the right key.
    cfg = _cfg(**{"num-clients": 4, "num-server-rounds": 1, "defense": "norm,multikrum,cosine",
                  "attack": attack, "malicious": 0.25})
    attacker = 100 + next(iter(select_malicious(4, 0.25, cfg.run.seed)))
    rec = recorder()
    grid = fake_grid(make_adversarial_client_app(cfg), 4)
    result = run_federation(grid, cfg, make_scheme(cfg), observer=rec)
    assert result.rounds_completed == 1
    assert rec.rounds[0].rejected == {attacker: "statistic:wraparound"}
    assert sorted(rec.rounds[0].accepted) == sorted({100, 101, 102, 103} - {attacker})
    events = [e for e in rec.audit if e.get("event") == "screen-rejected"]
    assert [(e["node"], e["reason"]) for e in events] == [(attacker, "statistic:wraparound")]
