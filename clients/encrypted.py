"""The trainer's side of CKKS: key setup, decrypting the global model, encrypting updates,
and answering screening challenges (seed-bound projections; it never decrypts a statistic).

Key material lives in the node's persistent state (``context.state``: SuperNode memory,
never sent anywhere): the X25519 wrap key of the in-band setup and the CKKS secret context.
In provisioned deployments the secret comes from the trainer's sealed bundle (node config
``key-dir``, passphrase from ``FEDGUARD_PASSPHRASE``). Nothing secret is ever put in a reply,
a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, ConfigRecordValues, MetricRecord, RecordDict

from crypto import Preset, SecretContext, decrypt, encrypt, wire
from crypto.keys import WrapKeyPair, load_trainer_bundle, unwrap_secret, wrap_secret
from crypto.provenance import SEED_BYTES, SeedSum, matches, seed_sum, upload_seed
from crypto.stats import Challenge, bound_seeds, commitment, holder_projections, repetitions, upload_tag
from federation import protocol as P
from federation.aggregation import UPDATE_VALUE_BOUND, WEIGHT_DENOMINATOR, weights_within_cap
from federation.config import FLAT_KEYS, MAX_WEIGHT_CAP, MIN_GROUP_SIZE, FedConfig, from_flat
from federation.errors import (
    ConfigError,
    CryptoError,
    GlobalRefused,
    InvalidCiphertext,
    KeyMismatch,
    ProtocolError,
    RejectedUpdate,
)
from federation.records import bytes_record, record_bytes

__all__ = [
    "decrypt_candidates",
    "decrypt_global",
    "encrypt_update",
    "handle_keys_setup",
    "handle_keys_wrap",
    "handle_screen",
    "holds_key",
    "note_round",
    "secret_context",
]

_STATE_CKKS = "fg-ckks"  # ConfigRecord {"secret": bytes}
_STATE_WRAP = "fg-wrap"  # ConfigRecord {"private": bytes}
_STATE_ROUND = "fg-round"  # ConfigRecord {"round", "clients", "screened", "commit", "length"}
_STATE_SCREENED = "fg-screened"  # ConfigRecord {"last-round", "seeds"}: every seed answered
_STATE_SEED_SUM = "fg-seed-sum"  # ConfigRecord {"run", "digest", "sum"}: c1 of the last global
_STATE_ATTRIBUTED = "fg-attributed"  # ConfigRecord {"rounds": [...]}: one attribution per round
MAX_SCREEN_VALUES = 2**27  # longest vector a screening request may name (bounds the work)
MAX_PROVENANCE = 1_000_000  # uploads one global may list (rounds x clients)
MAX_CANDIDATES = 64  # candidate sums in one attribution request

# Deserialising a secret context costs milliseconds; Ray workers serve many messages.
_CONTEXTS: dict[str, SecretContext] = {}


def _remember(secret: bytes) -> SecretContext:
    key = hashlib.sha256(secret).hexdigest()
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = SecretContext.from_bytes(secret)
        _CONTEXTS.clear()  # one federation per process at a time; never accumulate keys
        _CONTEXTS[key] = ctx
    return ctx


def _store_secret(state: RecordDict, secret: bytes) -> SecretContext:
    ctx = _remember(secret)
    state[_STATE_CKKS] = ConfigRecord({"secret": secret})
    return ctx


def holds_key(state: RecordDict) -> bool:
    """True when this node's state holds a CKKS secret context (installed or generated)."""
    return _STATE_CKKS in state.config_records


def secret_context(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                   run_id: int) -> SecretContext:
    """This trainer's CKKS secret context, from state, an in-band wrapped blob or its bundle."""
    rec = state.config_records.get(_STATE_CKKS)
    if rec is not None:
        return _remember(bytes(rec["secret"]))  # type: ignore[arg-type]
    keys = content.config_records.get(P.KEYS)
    if keys is not None and P.KEY_WRAPPED_SECRET in keys:
        return _store_secret(state, _unwrap(keys, state, run_id))
    key_dir = node_config.get("key-dir")
    if key_dir:
        passphrase = os.environ.get("FEDGUARD_PASSPHRASE", "")
        if not passphrase:
            raise CryptoError("FEDGUARD_PASSPHRASE is not set: cannot open the trainer bundle")
        bundle = load_trainer_bundle(Path(str(key_dir)), passphrase)
        return _store_secret(state, bundle.ckks_secret)
    raise CryptoError("this trainer holds no CKKS secret key (no key setup, no key-dir)")


def _unwrap(keys: ConfigRecord, state: RecordDict, run_id: int) -> bytes:
    wrap = state.config_records.get(_STATE_WRAP)
    blob = keys[P.KEY_WRAPPED_SECRET]
    recipient = keys.get(P.KEY_RECIPIENT, "")
    if wrap is None or not isinstance(blob, bytes) or not isinstance(recipient, str):
        raise ProtocolError("wrapped secret without a prior key setup")
    keypair = WrapKeyPair.from_private_bytes(bytes(wrap["private"]))  # type: ignore[arg-type]
    return unwrap_secret(blob, keypair, run_id=str(run_id), recipient_id=recipient)


def handle_keys_setup(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                      run_id: int) -> RecordDict:
    """In-band setup, step 1: make a wrap key pair; the generator also makes the CKKS keys."""
    keys = content.config_records.get(P.KEYS)
    if keys is None:
        raise ProtocolError("key setup without a keys record")
    role, preset_id = keys.get(P.KEY_ROLE), keys.get(P.KEY_PRESET)
    if role not in (P.ROLE_GENERATOR, P.ROLE_MEMBER) or not isinstance(preset_id, str):
        raise ProtocolError("bad key setup request")
    try:
        preset = Preset.from_id(preset_id)
    except ValueError:
        raise ProtocolError("unknown CKKS preset") from None
    keypair = WrapKeyPair.generate()
    state[_STATE_WRAP] = ConfigRecord({"private": keypair.private_bytes()})
    state.config_records.pop(_STATE_CKKS, None)  # a new setup replaces any earlier key
    reply: dict[str, Any] = {P.KEY_WRAP_PUBLIC: keypair.public_bytes}
    if role == P.ROLE_GENERATOR:
        secret = SecretContext.generate(preset)
        _store_secret(state, secret.to_bytes())
        public = secret.public()
        reply.update({P.KEY_PUBLIC_CONTEXT: public.to_bytes(), P.KEY_FINGERPRINT: public.fingerprint})
    return RecordDict({
        P.KEYS: ConfigRecord(reply),
        P.STATUS: ConfigRecord({P.STATUS_CODE: P.STATUS_OK, P.STATUS_REASON: ""}),
        P.METRICS: MetricRecord({}),
    })


def handle_keys_wrap(content: RecordDict, state: RecordDict, run_id: int) -> RecordDict:
    """In-band setup, step 2 (generator only): wrap the secret context for each recipient."""
    keys = content.config_records.get(P.KEYS)
    ckks = state.config_records.get(_STATE_CKKS)
    if keys is None or ckks is None:
        raise ProtocolError("wrap request without a generated key")
    recipients, publics = keys.get(P.KEY_RECIPIENTS), keys.get(P.KEY_WRAP_PUBLICS)
    if not isinstance(recipients, list) or not isinstance(publics, list) \
            or len(recipients) != len(publics) or len(recipients) > 10_000:
        raise ProtocolError("bad wrap request")
    secret = bytes(ckks["secret"])  # type: ignore[arg-type]
    blobs: dict[str, ConfigRecordValues] = {}
    for recipient, public in zip(recipients, publics, strict=True):
        if not isinstance(recipient, str) or not isinstance(public, bytes):
            raise ProtocolError("bad wrap request entry")
        blobs[P.KEY_WRAPPED_PREFIX + recipient] = wrap_secret(secret, public, run_id=str(run_id),
                                                 recipient_id=recipient)
    return RecordDict({
        P.KEYS: ConfigRecord(blobs),
        P.STATUS: ConfigRecord({P.STATUS_CODE: P.STATUS_OK, P.STATUS_REASON: ""}),
        P.METRICS: MetricRecord({}),
    })


def _meta_checked(content: RecordDict, ctx: SecretContext) -> None:
    """The KEYS metadata of a global: exactly the protocol's denominator, our preset and key."""
    meta = content.config_records.get(P.KEYS)
    if meta is None:
        raise GlobalRefused("metadata", "encrypted global model without a keys record")
    denominator = meta.get(P.KEY_DENOMINATOR)
    # type() and not isinstance(): True is an int to Python, and 1 or True would scale G by K
    if type(denominator) is not int or denominator != WEIGHT_DENOMINATOR:
        raise GlobalRefused("denominator", f"expected the integer {WEIGHT_DENOMINATOR}")
    if meta.get(P.KEY_PRESET) != ctx.preset.id:
        raise GlobalRefused("preset", f"expected {ctx.preset.id!r}")
    if meta.get(P.KEY_FINGERPRINT) != ctx.fingerprint:
        raise GlobalRefused("key-fingerprint", "the global names another key")


def _provenance(content: RecordDict, prefix: str) -> tuple[list[bytes], list[int], list[int]]:
    rec = content.config_records.get(P.PROVENANCE)
    if rec is None:
        raise GlobalRefused("provenance", "no provenance record")
    seeds, weights, rounds = (rec.get(prefix + P.PROV_SEEDS), rec.get(prefix + P.PROV_WEIGHTS),
                              rec.get(prefix + P.PROV_ROUNDS))
    if not isinstance(seeds, bytes) or not isinstance(weights, list) or not isinstance(rounds, list):
        raise GlobalRefused("provenance", "missing or mistyped fields")
    n = len(weights)
    if n == 0 or len(rounds) != n or len(seeds) != n * SEED_BYTES or n > MAX_PROVENANCE:
        raise GlobalRefused("provenance", "field lengths disagree")
    if any(type(v) is not int for v in (*weights, *rounds)):
        raise GlobalRefused("provenance", "weights and rounds must be integers")
    ints_w = [int(v) for v in weights if isinstance(v, int)]
    ints_r = [int(v) for v in rounds if isinstance(v, int)]
    return [seeds[i * SEED_BYTES:(i + 1) * SEED_BYTES] for i in range(n)], ints_w, ints_r


def _check_rounds(weights: list[int], rounds: list[int], global_round: int, cfg: FedConfig) -> None:
    """Every round the global sums: >= k uploads, weights summing to K, within the cap."""
    k = max(cfg.recover.group_size, MIN_GROUP_SIZE)
    cap = min(cfg.recover.weight_cap, MAX_WEIGHT_CAP)
    if max(rounds) != global_round or min(rounds) < 1:
        raise GlobalRefused("provenance", f"rounds outside 1..{global_round}")
    for r in sorted(set(rounds)):
        ws = [w for w, rr in zip(weights, rounds, strict=True) if rr == r]
        if len(ws) < k:
            raise GlobalRefused("too-few-updates",
                                f"round {r} sums {len(ws)} upload(s); at least {k} are needed")
        if sum(ws) != WEIGHT_DENOMINATOR or min(ws) < 1:
            raise GlobalRefused("weights", f"round {r}'s weights do not sum to {WEIGHT_DENOMINATOR}")
        if not weights_within_cap(ws, cap):
            raise GlobalRefused("weights", f"round {r}: a weight exceeds {cap:g} x the median")


def _digest(seeds: list[bytes], weights: list[int], rounds: list[int]) -> str:
    h = hashlib.sha256(b"fedguard.provenance.v1\x00")
    for seed, w, r in zip(seeds, weights, rounds, strict=True):
        h.update(seed + w.to_bytes(8, "little") + r.to_bytes(8, "little"))
    return h.hexdigest()


def _expected_c1(ctx: SecretContext, state: RecordDict, run_id: int, length: int,
                 seeds: list[bytes], weights: list[int], rounds: list[int], global_round: int,
                 remember: bool) -> SeedSum | None:
    """The ``c1`` the listed uploads sum to, reusing the sum of the last global verified.

    Recomputing every seed of the run would cost a trainer time linear in the rounds so far;
    the entries before the newest round are those of a global this trainer already checked,
    so their sum (public: made from seeds alone) is kept in its state.
    """
    cut = next((i for i, r in enumerate(rounds) if r == global_round), len(rounds))
    base: SeedSum | None = None
    rec = state.config_records.get(_STATE_SEED_SUM)
    if cut > 0 and rec is not None and rec.get("run") == run_id \
            and rec.get("digest") == _digest(seeds[:cut], weights[:cut], rounds[:cut]):
        raw = rec.get("sum")
        base = SeedSum.from_bytes(raw, ctx, length) if isinstance(raw, bytes) else None
    if base is None:
        cut = 0
    total = seed_sum(ctx, length, seeds[cut:], weights[cut:], base)
    if total is not None and base is not None and total.count != len(seeds):
        return None
    if remember and total is not None:
        state[_STATE_SEED_SUM] = ConfigRecord({"run": run_id, "sum": total.to_bytes(),
                                               "digest": _digest(seeds, weights, rounds)})
    return total


def _decrypt_checked(ctx: SecretContext, blob: bytes, seeds: list[bytes], weights: list[int],
                     rounds: list[int], global_round: int, cfg: FedConfig,
                     initial: npt.NDArray[np.float32], state: RecordDict, run_id: int,
                     remember: bool = False, timings: dict[str, float] | None = None
                     ) -> npt.NDArray[np.float32]:
    t0 = time.perf_counter()
    dim = int(initial.shape[0])
    _check_rounds(weights, rounds, global_round, cfg)
    if len(set(seeds)) != len(seeds):
        raise GlobalRefused("provenance", "an upload is listed twice")
    try:
        enc = wire.decode(blob, ctx, expected_length=dim,
                          max_bytes=wire.encoded_size(ctx.preset, dim, seeded=False))
    except InvalidCiphertext as exc:
        raise GlobalRefused(f"ciphertext:{exc.reason}") from None
    except KeyMismatch:
        raise GlobalRefused("ciphertext:key-mismatch") from None
    if not matches(enc, _expected_c1(ctx, state, run_id, dim, seeds, weights, rounds,
                                     global_round, remember)):
        raise GlobalRefused("provenance", "the ciphertext is not the sum of the listed uploads")
    if timings is not None:  # the cost of verification (metadata, decode, provenance)
        timings["verify-seconds"] = timings.get("verify-seconds", 0.0) + time.perf_counter() - t0
    vec = initial.astype(np.float64) + decrypt(ctx, enc).astype(np.float64) / WEIGHT_DENOMINATOR
    return vec.astype(np.float32)


def _cfg_of(content: RecordDict) -> tuple[FedConfig, int, int]:
    rec = content.config_records.get(P.CFG)
    if rec is None:
        raise GlobalRefused("metadata", "no config record")
    round_, global_round = rec.get(P.CFG_ROUND), rec.get(P.GLOBAL_ROUND)
    # <= : a strategy evaluates round r's global within round r; a later round is impossible
    if type(round_) is not int or type(global_round) is not int or not 0 <= global_round <= round_:
        raise GlobalRefused("round", "round / global-round missing or inconsistent")
    try:
        cfg = from_flat({k: v for k, v in rec.items() if k in FLAT_KEYS})
    except ConfigError as exc:
        raise GlobalRefused("metadata", str(exc)) from None
    return cfg, round_, global_round


def decrypt_global(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                   run_id: int, initial: npt.NDArray[np.float32],
                   timings: dict[str, float] | None = None) -> npt.NDArray[np.float32]:
    """``G = G0 + S / K``: validate the metadata and provenance of ``S``, then decrypt it.

    Raises
    ------
    GlobalRefused
        With a reason code: a denominator other than the protocol's integer ``K`` (a bool, 1,
        ...), another preset or key fingerprint, inconsistent round numbers, provenance that
        does not match the ciphertext's ``c1`` (a replaced global, e.g. a fresh public-key
        encryption), fewer than ``group-size`` uploads in a round, weights that do not sum
        to ``K`` or break the cap, or a malformed ciphertext. Range and loss checks come after
        (:func:`clients.handlers.check_global`).
    """
    ctx = secret_context(content, state, node_config, run_id)
    _meta_checked(content, ctx)
    cfg, _round, global_round = _cfg_of(content)
    seeds, weights, rounds = _provenance(content, "")
    dim = int(initial.shape[0])
    max_bytes = wire.encoded_size(ctx.preset, dim, seeded=False)
    try:
        blob = record_bytes(content.array_records[P.GLOBAL_CIPHER], P.BLOB_GLOBAL, max_bytes)
    except RejectedUpdate as exc:
        raise GlobalRefused(f"ciphertext:{exc.reason}") from None
    return _decrypt_checked(ctx, blob, seeds, weights, rounds, global_round, cfg, initial, state,
                            run_id, remember=True, timings=timings)


def decrypt_candidates(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                       run_id: int, initial: npt.NDArray[np.float32]
                       ) -> list[npt.NDArray[np.float32] | GlobalRefused]:
    """Attribution: decrypt each candidate global, or say why it is refused.

    The request as a whole is refused (:class:`GlobalRefused` raised) unless every candidate
    lists the same uploads for the rounds before ``global-round`` and pairwise disjoint
    uploads for ``global-round`` itself, and this trainer has not answered an attribution
    request for that round before: so what the key holders decrypt are sums of disjoint
    groups of at least ``group-size`` uploads, and nothing finer.
    """
    ctx = secret_context(content, state, node_config, run_id)
    _meta_checked(content, ctx)
    cfg, _round, global_round = _cfg_of(content)
    arrays = content.array_records.get(P.CANDIDATES)
    if arrays is None or not 1 <= len(arrays) <= MAX_CANDIDATES:
        raise GlobalRefused("candidates", "no candidates, or too many")
    done = state.config_records.get(_STATE_ATTRIBUTED)
    listed = done.get("rounds", []) if done is not None else []
    answered = [r for r in listed if isinstance(r, int)] if isinstance(listed, list) else []
    if global_round in answered:
        raise GlobalRefused("candidates", f"round {global_round} was attributed before")
    keys = sorted(arrays.keys())
    provs = [_provenance(content, f"{key}-") for key in keys]
    bases: set[tuple[tuple[bytes, int, int], ...]] = set()
    used: set[bytes] = set()
    for seeds, weights, rounds in provs:
        bases.add(tuple((s, w, r) for s, w, r in zip(seeds, weights, rounds, strict=True)
                        if r != global_round))
        new = {s for s, r in zip(seeds, rounds, strict=True) if r == global_round}
        if new & used:
            raise GlobalRefused("candidates", "candidate groups overlap")
        used |= new
    if len(bases) != 1:
        raise GlobalRefused("candidates", "candidates differ in the earlier rounds")
    state[_STATE_ATTRIBUTED] = ConfigRecord({"rounds": [*answered[-15:], global_round]})
    max_bytes = wire.encoded_size(ctx.preset, int(initial.shape[0]), seeded=False)
    out: list[npt.NDArray[np.float32] | GlobalRefused] = []
    for key, (seeds, weights, rounds) in zip(keys, provs, strict=True):
        try:
            blob = record_bytes(arrays, key, max_bytes)
            out.append(_decrypt_checked(ctx, blob, seeds, weights, rounds, global_round, cfg,
                                        initial, state, run_id))
        except GlobalRefused as exc:
            out.append(exc)
        except RejectedUpdate as exc:
            out.append(GlobalRefused(f"ciphertext:{exc.reason}"))
    return out


def encrypt_update(update: npt.NDArray[np.float32], state: RecordDict) -> tuple[dict[str, Any], int, int]:
    """Seeded symmetric encryption of the update (only the trainer's secret key can)."""
    rec = state.config_records.get(_STATE_CKKS)
    if rec is None:
        raise CryptoError("no CKKS secret key to encrypt with")
    ctx = _remember(bytes(rec["secret"]))  # type: ignore[arg-type]
    bound = min(ctx.preset.spec.value_bound, UPDATE_VALUE_BOUND)
    clipped = int(np.count_nonzero(np.abs(update) > bound))
    if clipped:  # the screen's headroom assumes the bound; honest updates never get close
        update = np.clip(update, -bound, bound)
    enc = encrypt(ctx, update)
    blobs = {P.BLOB_UPDATE: wire.encode(enc)}
    seen = state.config_records.get(_STATE_ROUND)
    if seen is not None:
        seen["length"] = int(update.shape[0])  # the only length this trainer screens this round
        commit = seen.get("commit", b"")
        if isinstance(commit, bytes) and commit:  # pins this seed to the round's one nonce
            blobs[P.BLOB_TAG] = upload_tag(ctx, int(seen["round"]), commit,  # type: ignore[arg-type]
                                           int(update.shape[0]), upload_seed(enc))
    return {P.UPDATE_CIPHER: bytes_record(blobs)}, len(blobs[P.BLOB_UPDATE]), clipped


def note_round(state: RecordDict, round_: int, clients: int, commit: bytes = b"") -> None:
    """Remember the round this trainer was asked to train in (bounds screening requests).

    ``commit`` is the round's screening commitment from the train message
    (:data:`federation.protocol.SCREEN_COMMIT`): the upload's tag binds the seed to it, and
    this trainer answers a screening request only with the nonce that opens it. Each round is
    noted once: both trainer paths refuse a replayed round first
    (:func:`clients.private.claim_round`).
    """
    state[_STATE_ROUND] = ConfigRecord({"round": round_, "clients": clients, "screened": 0,
                                        "commit": commit, "length": 0})


def _screen_challenge(content: RecordDict, state: RecordDict) -> tuple[Challenge, list[bytes]]:
    """Parse and check a screening request against what this key holder knows.

    A key holder answers at most one request per round it trained in, for rounds that only
    increase, with at most as many seeds as the federation has clients, each seed distinct
    and never answered before (in any round), ``r`` equal to :func:`crypto.stats.repetitions`,
    the length of its own upload this round, and a nonce that opens the commitment its train
    message carried. The challenge's ``z`` is recomputed from that nonce, so the server
    cannot choose it, and no request can give an upload a second ``z`` (see
    :mod:`crypto.stats`). Returns the challenge and the seeds' tags.
    """
    req = content.config_records.get(P.SCREEN)
    seen = state.config_records.get(_STATE_ROUND)
    if req is None or seen is None:
        raise ProtocolError("screening request without a round this trainer trained in")
    round_, reps, length = (req.get(P.SCREEN_ROUND), req.get(P.SCREEN_REPETITIONS),
                            req.get(P.SCREEN_LENGTH))
    nonce, seeds = req.get(P.SCREEN_NONCE), req.get(P.SCREEN_SEEDS)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (round_, reps, length)):
        raise ProtocolError("screening request: round, repetitions and length must be ints")
    if round_ != seen["round"]:
        raise ProtocolError("screening request for another round")
    if seen["screened"]:
        raise ProtocolError("a second screening request in this round")
    history = state.config_records.get(_STATE_SCREENED)
    last = int(history["last-round"]) if history is not None else 0  # type: ignore[arg-type]
    if int(round_) <= last:  # type: ignore[arg-type]
        raise ProtocolError("screening request for a round already screened")
    if not isinstance(seeds, list) or not seeds or len(seeds) > int(seen["clients"]):  # type: ignore[arg-type]
        raise ProtocolError("screening request: more seeds than the round can have")
    if not 1 <= int(length) <= MAX_SCREEN_VALUES:  # type: ignore[arg-type]
        raise ProtocolError("screening request: bad vector length")
    if int(length) != seen.get("length", 0):  # type: ignore[arg-type]
        raise ProtocolError("screening request: not the length of this round's uploads")
    if reps != repetitions():
        raise ProtocolError(f"screening request: repetitions must be {repetitions()}")
    commit = seen.get("commit", b"")
    if not isinstance(nonce, bytes) or not isinstance(commit, bytes) or not commit:
        raise ProtocolError("screening request for a round without a screening commitment")
    tags = req.get(P.SCREEN_TAGS)
    if not isinstance(tags, list) or len(tags) != len(seeds) or not all(isinstance(t, bytes) for t in tags):
        raise ProtocolError("screening request: one tag per seed")
    answered = bytes(history["seeds"]) if history is not None else b""  # type: ignore[arg-type]
    known = {answered[i:i + 32] for i in range(0, len(answered), 32)}
    if any(isinstance(sd, bytes) and sd in known for sd in seeds):
        raise ProtocolError("screening request names a seed answered before")
    try:
        challenge = Challenge(int(round_), int(reps), int(length), nonce, tuple(seeds))  # type: ignore[arg-type]
        opens = commitment(challenge.round, nonce) == commit
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad screening request: {exc}") from None
    if not opens:  # the server showed this trainer another nonce at the round's start
        raise ProtocolError("screening request: the nonce does not open this round's commitment")
    return challenge, [bytes(t) for t in tags]  # type: ignore[arg-type]


def handle_screen(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                  run_id: int) -> RecordDict:
    """Answer a screening challenge with flooded projections of ``a_i * s`` (no ``c0`` seen).

    See :mod:`crypto.stats`: the answer is ``<z_k, a_i * s> + f_ik mod q`` for every seed
    ``i`` whose tag binds it to this round's nonce and every repetition ``k`` (``r`` residues
    per such seed, in order), and the indices of the seeds whose tag fails (not projected:
    the server rejects those uploads). The request is checked first
    (:func:`_screen_challenge`) and its seeds are remembered so none is answered twice.
    """
    ctx = secret_context(content, state, node_config, run_id)
    challenge, tags = _screen_challenge(content, state)
    seen = state.config_records[_STATE_ROUND]
    seen["screened"] = 1
    history = state.config_records.get(_STATE_SCREENED)
    answered = bytes(history["seeds"]) if history is not None else b""  # type: ignore[arg-type]
    state[_STATE_SCREENED] = ConfigRecord({"last-round": challenge.round,
                                           "seeds": answered + b"".join(challenge.seeds)})
    bound = bound_seeds(ctx, challenge, tags)
    kept = tuple(sd for sd, ok in zip(challenge.seeds, bound, strict=True) if ok)
    values = holder_projections(ctx, Challenge(challenge.round, challenge.repetitions,
                                               challenge.length, challenge.nonce, kept)) if kept else []
    return RecordDict({
        P.SCREEN: MetricRecord({P.SCREEN_VALUES: [int(v) for row in values for v in row],
                                P.SCREEN_UNBOUND: [i for i, ok in enumerate(bound) if not ok]}),
        P.STATUS: ConfigRecord({P.STATUS_CODE: P.STATUS_OK, P.STATUS_REASON: ""}),
        P.METRICS: MetricRecord({}),
    })
