"""DP-SGD for a partner's own model and data loader, with the privacy ledger kept for them.

:func:`dp_train` is what a partner's ``@app.train()`` calls instead of its own training loop:
it reads fedguard's DP settings from the message (put there by
:class:`server.strategy.FedguardStrategy`), calibrates the noise once for the whole planned run
(:func:`dp_plan`), refuses to train past the client's budget, trains with Poisson sampling,
per-example clipping and Gaussian noise (:func:`clients.training.train_local`), and records the
round's privacy event in the node's ledger (Flower node state, plus the node's ``ledger-file``
when configured) *before* returning — so the update that leaves afterwards is covered.

The fedguard ClientApp (:mod:`clients.handlers`) uses the same :func:`dp_plan` and ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from torch import nn

from clients.ledger import LedgerFile, load_ledger, record_event
from clients.training import DPPlan, TrainResult, train_local
from federation import protocol as P
from federation.config import FLAT_KEYS, FedConfig, from_flat
from federation.errors import ConfigError, FedguardError
from federation.privacy import (
    PrivacyBudget,
    PrivacyEvent,
    PrivacyLedger,
    calibrate_for_plan,
    default_delta,
    epsilon,
    poisson_schedule,
)
from federation.tasks import ClientData, DataRequest, Task, cross_entropy_loss

__all__ = ["LEDGER_KEY", "claim_round", "config_of", "dp_plan", "dp_train", "mark_trained",
           "spent_epsilon"]

LEDGER_KEY = "privacy-ledger"  # node state key of the ledger
_STATE_TRAINED = "fg-trained"  # ConfigRecord {"round", "run"}: the last round this trainer trained in
LEDGER_FILE_KEY = "ledger-file"  # node config key of the node-local ledger file
_DP_CACHE = "fg-dp-calibration"


def config_of(content: RecordDict) -> tuple[FedConfig, int]:
    """The fedguard config and round number a message carries (``ConfigError`` if none)."""
    rec = content.config_records.get(P.CFG)
    if rec is None:
        raise ConfigError(
            "dp", "the message carries no fedguard config: run the server with "
            "server.strategy.FedguardStrategy, or pass config= to dp_train")
    round_ = rec.get(P.CFG_ROUND)
    if not isinstance(round_, int) or round_ < 1:
        raise ConfigError("dp", "the fedguard config carries no valid round number")
    return from_flat({k: v for k, v in rec.items() if k in FLAT_KEYS}), round_


def dp_plan(
    cfg: FedConfig, n: int, state: RecordDict, ledger: PrivacyLedger, run_id: int, round_: int
) -> tuple[DPPlan | None, float, float]:
    """Noise multiplier (calibrated once per run, for its remaining rounds), sample rate, delta.

    ``(None, 0, 0)`` when DP is off. The calibration targets ``dp-epsilon`` over the rounds
    left (``rounds - round + 1``) x ``local-epochs`` epochs of ``ceil(n / batch-size)``
    Poisson steps at rate ``batch-size / n``, paying for the recorded ``ledger`` history; it is
    cached in node state for the rest of the run. Raises :class:`PrivacyBudgetExceeded` if
    the history leaves no room for the rest of the run.
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


def _ledger_file(node_config: Mapping[str, Any]) -> LedgerFile | None:
    path = node_config.get(LEDGER_FILE_KEY) or ""
    return LedgerFile(Path(str(path))) if path else None


def spent_epsilon(context: Context, cfg: FedConfig, n: int) -> float:
    """ε this node has spent so far (whole ledger history) at the run's δ for ``n`` records."""
    ledger = load_ledger(context.state, LEDGER_KEY, _ledger_file(context.node_config))
    if not ledger.events:
        return 0.0
    return epsilon(ledger.events, cfg.dp.delta or default_delta(n), cfg.dp.accountant.value)


def _loader_arrays(loader: Any) -> tuple[np.ndarray, np.ndarray, int]:
    batch_size = getattr(loader, "batch_size", None)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch-size", "dp_train needs a DataLoader with an integer batch_size "
                                        "(the expected Poisson batch size)")
    dataset = loader.dataset
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        x, y = tensors[0], tensors[1]
    else:  # any map-style dataset of (input, target) pairs
        pairs = [dataset[i] for i in range(len(dataset))]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
    return np.asarray(x.detach().cpu().numpy()), np.asarray(y.detach().cpu().numpy()), batch_size


def _no_data(_request: DataRequest) -> ClientData:
    raise ConfigError("task", "dp_train trains on the loader it is given; it loads no data")


def dp_train(
    model: nn.Module,
    loader: Any,
    context: Context,
    message: Message | None = None,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    config: FedConfig | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``loader``'s data under DP-SGD and record the ledger event.

    Parameters
    ----------
    model:
        The partner's model (no BatchNorm: use ``clients.training.make_dp_compatible``).
    loader:
        A ``torch.utils.data.DataLoader`` of ``(input, target)`` pairs; only its dataset and
        ``batch_size`` are used (DP-SGD draws its own Poisson batches of expected size
        ``batch_size``, which is what the accountant analyses).
    context:
        The Flower context: the ledger lives in ``context.state`` (and the node config's
        ``ledger-file``).
    message:
        The train message; its fedguard config supplies the DP settings and the round.
    epochs, lr, momentum:
        Override the config's ``local-epochs``, ``lr`` and ``momentum``.
    loss:
        Per-example loss ``(outputs, targets) -> (B,)``; default cross-entropy.
    config:
        A :class:`FedConfig` instead of the message's (then the round is taken as the
        ledger's next).

    Returns
    -------
    TrainResult
        With DP off in the config, plain SGD and no ledger event.

    Raises
    ------
    PrivacyBudgetExceeded
        Training this round would exceed ``dp-epsilon``; nothing was trained.
    """
    if config is None:
        if message is None:
            raise ConfigError("dp", "dp_train needs the train message or config=")
        cfg, round_ = config_of(message.content)
    else:
        cfg, round_ = config, 0
    x, y, batch_size = _loader_arrays(loader)
    n = int(x.shape[0])
    cfg_batch = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, local_epochs=epochs or cfg.train.local_epochs, batch_size=batch_size,
        lr=lr if lr is not None else cfg.train.lr,
        momentum=momentum if momentum is not None else cfg.train.momentum))
    task = Task("partner", lambda: model, _no_data, loss=loss or cross_entropy_loss)
    file = _ledger_file(context.node_config)
    ledger = load_ledger(context.state, LEDGER_KEY, file)
    round_ = round_ or len(ledger.events) + 1
    plan, q, delta = dp_plan(cfg_batch, n, context.state, ledger, context.run_id, round_)
    event: PrivacyEvent | None = None
    budget: PrivacyBudget | None = None
    if plan is not None:
        steps = cfg_batch.train.local_epochs * poisson_schedule(n, batch_size)[1]
        event = PrivacyEvent(plan.noise_multiplier, q, steps, f"run{context.run_id}/round{round_}")
        if cfg.dp.epsilon > 0:
            budget = PrivacyBudget(cfg.dp.epsilon, delta, cfg.dp.accountant)
            budget.check(ledger, event)  # refuse before training; re-checked under the lock
    result = train_local(
        model, x, y, epochs=cfg_batch.train.local_epochs, batch_size=batch_size,
        lr=cfg_batch.train.lr, momentum=cfg_batch.train.momentum,
        seed=(cfg.run.seed * 1_000_003 + round_) % 2**31, dp=plan, task=task,
    )
    if event is not None and plan is not None:
        record_event(context.state, LEDGER_KEY,
                     PrivacyEvent(plan.noise_multiplier, result.sample_rate, result.steps,
                                  event.label), file, budget=budget)
    return result


def claim_round(state: RecordDict, run_id: int, round_: int) -> None:
    """Refuse a train message for a round at or before the last one this trainer trained in.

    The one rule both trainer paths (:mod:`clients.handlers`, :mod:`clients.mods`) apply
    first: a replayed round would spend epsilon twice and, under CKKS, upload the same update
    a second time under another screening commitment (another ``z``, more projections of it).

    Raises
    ------
    FedguardError
        ``round_`` is not after the last trained round of this run.
    """
    rec = state.config_records.get(_STATE_TRAINED)
    last = rec.get("round", 0) if rec is not None and rec.get("run") == run_id else 0
    if round_ <= (last if isinstance(last, int) else 0):
        raise FedguardError(f"round {round_} is not after the last round this trainer trained in")


def mark_trained(state: RecordDict, run_id: int, round_: int) -> None:
    """Record ``round_`` as trained (after its global was accepted, before training)."""
    state[_STATE_TRAINED] = ConfigRecord({"round": round_, "run": run_id})
