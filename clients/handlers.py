"""Client role logic: what a trainer does with each message. Flower-free apart from records.

Handlers take the message content, the node's persistent state and its node config, and
return the reply content. :mod:`clients.app` binds them to Flower's ClientApp; tests and the
in-memory fake grid call them directly. Simulated attackers are composed in through
:class:`ClientHooks` (see :mod:`simulations.attacks`), never by editing this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from clients.ledger import LedgerFile, load_ledger, record_event
from clients.private import LEDGER_KEY, claim_round, dp_plan, mark_trained
from clients.schemes import trainer_scheme
from clients.training import evaluate, train_local
from federation import protocol as P
from federation.config import FLAT_KEYS, FedConfig, from_flat
from federation.data import normalize
from federation.errors import ConfigError, FedguardError, GlobalRefused, PrivacyBudgetExceeded
from federation.privacy import (
    PrivacyBudget,
    PrivacyEvent,
    PrivacyLedger,
    default_delta,
    epsilon,
    poisson_schedule,
)
from federation.tasks import (
    FASHION_MNIST,
    FASHION_MNIST_TANH,
    ClientData,
    DataRequest,
    Split,
    build_model,
    fashion_raw_partition,
    flatten_params,
    load_flat_params,
    resolve_task,
)
from federation.updates import NoisedUpdate, PlainUpdate

__all__ = ["NO_HOOKS", "ClientHooks", "LocalData", "check_global", "handle_evaluate", "handle_train",
           "handle_verify", "local_data", "raw_partition"]

log = logging.getLogger("fedguard.client")


@dataclass(frozen=True)
class LocalData:
    """One client's share as arrays: train and test inputs and targets (see :class:`Split`)."""

    partition_id: int
    train_x: npt.NDArray[np.float32]
    train_y: npt.NDArray[Any]
    test_x: npt.NDArray[np.float32]
    test_y: npt.NDArray[Any]


@dataclass(frozen=True)
class ClientHooks:
    """Optional behaviour composed into a trainer (simulated attacks use this).

    ``poison_data(x_uint8, y, rng) -> (x, y)`` runs before training;
    ``poison_update(update, info) -> update`` runs after training, before encryption;
    ``extra_eval(model, cfg, partition_id, num_partitions) -> {"eval-x-NAME": value}`` adds
    evaluation metrics (weighted by test examples at the server), e.g. a backdoor's success rate.
    ``poison_upload(arrays, info) -> arrays`` replaces the records that carry the (encrypted)
    update, after encryption: attacks on the ciphertext itself.
    """

    poison_data: Callable[..., tuple[Any, Any]] | None = None
    poison_update: Callable[[npt.NDArray[np.float32], dict[str, Any]], npt.NDArray[np.float32]] | None = None
    extra_eval: Callable[[torch.nn.Module, FedConfig, int, int], dict[str, float]] | None = None
    poison_upload: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None


NO_HOOKS = ClientHooks()


def _request(cfg: FedConfig, partition_id: int, num_partitions: int,
             node_config: Mapping[str, Any] | None = None) -> DataRequest:
    if not 0 <= partition_id < num_partitions:
        raise FedguardError(f"partition-id {partition_id} not in 0..{num_partitions - 1}")
    return DataRequest(partition_id, num_partitions, cfg.data.partition, cfg.run.seed,
                       cfg.data.data_dir, dict(node_config or {}))


def raw_partition(
    cfg: FedConfig, partition_id: int, num_partitions: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """This client's uint8 Fashion-MNIST train images and labels, then its test slice.

    Only for the bundled image tasks (simulated data-poisoning attacks edit raw pixels).
    """
    if resolve_task(cfg.data.task) not in (FASHION_MNIST, FASHION_MNIST_TANH):
        raise ConfigError("attack", f"data-poisoning attacks need a Fashion-MNIST task, not "
                                    f"{cfg.data.task!r}")
    return fashion_raw_partition(_request(cfg, partition_id, num_partitions))


def local_data(
    cfg: FedConfig, partition_id: int, num_partitions: int, poison_data: Callable[..., Any] | None = None,
    node_config: Mapping[str, Any] | None = None,
) -> LocalData:
    """This client's share, from the task's ``load_data`` (poisoned by ``poison_data``).

    ``poison_data`` (simulated attacks) works on raw Fashion-MNIST pixels, so it needs one of
    the bundled Fashion-MNIST tasks.
    """
    if poison_data is not None:
        x, y, tx, ty = raw_partition(cfg, partition_id, num_partitions)
        x, y = poison_data(x, y, np.random.default_rng([cfg.run.seed, partition_id]))
        return LocalData(partition_id, normalize(x), np.asarray(y, np.int64), normalize(tx),
                         np.asarray(ty, np.int64))
    task = resolve_task(cfg.data.task)
    data = task.load_data(_request(cfg, partition_id, num_partitions, node_config))
    if not isinstance(data, ClientData) or not isinstance(data.train, Split) or not isinstance(
            data.test, Split):
        raise ConfigError("task", f"task {task.name!r}: load_data must return a ClientData")
    if len(data.train) == 0 or len(data.test) == 0:
        raise ConfigError("task", f"task {task.name!r}: partition {partition_id} has no train or "
                                  "no test examples")
    return LocalData(partition_id, data.train.x, data.train.y, data.test.x, data.test.y)


def _config(content: RecordDict) -> tuple[FedConfig, int]:
    rec = content.config_records.get(P.CFG)
    if rec is None:
        raise FedguardError("message has no config record")
    flat = {k: v for k, v in rec.items() if k in FLAT_KEYS}
    round_ = rec.get(P.CFG_ROUND)
    if not isinstance(round_, int) or round_ < 1:
        raise FedguardError("message has no valid round number")
    return from_flat(flat), round_


def _local_config(cfg: FedConfig, node_config: Mapping[str, Any]) -> FedConfig:
    """A node's own ``data-dir`` (node config) wins over the run's: data is local."""
    local = node_config.get("data-dir")
    if isinstance(local, str) and local:
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=local))
    return cfg


def _partition_of(node_config: Mapping[str, Any], cfg: FedConfig) -> tuple[int, int]:
    pid = node_config.get(P.NODE_PARTITION_ID)
    num = node_config.get(P.NODE_NUM_PARTITIONS, cfg.run.clients)
    if not isinstance(pid, int) or not isinstance(num, int):
        raise FedguardError("node config needs integer 'partition-id' and 'num-partitions'")
    return pid, num


@dataclass(frozen=True)
class _Local:
    """What every handler starts from: the node's effective config, its share and the model."""

    cfg: FedConfig
    pid: int
    num: int
    data: LocalData
    model: torch.nn.Module


def _prepare(cfg: FedConfig, node_config: Mapping[str, Any],
             poison_data: Callable[..., Any] | None = None) -> _Local:
    cfg = _local_config(cfg, node_config)
    pid, num = _partition_of(node_config, cfg)
    data = local_data(cfg, pid, num, poison_data, node_config)
    return _Local(cfg, pid, num, data, build_model(cfg.data.task, cfg.run.seed))


def _set_threads() -> None:
    # One torch thread per simulated client: oversubscribed CPUs slow training ~10x.
    torch.set_num_threads(int(os.environ.get("FEDGUARD_TORCH_THREADS", "1")))


def _ledger(state: RecordDict, node_config: Mapping[str, Any]) -> tuple[PrivacyLedger, LedgerFile | None]:
    path = node_config.get("ledger-file") or ""
    file = LedgerFile(Path(str(path))) if path else None
    return load_ledger(state, LEDGER_KEY, file), file


def _reply(
    status: str, reason: str, metrics: dict[str, float], arrays: dict[str, Any] | None = None
) -> RecordDict:
    rd = RecordDict({
        P.STATUS: ConfigRecord({P.STATUS_CODE: status, P.STATUS_REASON: reason}),
        P.METRICS: MetricRecord({k: float(v) for k, v in metrics.items()}),
    })
    for k, v in (arrays or {}).items():
        rd[k] = v
    return rd


def _evaluate_global(model: torch.nn.Module, data: LocalData, cfg: FedConfig) -> dict[str, float]:
    t = time.perf_counter()
    ev = evaluate(model, data.test_x, data.test_y, task=resolve_task(cfg.data.task))
    return {P.EVAL_LOSS: ev.loss, P.EVAL_PRIMARY: ev.primary, P.EVAL_EXAMPLES: ev.num_examples,
            **{P.EVAL_METRIC_PREFIX + k: v for k, v in ev.metrics.items()},
            P.M_EVAL_SECONDS: time.perf_counter() - t}


def handle_train(
    content: RecordDict,
    state: RecordDict,
    node_config: Mapping[str, Any],
    run_id: int = 0,
    hooks: ClientHooks = NO_HOOKS,
) -> RecordDict:
    """Evaluate the received global model, train on local data, reply with the update.

    Order matters for privacy: the ledger records the round's privacy event (in the node's
    state and, when configured, fsynced to its ledger file) *before* the update is released.
    A client whose next round would exceed its epsilon budget does not train.
    """
    _set_threads()
    cfg, round_ = _config(content)
    claim_round(state, run_id, round_)  # a replayed round: never train (and spend epsilon) twice
    scheme = trainer_scheme(cfg, state, node_config, run_id)
    scheme.install_keys(content)  # before anything is read or spent: refuses with a reason
    local = _prepare(cfg, node_config, hooks.poison_data)
    cfg, pid, num, data, model = local.cfg, local.pid, local.num, local.data, local.model
    timings: dict[str, float] = {}
    global_round = _global_round(content)
    try:
        global_vec = scheme.read_global(content, flatten_params(model), timings)
        evaluated = check_global(global_vec, model, data, cfg, state, global_round, run_id=run_id)
    except GlobalRefused as exc:
        return _refused(exc, global_round, {P.M_PARTITION_ID: pid, **timings})
    metrics: dict[str, float] = {P.M_PARTITION_ID: pid, **evaluated, **timings}
    mark_trained(state, run_id, round_)
    if hooks.extra_eval is not None:
        metrics.update(hooks.extra_eval(model, cfg, pid, num))
    scheme.note_round(round_, cfg.run.clients)

    ledger, ledger_file = _ledger(state, node_config)
    try:
        plan, q, delta = dp_plan(cfg, len(data.train_y), state, ledger, run_id, round_)
    except PrivacyBudgetExceeded as exc:
        return _reply(P.STATUS_BUDGET_EXHAUSTED, str(exc), metrics)
    event: PrivacyEvent | None = None
    budget: PrivacyBudget | None = None
    if plan is not None:
        steps = cfg.train.local_epochs * poisson_schedule(len(data.train_y), cfg.train.batch_size)[1]
        event = PrivacyEvent(plan.noise_multiplier, q, steps, f"run{run_id}/round{round_}")
        metrics[P.M_EPSILON] = (epsilon(ledger.events, delta, cfg.dp.accountant.value)
                                if ledger.events else 0.0)
        if cfg.dp.epsilon > 0:
            budget = PrivacyBudget(cfg.dp.epsilon, delta, cfg.dp.accountant)
            try:  # refuse early, before spending seconds on training; re-checked under the lock
                budget.check(ledger, event)
            except PrivacyBudgetExceeded as exc:
                return _reply(P.STATUS_BUDGET_EXHAUSTED, str(exc), metrics)

    t = time.perf_counter()
    result = train_local(
        model, data.train_x, data.train_y, epochs=cfg.train.local_epochs,
        batch_size=cfg.train.batch_size, lr=cfg.train.lr, momentum=cfg.train.momentum,
        seed=(cfg.run.seed * 1_000_003 + pid * 10_007 + round_) % 2**31, dp=plan,
        task=resolve_task(cfg.data.task),
    )
    metrics[P.M_TRAIN_SECONDS] = time.perf_counter() - t
    update = (flatten_params(model) - global_vec).astype(np.float32)
    if hooks.poison_update is not None:
        update = hooks.poison_update(update, {"global": global_vec, "round": round_, "cfg": cfg,
                                              P.M_PARTITION_ID: pid, "data": data})
    if not np.all(np.isfinite(update)):
        return _reply(P.STATUS_ERROR, "training produced non-finite parameters", metrics)

    if event is not None and plan is not None:
        # Record what training actually did (it follows the same Poisson schedule). The whole
        # history is synced, and the budget re-checked against the file under its lock: another
        # run on this node may have spent since the early check.
        event = PrivacyEvent(plan.noise_multiplier, result.sample_rate, result.steps, event.label)
        try:
            ledger = record_event(state, LEDGER_KEY, event, ledger_file, budget=budget)
        except PrivacyBudgetExceeded as exc:
            return _reply(P.STATUS_BUDGET_EXHAUSTED, str(exc), metrics)
        metrics[P.M_EPSILON] = epsilon(ledger.events, delta, cfg.dp.accountant.value)
        metrics[P.M_NOISE_MULTIPLIER] = plan.noise_multiplier
    metrics.update({P.NUM_EXAMPLES: result.num_examples, P.M_STEPS: result.steps})
    if np.isfinite(result.mean_loss):  # NaN when every Poisson batch of a tiny client was empty
        metrics[P.M_TRAIN_LOSS] = result.mean_loss
    # what leaves: DP-SGD's output when the plan noised it (the ledger recorded it above)
    released = NoisedUpdate(PlainUpdate(update)) if plan is not None else PlainUpdate(update)
    arrays: dict[str, Any] = scheme.encode_update(released, metrics)
    if hooks.poison_upload is not None:
        arrays = hooks.poison_upload(arrays, {"round": round_, "cfg": cfg, P.M_PARTITION_ID: pid,
                                              "state": state, "global": global_vec})
    return _with_vote(_reply(P.STATUS_OK, "", metrics, arrays), global_round, True, "")


def handle_evaluate(
    content: RecordDict, state: RecordDict, node_config: Mapping[str, Any], run_id: int = 0,
    hooks: ClientHooks = NO_HOOKS,
) -> RecordDict:
    """Evaluate the received global model on the local test split (no training)."""
    _set_threads()
    cfg, _round = _config(content)
    scheme = trainer_scheme(cfg, state, node_config, run_id)
    scheme.install_keys(content)
    local = _prepare(cfg, node_config)
    cfg, pid, num, data, model = local.cfg, local.pid, local.num, local.data, local.model
    timings: dict[str, float] = {}
    global_round = _global_round(content)
    try:
        vec = scheme.read_global(content, flatten_params(model), timings)
        evaluated = check_global(vec, model, data, cfg, state, global_round, run_id=run_id)
    except GlobalRefused as exc:
        return _refused(exc, global_round, {P.M_PARTITION_ID: pid, **timings})
    metrics: dict[str, float] = {P.M_PARTITION_ID: pid, **evaluated, **timings}
    if hooks.extra_eval is not None:
        metrics.update(hooks.extra_eval(model, cfg, pid, num))
    ledger, _file = _ledger(state, node_config)
    if cfg.dp.enabled and ledger.events:
        delta = cfg.dp.delta or default_delta(len(data.train_y))
        metrics[P.M_EPSILON] = epsilon(ledger.events, delta, cfg.dp.accountant.value)
    return _with_vote(_reply(P.STATUS_OK, "", metrics), global_round, True, "")


# -- verification of the globals a trainer receives -----------------------------------------------
# The crypto and metadata checks of an encrypted global live in clients.encrypted (they run
# before decryption); what follows checks the decrypted model itself, on the evaluation that
# the trainer runs anyway, so a clean round pays no extra phase and no extra pass over data.

_STATE_VERIFY = "fg-verify"  # ConfigRecord {"rounds": [...], "losses": [...]}: accepted globals
_KEPT_LOSSES = 8


def _global_round(content: RecordDict) -> int:
    rec = content.config_records.get(P.CFG)
    value = rec.get(P.GLOBAL_ROUND, 0) if rec is not None else 0
    return value if type(value) is int else -1


def _kept_losses(state: RecordDict, run_id: int) -> dict[int, float]:
    """Loss by global-round of the globals this trainer accepted in this run (its own state)."""
    rec = state.config_records.get(_STATE_VERIFY)
    if rec is None or rec.get("run") != run_id:
        return {}
    rounds, losses = rec.get("rounds", []), rec.get("losses", [])
    if not isinstance(rounds, list) or not isinstance(losses, list):
        return {}
    return {int(r): float(v) for r, v in zip(rounds, losses, strict=True)
            if isinstance(r, int) and isinstance(v, float)}


def _reference_loss(state: RecordDict, global_round: int, run_id: int) -> float | None:
    """The loss of the newest accepted global older than ``global_round`` (None: none kept)."""
    kept = _kept_losses(state, run_id)
    older = [r for r in kept if r < global_round]
    return kept[max(older)] if older else None


def check_global(vec: npt.NDArray[np.float32], model: torch.nn.Module, data: LocalData,
                 cfg: FedConfig, state: RecordDict, global_round: int,
                 *, run_id: int = 0, remember: bool = True,
                 loss_ratio: float | None = None) -> dict[str, float]:
    """Check a received global model before it is used; return its evaluation metrics.

    The model must be finite with ``|value| <= verify-value-bound``, and its loss on the local
    evaluation split (in nats) at most ``verify-max-loss-ratio`` times the loss of the newest
    global this trainer accepted before (rounds before ``global_round``); ``loss_ratio``
    replaces that bound (attribution candidates use ``verify-group-loss-ratio``). An accepted
    global's loss is remembered (``remember``) as the reference for the next one.

    Raises
    ------
    GlobalRefused
        ``out-of-range`` or ``loss-regression``.
    """
    bound = cfg.recover.value_bound
    if not np.all(np.isfinite(vec)) or float(np.max(np.abs(vec))) > bound:
        raise GlobalRefused("out-of-range", f"not finite, or a value beyond {bound:g}")
    load_flat_params(model, vec)
    metrics = _evaluate_global(model, data, cfg)
    loss, ref = metrics[P.EVAL_LOSS], _reference_loss(state, global_round, run_id)
    if not np.isfinite(loss):
        raise GlobalRefused("loss-regression", "the loss is not finite")
    ratio = cfg.recover.max_loss_ratio if loss_ratio is None else loss_ratio
    if ref is not None and loss > ratio * ref:
        raise GlobalRefused("loss-regression", f"loss {loss:.4f} > {ratio:g} "
                            f"x {ref:.4f} of the previous global")
    if remember:
        kept = {**_kept_losses(state, run_id), global_round: float(loss)}
        newest = sorted(kept)[-_KEPT_LOSSES:]
        state[_STATE_VERIFY] = ConfigRecord({"rounds": newest, "losses": [kept[r] for r in newest],
                                             "run": run_id})
    return metrics


def _with_vote(rd: RecordDict, global_round: int, accept: bool | list[bool],
               reason: str | list[str]) -> RecordDict:
    rd[P.VOTE] = ConfigRecord({P.VOTE_ROUND: global_round, P.VOTE_ACCEPT: accept,
                               P.VOTE_REASON: reason})
    return rd


def _refused(exc: GlobalRefused, global_round: int, metrics: dict[str, float]) -> RecordDict:
    log.warning("refusing the global of round %s: %s", global_round, exc)
    return _with_vote(_reply(P.STATUS_REFUSED_GLOBAL, str(exc)[:500], metrics), global_round,
                      False, str(exc)[:500])


def handle_verify(content: RecordDict, state: RecordDict, node_config: Mapping[str, Any],
                  run_id: int = 0) -> RecordDict:
    """Attribution: check each candidate global of a refused round; vote on each.

    Each candidate is the previous global plus one disjoint group of the refused round's
    uploads (the run's :class:`~clients.schemes.TrainerScheme` reads them; under CKKS
    :func:`clients.encrypted.decrypt_candidates` enforces the group rules);
    each gets the checks of :func:`check_global` against the global before the refused round.
    """
    _set_threads()
    cfg, _round = _config(content)
    scheme = trainer_scheme(cfg, state, node_config, run_id)
    scheme.install_keys(content)
    local = _prepare(cfg, node_config)
    cfg, pid, data, model = local.cfg, local.pid, local.data, local.model
    initial = flatten_params(model)
    global_round = _global_round(content)
    try:
        candidates = scheme.read_candidates(content, initial)
    except GlobalRefused as exc:
        return _refused(exc, global_round, {P.M_PARTITION_ID: pid})
    accept, reasons = [], []
    for cand in candidates:
        try:
            if isinstance(cand, GlobalRefused):
                raise cand
            check_global(cand, model, data, cfg, state, global_round, run_id=run_id,
                         remember=False, loss_ratio=cfg.recover.group_loss_ratio)
            accept.append(True)
            reasons.append("")
        except GlobalRefused as exc:
            accept.append(False)
            reasons.append(str(exc)[:200])
    return _with_vote(_reply(P.STATUS_OK, "", {P.M_PARTITION_ID: pid}), global_round, accept, reasons)
