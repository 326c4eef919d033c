"""The trainer's side of CKKS: key setup, decrypting the global model, encrypting updates,
and decrypting masked screening statistics.

Key material lives in the node's persistent state (``context.state``: SuperNode memory,
never sent anywhere): the X25519 wrap key of the in-band setup and the CKKS secret context.
In provisioned deployments the secret comes from the trainer's sealed bundle (node config
``key-dir``, passphrase from ``FEDGUARD_PASSPHRASE``). Nothing secret is ever put in a reply,
a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, ConfigRecordValues, MetricRecord, RecordDict

from crypto import Preset, SecretContext, decrypt, encrypt, wire
from crypto.keys import WrapKeyPair, load_trainer_bundle, unwrap_secret, wrap_secret
from crypto.stats import decrypt_scalars
from federation import protocol as P
from federation.aggregation import UPDATE_VALUE_BOUND
from federation.errors import CryptoError, ProtocolError
from federation.records import bytes_record, record_bytes

__all__ = [
    "decrypt_global",
    "encrypt_update",
    "handle_keys_setup",
    "handle_keys_wrap",
    "handle_screen",
]

_STATE_CKKS = "fg-ckks"  # ConfigRecord {"secret": bytes}
_STATE_WRAP = "fg-wrap"  # ConfigRecord {"private": bytes}
_STATE_ROUND = "fg-round"  # ConfigRecord {"round", "clients", "screened"}: limits decryptions
MAX_SCREEN_STATISTICS = 100_000
GLOBAL_RANGE = 1e4  # a decrypted global model beyond this is not a model: refuse it

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


def secret_context(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                   run_id: int) -> SecretContext:
    """This trainer's CKKS secret context, from state, an in-band wrapped blob or its bundle."""
    rec = state.config_records.get(_STATE_CKKS)
    if rec is not None:
        return _remember(bytes(rec["secret"]))  # type: ignore[arg-type]
    keys = content.config_records.get(P.KEYS)
    if keys is not None and "wrapped-secret" in keys:
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
    blob = keys["wrapped-secret"]
    recipient = keys.get("recipient", "")
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
    role, preset_id = keys.get("role"), keys.get("preset")
    if role not in ("generator", "member") or not isinstance(preset_id, str):
        raise ProtocolError("bad key setup request")
    try:
        preset = Preset.from_id(preset_id)
    except ValueError:
        raise ProtocolError("unknown CKKS preset") from None
    keypair = WrapKeyPair.generate()
    state[_STATE_WRAP] = ConfigRecord({"private": keypair.private_bytes()})
    state.config_records.pop(_STATE_CKKS, None)  # a new setup replaces any earlier key
    reply: dict[str, Any] = {"wrap-public": keypair.public_bytes}
    if role == "generator":
        secret = SecretContext.generate(preset)
        _store_secret(state, secret.to_bytes())
        public = secret.public()
        reply.update({"public-context": public.to_bytes(), "fingerprint": public.fingerprint})
    return RecordDict({
        P.KEYS: ConfigRecord(reply),
        P.STATUS: ConfigRecord({"code": P.STATUS_OK, "reason": ""}),
        P.METRICS: MetricRecord({}),
    })


def handle_keys_wrap(content: RecordDict, state: RecordDict, run_id: int) -> RecordDict:
    """In-band setup, step 2 (generator only): wrap the secret context for each recipient."""
    keys = content.config_records.get(P.KEYS)
    ckks = state.config_records.get(_STATE_CKKS)
    if keys is None or ckks is None:
        raise ProtocolError("wrap request without a generated key")
    recipients, publics = keys.get("recipients"), keys.get("wrap-publics")
    if not isinstance(recipients, list) or not isinstance(publics, list) \
            or len(recipients) != len(publics) or len(recipients) > 10_000:
        raise ProtocolError("bad wrap request")
    secret = bytes(ckks["secret"])  # type: ignore[arg-type]
    blobs: dict[str, ConfigRecordValues] = {}
    for recipient, public in zip(recipients, publics, strict=True):
        if not isinstance(recipient, str) or not isinstance(public, bytes):
            raise ProtocolError("bad wrap request entry")
        blobs[f"blob-{recipient}"] = wrap_secret(secret, public, run_id=str(run_id),
                                                 recipient_id=recipient)
    return RecordDict({
        P.KEYS: ConfigRecord(blobs),
        P.STATUS: ConfigRecord({"code": P.STATUS_OK, "reason": ""}),
        P.METRICS: MetricRecord({}),
    })


def decrypt_global(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                   run_id: int, initial: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``G = G0 + S / K``: decrypt the encrypted sum of updates ``S``, divide by ``K``."""
    dim = int(initial.shape[0])
    ctx = secret_context(content, state, node_config, run_id)
    meta = content.config_records.get(P.KEYS)
    denominator = meta.get("denominator") if meta is not None else None
    if not isinstance(denominator, int) or not 1 <= denominator <= 2**31:
        raise ProtocolError("encrypted global model without a valid denominator")
    max_bytes = wire.encoded_size(ctx.preset, dim, seeded=False)
    blob = record_bytes(content.array_records[P.GLOBAL_CIPHER], "g", max_bytes)
    enc = wire.decode(blob, ctx, expected_length=dim, max_bytes=max_bytes)
    vec = initial.astype(np.float64) + decrypt(ctx, enc).astype(np.float64) / denominator
    if not np.all(np.isfinite(vec)) or float(np.max(np.abs(vec))) > GLOBAL_RANGE:
        raise ProtocolError("decrypted global model is out of range")
    return vec.astype(np.float32)


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
    blob = wire.encode(encrypt(ctx, update))
    return {P.UPDATE_CIPHER: bytes_record({"u": blob})}, len(blob), clipped


def note_round(state: RecordDict, round_: int, clients: int) -> None:
    """Remember the round this trainer was asked to train in (bounds screening requests)."""
    state[_STATE_ROUND] = ConfigRecord({"round": round_, "clients": clients, "screened": 0})


def handle_screen(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                  run_id: int) -> RecordDict:
    """Decrypt masked statistics and return only each one's slot sum.

    A key holder is a decryption oracle for whoever asks, so it answers at most one
    screening request per round it trained in, with at most ``n + n(n-1)/2`` statistics
    (squared norms and pair distances of the round's n clients).
    """
    ctx = secret_context(content, state, node_config, run_id)
    arrays = content.array_records.get(P.SCREEN)
    cfg = content.config_records.get(P.CFG)
    seen = state.config_records.get(_STATE_ROUND)
    if arrays is None or cfg is None or seen is None:
        raise ProtocolError("bad screening request")
    n = int(seen["clients"])  # type: ignore[arg-type]
    if cfg.get("round") != seen["round"]:
        raise ProtocolError("screening request for another round")
    if seen["screened"]:
        raise ProtocolError("a second screening request in this round")
    if len(arrays) > min(MAX_SCREEN_STATISTICS, n + n * (n - 1) // 2):
        raise ProtocolError("more statistics than this round can need")
    seen["screened"] = 1
    limit = wire.statistic_size(ctx.preset, 3)
    blobs = [record_bytes(arrays, k, limit) for k in sorted(arrays.keys())]
    values = decrypt_scalars(ctx, blobs)
    return RecordDict({
        P.SCREEN: MetricRecord({"values": [float(v) for v in values]}),
        P.STATUS: ConfigRecord({"code": P.STATUS_OK, "reason": ""}),
        P.METRICS: MetricRecord({}),
    })
