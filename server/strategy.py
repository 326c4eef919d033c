"""A Flower 1.42 Message-API strategy that adds fedguard's protections to the user's strategy.

::

    from server.strategy import FedguardStrategy

    strategy = FedguardStrategy(FedAvg(fraction_train=1.0),
                                {"secure-aggregation": "ckks", "defense": "norm,multikrum"})
    result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=3)

Who decides what:

* the **wrapped strategy** (any Message-API strategy with FedAvg's ``configure_*`` /
  ``aggregate_evaluate`` behaviour) samples the nodes of every train and evaluate round, builds
  their ``config`` record and aggregates the *evaluation* metrics;
* **fedguard** carries the model (``arrays`` of the public initial model to a node once; then
  the global model, encrypted under CKKS), validates every reply, filters updates (``defense``,
  on ciphertexts under CKKS, with a quorum of key holders), and aggregates the accepted updates
  as a sample-weighted mean — under encryption the server never sees an update or the model.
  It reuses the round logic of the fedguard ServerApp: :class:`server.encrypted.CkksScheme` /
  :class:`server.schemes.PlaintextScheme` and :func:`federation.robust.decide` (the round loop's rule).

Under CKKS the aggregated model stays encrypted: :meth:`aggregate_train` returns no arrays (the
``Result`` keeps the initial ones) and a central ``evaluate_fn`` is refused. Clients need
:func:`clients.mods.fedguard_mod` and :func:`clients.mods.enable_fedguard`; a node without them
is reported in one readable line. Every refused, rejected or filtered reply is logged with its
reason to ``audit.jsonl`` and ``metrics.jsonl`` when ``out-dir`` is set; none stops the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from federation import protocol as P
from federation.aggregation import capped_counts, integer_weights
from federation.arrays import ArrayLayout
from federation.config import FLAT_KEYS, FedConfig, SecureAggregation, from_flat, to_flat
from federation.errors import ConfigError, ProtocolError, RejectedUpdate
from federation.robust import Decision
from server.loop import RoundReport, RunResult, screen_round
from server.replies import NOT_FEDGUARD_CAPABLE, describe_error_reply
from server.schemes import PlaintextScheme, Scheme

__all__ = ["FedguardStrategy", "fedguard_config"]

log = logging.getLogger("fedguard.server")



def fedguard_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The fedguard keys (see ``federation.config.FLAT_KEYS``) of a Flower run config."""
    return {k: v for k, v in run_config.items() if k in FLAT_KEYS}


class FedguardStrategy(Strategy):
    """Wrap ``strategy`` with encrypted aggregation and (encrypted) filtering.

    Parameters
    ----------
    strategy:
        The user's strategy choice (e.g. ``FedAvg(...)``): node sampling, configs, evaluation
        metrics. Its own update aggregation is replaced by fedguard's weighted mean.
    config:
        fedguard settings as a :class:`FedConfig` or flat keys (``secure-aggregation``,
        ``defense``, ``dp-epsilon``, ``out-dir``, ...); validated here, bad values raise
        :class:`ConfigError` naming the key. ``num-server-rounds`` and ``num-clients`` are set
        by :meth:`start` (rounds, connected nodes).
    primary_metric:
        The evaluation metric reported as each round's ``accuracy`` column.
    progress:
        Called with one line per round (default: the logger).
    """

    def __init__(self, strategy: Strategy, config: FedConfig | Mapping[str, Any] | None = None,
                 *, primary_metric: str = "accuracy",
                 progress: Callable[[str], None] | None = None) -> None:
        self.strategy = strategy
        self.cfg = config if isinstance(config, FedConfig) else from_flat(dict(config or {}))
        self.primary_metric = primary_metric
        self.progress = progress
        self.scheme: Scheme[Any] | None = None  # PlainUpdate or EncryptedVector payloads
        self.layout: ArrayLayout | None = None
        self._initial: ArrayRecord | None = None
        self._has_initial: set[int] = set()
        self._sent: list[Message] = []
        self._writer: Any = None
        self._pending: RoundReport | None = None
        self._reports: list[RoundReport] = []
        self._t0 = 0.0
        self._grid: Grid | None = None

    # -- the run ------------------------------------------------------------------------------
    def summary(self) -> None:
        log.info("fedguard: secure-aggregation %s, defense %s, DP %s; wrapping %s",
                 self.cfg.secure.mode.value, ",".join(self.cfg.defense.defenses) or "none",
                 "on" if self.cfg.dp.enabled else "off", type(self.strategy).__name__)
        self.strategy.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Set up keys over the connected nodes, then run Flower's round loop with fedguard."""
        if evaluate_fn is not None and self.cfg.secure.mode is SecureAggregation.CKKS:
            raise ConfigError("secure-aggregation", "a central evaluate_fn cannot run under CKKS: "
                              "the server never holds the plaintext model")
        nodes = self._wait_for_nodes(grid, timeout)
        self.cfg = dataclasses.replace(self.cfg, run=dataclasses.replace(
            self.cfg.run, rounds=num_rounds, clients=len(nodes), round_timeout=timeout,
            min_clients=min(self.cfg.run.min_clients, len(nodes))))
        self.cfg = from_flat(to_flat(self.cfg))  # re-validate (quorum <= nodes, ...)
        self.layout = ArrayLayout.of(initial_arrays)
        self._initial = initial_arrays
        initial = self.layout.flatten(initial_arrays)
        if self.cfg.secure.mode is SecureAggregation.CKKS:
            from server.encrypted import CkksScheme

            self.scheme = CkksScheme(initial, self.cfg)
        else:
            self.scheme = PlaintextScheme(initial)
        if self.cfg.run.out_dir:
            from server.report import RunWriter

            out = Path(self.cfg.run.out_dir)
            if not out.is_absolute():
                raise ConfigError("out-dir", f"must be an absolute path, got {out}")
            self._writer = RunWriter(out, num_rounds, self.progress)
        self._grid = grid
        self.scheme.setup(grid, nodes, self.cfg)
        self._audit(self.scheme.drain_audit())
        self._t0 = time.monotonic()
        result = super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                               evaluate_config, evaluate_fn)
        self._flush()
        if self._writer is not None:
            self._writer.finish(RunResult(len(self._reports), False, "", self._reports),
                                {"secure_aggregation": self.cfg.secure.mode.value,
                                 "num_parameters": self.layout.size})
        return result

    def _wait_for_nodes(self, grid: Grid, timeout: float) -> list[int]:
        want = max(int(getattr(self.strategy, "min_available_nodes", 1)), 1)
        deadline = time.monotonic() + min(timeout, 120.0)
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= want or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not nodes:
            raise ProtocolError("no client nodes connected")
        return nodes

    # -- messages -----------------------------------------------------------------------------
    def _wrap(self, messages: Iterable[Message], server_round: int, cfg_round: int = 0
              ) -> list[Message]:
        assert self.scheme is not None and self._initial is not None
        flat = to_flat(self.cfg)
        out = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            rd = self.scheme.global_records(node, server_round)
            if self.scheme.global_round == 0:  # the initial model travels as `arrays` instead
                rd.array_records.pop(P.GLOBAL_PLAIN, None)
            if node not in self._has_initial:
                rd[P.ARRAYS] = self._initial
                self._has_initial.add(node)
            user_cfg = msg.content.config_records.get(P.CONFIG)
            rd[P.CONFIG] = user_cfg if user_cfg is not None else ConfigRecord({})
            rd[P.CFG] = ConfigRecord({**flat, P.CFG_ROUND: cfg_round or server_round, P.CFG_NODE_ID: node,
                                      P.GLOBAL_ROUND: self.scheme.global_round})
            out.append(Message(rd, dst_node_id=node, message_type=msg.metadata.message_type,
                               group_id=str(server_round)))
        self._sent = out
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's sampling and config; fedguard's model records."""
        self._flush()
        return self._wrap(self.strategy.configure_train(server_round, arrays, config, grid),
                          server_round)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's evaluation round, with the (encrypted) global model."""
        # evaluated after round r's aggregate: the global includes round r, so the message is
        # the first of round r + 1 (as in fedguard's own loop, where trainers check it)
        return self._wrap(self.strategy.configure_evaluate(server_round, arrays, config, grid),
                          server_round, cfg_round=server_round + 1)

    def _node_of(self, reply: Message) -> int:
        for msg in self._sent:
            if msg.metadata.message_id == reply.metadata.reply_to_message_id:
                return int(msg.metadata.dst_node_id)
        return int(reply.metadata.src_node_id)

    # -- train replies --------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, filter and aggregate the updates; aggregate their train metrics."""
        assert self.scheme is not None and self.layout is not None and self._grid is not None
        t0 = time.monotonic()
        payloads: dict[int, Any] = {}
        counts: dict[int, int] = {}
        metrics: dict[int, dict[str, float]] = {}
        refused: dict[int, str] = {}
        rejected: dict[int, str] = {}
        replied = 0
        for reply in replies:
            node = self._node_of(reply)
            replied += 0 if reply.has_error() else 1
            try:
                payloads[node], counts[node], metrics[node] = self._parse_train(reply)
            except RejectedUpdate as exc:
                rejected[node] = exc.reason + (f": {exc.detail}" if exc.detail else "")
            except _Refused as exc:
                refused[node] = str(exc)
        decisions = self._decide(payloads, counts, server_round)
        accepted = sorted(n for n in payloads if decisions[n].accepted)
        for n in payloads:
            if not decisions[n].accepted:
                rejected[n] = "; ".join(decisions[n].reasons)
        for node, why in {**refused, **rejected}.items():
            event = "rejected" if node in rejected else "refused"
            log.warning("round %d: node %d %s: %s", server_round, node, event, why)
            self._audit([{"round": server_round, "node": node, "event": event, "reason": why}])
        self._audit(self.scheme.drain_audit())
        self._audit([{"round": server_round, "node": n, "event": "accepted" if d.accepted
                      else "filtered", **d.to_record()} for n, d in sorted(decisions.items())])
        report = RoundReport(
            round=server_round, seconds=0.0, sampled=len(self._sent), replied=replied,
            accepted=accepted, rejected=rejected, refused=refused,
            train_loss=None,
            epsilon_by_client={f"node-{n}": m["epsilon"] for n, m in metrics.items()
                               if "epsilon" in m},
            decisions=[d.to_record() for _n, d in sorted(decisions.items())],
        )
        self._pending = report
        if not accepted or (self.scheme.hides_updates
                            and len(accepted) < self.cfg.recover.group_size):
            # trainers refuse an encrypted aggregate of fewer than group-size uploads (nobody
            # may decrypt a near-individual update), so such a round is lost, not sent
            report.note = (f"{len(accepted)} update(s) accepted, fewer than needed: the global "
                           "model is unchanged this round")
            return None, None
        # the same weights as fedguard's own loop: counts capped at weight-cap x median, then
        # integers summing to K (trainers check both before they decrypt)
        capped = capped_counts([counts[n] for n in accepted], self.cfg.recover.weight_cap)
        weights = integer_weights(capped)
        self.scheme.aggregate([payloads[n] for n in accepted], [int(w) for w in weights],
                              server_round)
        report.timings = {"aggregate-and-screen": time.monotonic() - t0}
        report.bytes_up = {n: int(metrics[n].get(P.M_BYTES_UP, 0)) for n in accepted}
        agg = _weighted_metrics([metrics[n] for n in accepted], [counts[n] for n in accepted])
        report.train_loss = agg.get(P.M_TRAIN_LOSS, agg.get("train_loss"))
        arrays = None
        if isinstance(self.scheme, PlaintextScheme):
            arrays = self.layout.unflatten(self.scheme.global_model)
        return arrays, MetricRecord(agg)  # type: ignore[arg-type]

    def _parse_train(self, reply: Message) -> tuple[Any, int, dict[str, float]]:
        assert self.scheme is not None
        if reply.has_error():
            raise _Refused(describe_error_reply(reply.error.code, reply.error.reason))
        content = reply.content
        status = content.config_records.get(P.STATUS)
        if status is None:
            raise _Refused(f"{NOT_FEDGUARD_CAPABLE}: its reply has no fedguard status record")
        code, reason = status.get(P.STATUS_CODE), str(status.get(P.STATUS_REASON, ""))[:500]
        if code == P.STATUS_BUDGET_EXHAUSTED:
            raise _Refused(f"{P.STATUS_BUDGET_EXHAUSTED}: {reason}")
        if code != P.STATUS_OK:
            raise _Refused(f"{P.STATUS_ERROR}: {reason}" if code == P.STATUS_ERROR
                           else "protocol: unknown status code")
        rec = content.metric_records.get(P.METRICS)
        if rec is None:
            raise RejectedUpdate("malformed", "reply has no metrics record")
        metrics = {k: float(v) for k, v in rec.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        n = metrics.get(P.NUM_EXAMPLES)
        if n is None or not (1 <= n <= 1e9) or n != int(n):
            raise RejectedUpdate("bad-sample-count", f"{n!r}")
        payload = self.scheme.parse_update(self._node_of(reply), content)
        return payload, int(n), metrics

    def _decide(self, payloads: dict[int, Any], counts: dict[int, int], rnd: int
                ) -> dict[int, Decision]:
        assert self.scheme is not None and self._grid is not None
        return screen_round(self._grid, self.cfg, self.scheme, payloads, counts, rnd)

    # -- evaluate replies -----------------------------------------------------------------------
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """The wrapped strategy aggregates the evaluation replies that are well formed."""
        good: list[Message] = []
        for reply in replies:
            node = self._node_of(reply)
            why = ""
            if reply.has_error():
                why = describe_error_reply(reply.error.code, reply.error.reason)
            elif P.STATUS in reply.content.config_records:
                status = reply.content.config_records[P.STATUS]
                why = f"{status.get(P.STATUS_CODE)!s:.40}: {str(status.get(P.STATUS_REASON, ''))[:300]}"
            elif P.NUM_EXAMPLES not in next(iter(reply.content.metric_records.values()), {}):
                why = "evaluation reply has no metrics with 'num-examples'"
            if why:
                self._audit([{"round": server_round, "node": node, "event": "eval-refused",
                              "reason": why}])
                continue
            good.append(reply)
        result = self.strategy.aggregate_evaluate(server_round, good) if good else None
        if self._pending is not None and result is not None:
            value = result.get(self.primary_metric)
            loss = next((result[k] for k in ("loss", "eval_loss", P.EVAL_LOSS) if k in result), None)
            self._pending.accuracy = float(value) if isinstance(value, (int, float)) else None
            self._pending.loss = float(loss) if isinstance(loss, (int, float)) else None
        self._flush()
        return result

    # -- outputs ------------------------------------------------------------------------------
    def _audit(self, entries: list[dict[str, Any]]) -> None:
        if self._writer is not None:
            for e in entries:
                self._writer.on_audit(e)

    def _flush(self) -> None:
        if self._pending is None:
            return
        report, self._pending = self._pending, None
        report.seconds = time.monotonic() - self._t0
        self._t0 = time.monotonic()
        self._reports.append(report)
        if self._writer is not None:
            self._writer.on_round(report)
        elif self.progress is not None:
            self.progress(f"round {report.round}: accepted {len(report.accepted)}/"
                          f"{report.sampled}, {self.primary_metric} {report.accuracy}")

    @property
    def reports(self) -> list[RoundReport]:
        """One :class:`RoundReport` per completed round (what ``metrics.jsonl`` holds)."""
        return list(self._reports)


class _Refused(Exception):
    """A reply that carries no update to judge (error, budget exhausted, not fedguard)."""


def _weighted_metrics(rows: list[dict[str, float]], weights: list[int]) -> dict[str, float]:
    total = float(sum(weights))
    keys = sorted({k for r in rows for k in r if k != P.NUM_EXAMPLES})
    out = {k: sum(r.get(k, 0.0) * w for r, w in zip(rows, weights, strict=True)) / total
           for k in keys}
    if any("epsilon" in r for r in rows):
        out["epsilon"] = max(r.get("epsilon", 0.0) for r in rows)  # the worst client's ε
    out[P.NUM_EXAMPLES] = total
    return out
