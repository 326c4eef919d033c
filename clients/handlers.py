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

from clients import secure
from clients.ledger import LedgerFile, load_ledger, record_event
from clients.training import DPPlan, evaluate, train_local
from federation import protocol as P
from federation.config import FLAT_KEYS, FedConfig, SecureAggregation, from_flat
from federation.data import normalize
from federation.errors import ConfigError, FedguardError, PrivacyBudgetExceeded
from federation.privacy import (
    PrivacyBudget,
    PrivacyEvent,
    PrivacyLedger,
    calibrate_for_plan,
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

__all__ = ["NO_HOOKS", "ClientHooks", "LocalData", "handle_evaluate", "handle_train", "local_data",
           "raw_partition"]

log = logging.getLogger("fedguard.client")
LEDGER_KEY = "privacy-ledger"
_DP_CACHE = "fg-dp-calibration"


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
    """

    poison_data: Callable[..., tuple[Any, Any]] | None = None
    poison_update: Callable[[npt.NDArray[np.float32], dict[str, Any]], npt.NDArray[np.float32]] | None = None
    extra_eval: Callable[[torch.nn.Module, FedConfig, int, int], dict[str, float]] | None = None


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
    round_ = rec.get("round")
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
    pid = node_config.get("partition-id")
    num = node_config.get("num-partitions", cfg.run.clients)
    if not isinstance(pid, int) or not isinstance(num, int):
        raise FedguardError("node config needs integer 'partition-id' and 'num-partitions'")
    return pid, num


def _set_threads() -> None:
    # One torch thread per simulated client: oversubscribed CPUs slow training ~10x.
    torch.set_num_threads(int(os.environ.get("FEDGUARD_TORCH_THREADS", "1")))


def _ledger(state: RecordDict, node_config: Mapping[str, Any]) -> tuple[PrivacyLedger, LedgerFile | None]:
    path = node_config.get("ledger-file") or ""
    file = LedgerFile(Path(str(path))) if path else None
    return load_ledger(state, LEDGER_KEY, file), file


def _dp_plan(
    cfg: FedConfig, n: int, state: RecordDict, ledger: PrivacyLedger, run_id: int, round_: int
) -> tuple[DPPlan | None, float, float]:
    """Noise multiplier (calibrated once per run, for its remaining rounds), sample rate, delta.

    Raises :class:`PrivacyBudgetExceeded` if the recorded history leaves no room for the rest
    of the run.
    """
    if not cfg.dp.enabled:
        return None, 0.0, 0.0
    q, per_epoch = poisson_schedule(n, cfg.train.batch_size)
    delta = cfg.dp.delta or default_delta(n)
    if cfg.dp.noise_multiplier > 0:
        sigma = cfg.dp.noise_multiplier
    else:
        # The first round this node trains in a run (or the first after a restart lost the node
        # state) plans the rounds left, paying for the whole recorded history: a node that
        # rejoins or resumes must not plan more ε than it has left.
        rounds_left = max(1, cfg.run.rounds - round_ + 1)
        steps = rounds_left * cfg.train.local_epochs * per_epoch
        # Calibration takes seconds; a deployment runs each message in a fresh process, so the
        # result is kept in the node's state for the rest of the run.
        key = (f"run{run_id}|{cfg.dp.epsilon!r}|{delta!r}|{q!r}|{cfg.run.rounds}|"
               f"{cfg.train.local_epochs}|{cfg.dp.accountant.value}")
        cache = state.config_records.get(_DP_CACHE)
        cached = cache.get(key) if cache is not None else None
        if isinstance(cached, float):
            sigma = cached
        else:
            budget = PrivacyBudget(cfg.dp.epsilon, delta, cfg.dp.accountant)
            sigma = calibrate_for_plan(budget, q, steps, ledger.events)
            state[_DP_CACHE] = ConfigRecord({key: sigma})
    return DPPlan(noise_multiplier=sigma, max_grad_norm=cfg.dp.max_grad_norm), q, delta


def _reply(
    status: str, reason: str, metrics: dict[str, float], arrays: dict[str, Any] | None = None
) -> RecordDict:
    rd = RecordDict({
        P.STATUS: ConfigRecord({"code": status, "reason": reason}),
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
            "eval-seconds": time.perf_counter() - t}


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
    cfg = _local_config(cfg, node_config)
    pid, num = _partition_of(node_config, cfg)
    data = local_data(cfg, pid, num, hooks.poison_data, node_config)
    model = build_model(cfg.data.task, cfg.run.seed)
    timings: dict[str, float] = {}
    global_vec = secure.read_global(content, state, node_config, run_id, flatten_params(model),
                                    timings)
    load_flat_params(model, global_vec)
    metrics: dict[str, float] = {"partition-id": pid, **_evaluate_global(model, data, cfg), **timings}
    if hooks.extra_eval is not None:
        metrics.update(hooks.extra_eval(model, cfg, pid, num))
    if cfg.secure.mode is SecureAggregation.CKKS:
        from clients.encrypted import note_round

        note_round(state, round_, cfg.run.clients)

    ledger, ledger_file = _ledger(state, node_config)
    try:
        plan, q, delta = _dp_plan(cfg, len(data.train_y), state, ledger, run_id, round_)
    except PrivacyBudgetExceeded as exc:
        return _reply(P.STATUS_BUDGET_EXHAUSTED, str(exc), metrics)
    event: PrivacyEvent | None = None
    budget: PrivacyBudget | None = None
    if plan is not None:
        steps = cfg.train.local_epochs * poisson_schedule(len(data.train_y), cfg.train.batch_size)[1]
        event = PrivacyEvent(plan.noise_multiplier, q, steps, f"run{run_id}/round{round_}")
        metrics["epsilon"] = epsilon(ledger.events, delta, cfg.dp.accountant.value) if ledger.events else 0.0
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
    metrics["train-seconds"] = time.perf_counter() - t
    update = (flatten_params(model) - global_vec).astype(np.float32)
    if hooks.poison_update is not None:
        update = hooks.poison_update(update, {"global": global_vec, "round": round_, "cfg": cfg,
                                              "partition-id": pid, "data": data})
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
        metrics["epsilon"] = epsilon(ledger.events, delta, cfg.dp.accountant.value)
        metrics["noise-multiplier"] = plan.noise_multiplier
    metrics.update({"num-examples": result.num_examples, "steps": result.steps})
    if np.isfinite(result.mean_loss):  # NaN when every Poisson batch of a tiny client was empty
        metrics["train-loss"] = result.mean_loss
    arrays = secure.encode_update(update, state, cfg, metrics)
    return _reply(P.STATUS_OK, "", metrics, arrays)


def handle_evaluate(
    content: RecordDict, state: RecordDict, node_config: Mapping[str, Any], run_id: int = 0,
    hooks: ClientHooks = NO_HOOKS,
) -> RecordDict:
    """Evaluate the received global model on the local test split (no training)."""
    _set_threads()
    cfg, _round = _config(content)
    cfg = _local_config(cfg, node_config)
    pid, num = _partition_of(node_config, cfg)
    data = local_data(cfg, pid, num, node_config=node_config)
    model = build_model(cfg.data.task, cfg.run.seed)
    timings: dict[str, float] = {}
    load_flat_params(model, secure.read_global(content, state, node_config, run_id,
                                               flatten_params(model), timings))
    metrics: dict[str, float] = {"partition-id": pid, **_evaluate_global(model, data, cfg), **timings}
    if hooks.extra_eval is not None:
        metrics.update(hooks.extra_eval(model, cfg, pid, num))
    ledger, _file = _ledger(state, node_config)
    if cfg.dp.enabled and ledger.events:
        delta = cfg.dp.delta or default_delta(len(data.train_y))
        metrics["epsilon"] = epsilon(ledger.events, delta, cfg.dp.accountant.value)
    return _reply(P.STATUS_OK, "", metrics)
