"""Flower client mods: fedguard's protections for a partner's own ClientApp.

Two lines turn a quickstart-style ClientApp into a fedguard trainer::

    from clients.mods import enable_fedguard, fedguard_mod

    app = ClientApp(mods=[fedguard_mod])   # decrypt / encrypt ``arrays``, the privacy ledger
    enable_fedguard(app)                   # the key-setup and screening query handlers

:func:`fedguard_mod` has Flower's mod signature ``(message, context, call_next) -> Message``.
On a ``train`` or ``evaluate`` message sent by :class:`server.strategy.FedguardStrategy` it

1. keeps the public initial model (the standard ``arrays`` record of the node's first
   message) in node state; then, through the run's :class:`~clients.schemes.TrainerScheme`,
   installs this trainer's CKKS secret key (an explicit first step: refused with a reason
   when the node has none and the message brings none) and decrypts the encrypted global
   model (``G = G0 + S / K``);
2. hands the partner's function the usual ``arrays`` (the plaintext global model, same names
   and shapes as their initial model) and their ``config`` record — plus fedguard's config
   record, which :func:`clients.private.dp_train` reads;
3. for ``train``: takes the returned ``arrays`` and ``metrics`` (``num-examples``), computes
   the update (returned model minus received model), checks it is finite, encrypts it (CKKS)
   and replies in fedguard's format with the ledger's ε added to the metrics. A
   :class:`~federation.errors.PrivacyBudgetExceeded` from ``dp_train`` becomes a
   ``budget-exhausted`` reply; any other failure an ``error`` reply with a short reason
   (never key material), so one bad round costs one reply.

Messages without fedguard's config record pass through untouched, so the mod is harmless
under a stock Flower strategy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.private import claim_round, config_of, mark_trained, spent_epsilon
from clients.schemes import TrainerScheme, trainer_scheme
from federation import protocol as P
from federation.arrays import ArrayLayout
from federation.errors import FedguardError, GlobalRefused, PrivacyBudgetExceeded, RejectedUpdate
from federation.updates import PlainUpdate

__all__ = ["enable_fedguard", "fedguard_mod"]

log = logging.getLogger("fedguard.client")

_STATE_INITIAL = "fg-initial-arrays"  # ArrayRecord: the public initial model (its layout too)

CallNext = Callable[[Message, Context], Message]


def _reply(msg: Message, code: str, reason: str, metrics: dict[str, float],
           arrays: dict[str, Any] | None = None) -> Message:
    rd = RecordDict({
        P.STATUS: ConfigRecord({P.STATUS_CODE: code, P.STATUS_REASON: reason[:500]}),
        P.METRICS: MetricRecord({k: float(v) for k, v in metrics.items()}),
    })
    for k, v in (arrays or {}).items():
        rd[k] = v
    return Message(rd, reply_to=msg)


def _initial(content: RecordDict, state: RecordDict) -> ArrayRecord:
    rec = content.array_records.get(P.ARRAYS)
    if rec is not None:  # the node's first message from this run carries the public G0
        state[_STATE_INITIAL] = rec
        return rec
    kept = state.array_records.get(_STATE_INITIAL)
    if kept is None:
        raise FedguardError("no initial model: the server must send it with the first message")
    return kept


def _global(msg: Message, context: Context, scheme: TrainerScheme,
            timings: dict[str, float]) -> tuple[ArrayLayout, npt.NDArray[np.float32]]:
    initial_rec = _initial(msg.content, context.state)
    layout = ArrayLayout.of(initial_rec)
    initial = layout.flatten(initial_rec)
    content = msg.content
    # the wrapped secret key comes with this node's first message under CKKS
    scheme.install_keys(content)
    if P.GLOBAL_CIPHER in content.array_records or P.GLOBAL_PLAIN in content.array_records:
        return layout, scheme.read_global(content, initial, timings)
    global_round = content.config_records[P.CFG].get(P.GLOBAL_ROUND, 0)
    if global_round != 0:  # a server that leaves the global out must not get G0 trained again
        raise GlobalRefused("metadata", f"no global model for global round {global_round!r}")
    return layout, initial  # before any aggregate: the initial model kept from the first message


def _for_user(msg: Message, layout: ArrayLayout, vec: np.ndarray) -> Message:
    rd = RecordDict({P.ARRAYS: layout.unflatten(vec)})
    user_cfg = msg.content.config_records.get(P.CONFIG)
    rd[P.CONFIG] = user_cfg if user_cfg is not None else ConfigRecord({})
    rd[P.CFG] = msg.content.config_records[P.CFG]  # read by clients.private.dp_train
    msg.content = rd  # same metadata: the partner's reply still answers the server's message
    return msg


def _train(msg: Message, context: Context, call_next: CallNext) -> Message:
    cfg, round_ = config_of(msg.content)
    claim_round(context.state, context.run_id, round_)  # as the fedguard ClientApp: once per round
    scheme = trainer_scheme(cfg, context.state, context.node_config, context.run_id)
    timings: dict[str, float] = {}
    layout, global_vec = _global(msg, context, scheme, timings)
    mark_trained(context.state, context.run_id, round_)
    scheme.note_round(round_, cfg.run.clients)
    t = time.perf_counter()
    out = call_next(_for_user(msg, layout, global_vec), context)
    train_seconds = time.perf_counter() - t
    if out.has_error():
        return _reply(msg, P.STATUS_ERROR, "the partner's train function failed", {})
    content = out.content
    if P.ARRAYS not in content.array_records:
        return _reply(msg, P.STATUS_ERROR, "the train function returned no 'arrays' record", {})
    metrics: dict[str, float] = {}
    for rec in content.metric_records.values():
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[k] = float(v)
    if P.NUM_EXAMPLES not in metrics:
        return _reply(msg, P.STATUS_ERROR, "the train function's metrics have no 'num-examples'",
                      {})
    new_vec = layout.flatten(content.array_records[P.ARRAYS])  # RejectedUpdate if it changed shape
    update = (new_vec - global_vec).astype(np.float32)
    if not np.all(np.isfinite(update)):
        return _reply(msg, P.STATUS_ERROR, "training produced non-finite parameters", metrics)
    metrics.update(timings)
    metrics[P.M_TRAIN_SECONDS] = train_seconds
    if cfg.dp.enabled:
        metrics[P.M_EPSILON] = spent_epsilon(context, cfg, int(metrics[P.NUM_EXAMPLES]))
    arrays = scheme.encode_update(PlainUpdate(update), metrics)
    return _reply(msg, P.STATUS_OK, "", metrics, arrays)


def _evaluate(msg: Message, context: Context, call_next: CallNext) -> Message:
    cfg, _round = config_of(msg.content)
    scheme = trainer_scheme(cfg, context.state, context.node_config, context.run_id)
    layout, vec = _global(msg, context, scheme, {})
    return call_next(_for_user(msg, layout, vec), context)


def fedguard_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower client mod: fedguard's transport, encryption and ledger around a partner's handler.

    See the module docstring. Attach it to the whole app (``ClientApp(mods=[fedguard_mod])``)
    or to the ``train`` and ``evaluate`` handlers.
    """
    if P.CFG not in msg.content.config_records:
        return call_next(msg, context)  # not from fedguard's strategy: leave it alone
    kind = msg.metadata.message_type.split(".")[0]
    try:
        if kind == "train":
            return _train(msg, context, call_next)
        if kind == "evaluate":
            return _evaluate(msg, context, call_next)
        return call_next(msg, context)
    except PrivacyBudgetExceeded as exc:
        return _reply(msg, P.STATUS_BUDGET_EXHAUSTED, str(exc), {})
    except RejectedUpdate as exc:
        return _reply(msg, P.STATUS_ERROR, f"{exc.reason}: {exc.detail}", {})
    except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
        reason = str(exc) if isinstance(exc, FedguardError) else type(exc).__name__
        log.warning("fedguard_mod: could not handle %s: %s", msg.metadata.message_type, reason)
        return _reply(msg, P.STATUS_ERROR, reason, {})


def enable_fedguard(app: ClientApp) -> ClientApp:
    """Register fedguard's query handlers on ``app``: in-band key setup and screening.

    The server's strategy sends ``query.keys`` / ``query.wrap`` (once, under CKKS) and
    ``query.screen`` (each round with an encrypted filter) to trainers; a ClientApp without
    them is reported as "not fedguard-capable". Returns ``app``.
    """
    from clients.app import register_key_holder_queries

    return register_key_holder_queries(app)
