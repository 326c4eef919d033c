"""Simulated attackers composed into the real ClientApp through :class:`ClientHooks`.

Which clients attack is decided by :func:`simulations.attacks.select_malicious` over partition
ids. Attackers know the defence configuration. For attacks that need the spread of honest
updates (ALIE, IPM, Gaussian, and the defence evasion of backdoor/scaling), each attacker
estimates it itself: it trains two extra honest models on the two halves of its clean data
and uses those updates together with its full honest update (``benign_estimates``, k = 3).
Min-max and min-sum with ``collude`` (their default, as published) instead pool the clean
updates of every colluder's client (k = number of attackers, at least 2), so that all
colluders send the same vector.
In backdoor runs every client also reports the attack success rate of the global model on
its triggered test images (``eval-x-asr``), which the server averages like accuracy.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import RecordDict

from clients.app import make_client_app
from clients.encrypted import secret_context
from clients.handlers import ClientHooks, raw_partition
from clients.training import train_local
from crypto import wire
from federation import protocol as P
from federation.config import FedConfig
from federation.data import normalize
from federation.errors import ConfigError
from federation.records import bytes_record, record_bytes, vector_record
from federation.tasks import build_model, flatten_params, load_flat_params
from simulations.attacks import (
    AttackContext,
    Garbage,
    UploadAttack,
    make_attack,
    select_malicious,
    trigger_rates,
)

__all__ = ["asr_eval", "check_attack", "hooks_for", "make_adversarial_client_app", "parse_attack",
           "probes_trigger"]

BACKDOOR_TARGET = 0


def asr_eval(model: torch.nn.Module, cfg: FedConfig, pid: int, num: int,
             target: int = BACKDOOR_TARGET) -> dict[str, float]:
    """Backdoor success and trigger flips on this client's test images
    (:func:`simulations.attacks.trigger_rates`), each with its own weight."""
    _x, _y, tx, ty = raw_partition(cfg, pid, num)

    def predict(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        with torch.no_grad():
            model.eval()
            predicted: npt.NDArray[np.int64] = model(torch.from_numpy(normalize(images))).argmax(1).numpy()
            return predicted

    rates = trigger_rates(predict, tx, ty, target)
    x = P.EVAL_EXTRA_PREFIX
    return {x + "asr": rates.success, x + "asr-examples": float(rates.success_examples),
            x + "asr-flip": rates.flips, x + "asr-flip-examples": float(rates.flip_examples)}


def _benign_estimates(cfg: FedConfig, pid: int, num: int, global_vec: npt.NDArray[np.float32],
                      own_clean: npt.NDArray[np.float32], round_: int) -> npt.NDArray[np.float32]:
    x, y, _tx, _ty = raw_partition(cfg, pid, num)
    xs, ys = normalize(x), np.asarray(y, np.int64)
    rng = np.random.default_rng([cfg.run.seed, pid, round_, 99])
    order = rng.permutation(len(ys))
    halves = [order[: len(order) // 2], order[len(order) // 2:]]
    estimates = [own_clean]
    for i, idx in enumerate(halves):
        if len(idx) == 0:
            continue
        model = build_model(cfg.data.task, cfg.run.seed)
        load_flat_params(model, global_vec)
        train_local(model, xs[idx], ys[idx], epochs=cfg.train.local_epochs,
                    batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                    momentum=cfg.train.momentum, seed=round_ * 7 + i, dp=None)
        estimates.append(flatten_params(model) - global_vec)
    return np.stack(estimates).astype(np.float32)


def _colluder_estimates(cfg: FedConfig, colluders: list[int], num: int,
                        global_vec: npt.NDArray[np.float32], round_: int) -> npt.NDArray[np.float32]:
    """The clean honest update of every colluder's client, the same set for each colluder.

    The published min-max / min-sum colluders pool the benign updates of the clients they
    control. A simulated attacker cannot read another process's update, so each one trains
    every colluder's partition itself, deterministically (seed from the round and the
    partition): all colluders obtain the same estimates and hence the same malicious vector.
    """
    estimates = []
    for pid in colluders:
        x, y, _tx, _ty = raw_partition(cfg, pid, num)
        model = build_model(cfg.data.task, cfg.run.seed)
        load_flat_params(model, global_vec)
        with _one_torch_thread():
            train_local(model, normalize(x), np.asarray(y, np.int64), epochs=cfg.train.local_epochs,
                        batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                        momentum=cfg.train.momentum, seed=round_ * 7919 + pid, dp=None)
        estimates.append(flatten_params(model) - global_vec)
    return np.stack(estimates).astype(np.float32)


class _one_torch_thread:
    """One torch thread while colluders recompute each other's updates: identical sums on
    every process, so their shared vector is the same bit for bit."""

    def __enter__(self) -> None:
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)


def parse_attack(text: str) -> tuple[str, dict[str, Any]]:
    """``"scaling:boost=50"`` -> ``("scaling", {"boost": 50.0})`` (values: number, bool, text)."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError("attack", f"parameter {item!r} is not KEY=VALUE")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw) if raw.lstrip("-").isdigit() else float(raw)
            except ValueError:
                pass
        params[key.strip().replace("-", "_")] = value
    return name, params


def check_attack(text: str) -> None:
    """Refuse an ``attack`` value the registry cannot build, before any process starts.

    Raises :class:`~federation.errors.ConfigError` naming ``attack`` (unknown name or
    parameter) or ``attack.<param>`` (bad value).
    """
    name, params = parse_attack(text)
    make_attack(name, **params)


def probes_trigger(cfg: FedConfig) -> bool:
    """True when every client measures the backdoor's success (``eval-asr``): the attack is
    ``backdoor``, also with no attacker at all (``malicious = 0``), which gives the rate at
    which an unpoisoned model already sends triggered images to the target class."""
    return bool(cfg.attack.attack) and parse_attack(cfg.attack.attack)[0] == "backdoor"


def hooks_for(cfg: FedConfig, node_config: Mapping[str, Any]) -> ClientHooks:
    """The hooks of the client with this node config: an attacker's, or only the ASR probe."""
    pid = int(node_config.get(P.NODE_PARTITION_ID, -1))
    num = int(node_config.get(P.NODE_NUM_PARTITIONS, cfg.run.clients))
    name, params = parse_attack(cfg.attack.attack)
    backdoor = probes_trigger(cfg)
    extra = functools.partial(asr_eval, target=int(params.get("target", BACKDOOR_TARGET))) \
        if backdoor else None
    if pid not in select_malicious(num, cfg.attack.malicious, cfg.run.seed):
        return ClientHooks(extra_eval=extra)
    attack = make_attack(name, **params)
    if isinstance(attack, Garbage):  # replaces the upload itself, after encryption
        return ClientHooks(poison_upload=functools.partial(_garbage_upload, attack, cfg.run.seed, pid),
                           extra_eval=extra)
    if name == "label-flip":  # pure data poisoning: the update is left as trained
        return ClientHooks(poison_data=attack.poison_data, extra_eval=extra)
    poisons_data = backdoor
    colluders = sorted(select_malicious(num, cfg.attack.malicious, cfg.run.seed))
    n_attackers = len(colluders)
    pooled = bool(getattr(attack, "collude", False)) and n_attackers >= 2

    def poison_update(update: npt.NDArray[np.float32], info: dict[str, Any]) -> npt.NDArray[np.float32]:
        global_vec = info["global"]
        round_ = int(info["round"])
        if pooled:  # min-max / min-sum as published: one shared estimate set, one vector
            estimates = _colluder_estimates(cfg, colluders, num, global_vec, round_)
        else:
            # Data-poisoning attacks trained on poisoned data already; estimates use clean halves.
            estimates = _benign_estimates(cfg, pid, num, global_vec, update, round_)
        if poisons_data:  # the trained update is poisoned: only the clean halves are benign
            estimates = estimates[1:]
        ctx = AttackContext(global_model=global_vec, round=round_, n_clients=num,
                            n_attackers=n_attackers, defenses=cfg.defense.defenses,
                            benign_estimates=estimates,
                            benign_update=None if poisons_data else update,
                            seed=cfg.run.seed * 1000 + pid)
        return np.asarray(attack.poison_update(update, ctx), dtype=np.float32)

    upload = None
    if isinstance(attack, UploadAttack):
        def upload(arrays: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
            if P.UPDATE_CIPHER not in arrays:  # plaintext mode: nothing to tamper with
                return arrays
            ctx = AttackContext(global_model=info["global"], round=int(info["round"]),
                                n_clients=num, n_attackers=n_attackers,
                                defenses=cfg.defense.defenses, seed=cfg.run.seed * 1000 + pid)
            return _tamper_ciphertext(arrays, info["state"], attack, ctx)

    return ClientHooks(poison_data=attack.poison_data, poison_update=poison_update, extra_eval=extra,
                       poison_upload=upload)


def _tamper_ciphertext(arrays: dict[str, Any], state: Any, attack: UploadAttack,
                       ctx: AttackContext) -> dict[str, Any]:
    """Decode the attacker's own encrypted upload, apply the ciphertext attack, re-encode."""
    secret = secret_context(RecordDict(), state, {}, 0)  # the key is in this node's state
    blob = record_bytes(arrays[P.UPDATE_CIPHER], P.BLOB_UPDATE, 1 << 31)
    enc = wire.decode(blob, secret, expected_length=None, max_bytes=len(blob))
    return _replace_blob(arrays, wire.encode(attack.poison_upload(enc, ctx)))


def _replace_blob(arrays: dict[str, Any], blob: bytes) -> dict[str, Any]:
    """The upload's records with ``blob`` as its envelope; the rest (the screening tag the
    trainer made for its seed) kept: the attacks keep the seed, so the tag still binds it."""
    rec = arrays[P.UPDATE_CIPHER]
    others = {k: bytes(rec[k].data) for k in rec if k != P.BLOB_UPDATE}
    return {**arrays, P.UPDATE_CIPHER: bytes_record({P.BLOB_UPDATE: blob, **others})}


def _garbage_upload(attack: Garbage, seed: int, pid: int, arrays: dict[str, Any],
                    info: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng([seed, pid, int(info["round"]), 7])
    if P.UPDATE_CIPHER in arrays:
        honest = bytes(arrays[P.UPDATE_CIPHER][P.BLOB_UPDATE].data)
        return _replace_blob(arrays, attack.garbage_envelope(honest, rng))
    dim = int(arrays[P.UPDATE_PLAIN][P.VECTOR_ITEM].shape[0])
    return {**arrays, P.UPDATE_PLAIN: vector_record(attack.garbage_update(dim, rng))}


def make_adversarial_client_app(cfg: FedConfig) -> Any:
    """The real trainer ClientApp with attackers composed in for ``cfg.attack``."""
    return make_client_app(lambda node_config: hooks_for(cfg, node_config))
