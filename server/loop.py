"""The round loop: sample, train, (screen), aggregate, report. No I/O of its own.

Flower is reached only through :class:`GridLike` (``get_node_ids`` and ``send_and_receive``,
which Flower's ``Grid`` has and an in-memory fake can have); the clock and the observer that
writes files are parameters. How the global model and the updates travel — plaintext arrays
or CKKS ciphertexts — is a :class:`~server.schemes.Scheme`, so encryption and screening plug
in without touching this loop.

One round (DESIGN.md §3):

1. **train**: every sampled node receives the round config and the global model; it evaluates
   the received model on its local test split, trains, and replies with its update and
   metrics. The evaluation therefore describes the *previous* round's model; the loop holds a
   round's report back until that evaluation arrives (next round, or the final evaluate
   phase).
2. **screen** (with a defence, and always under encryption): the scheme computes the
   statistics the filters need (in plaintext, or under encryption with a quorum of key
   holders: there the uploads' validity check runs even with ``--defense none``) and the pure
   rule :func:`federation.robust.decide` says who is accepted.
3. **aggregate**: integer-weighted sum of accepted updates (:mod:`federation.aggregation`),
   each declared sample count capped at ``weight-cap`` times the median of the set
   aggregated; under encryption a round with fewer than ``group-size`` accepted updates is
   not aggregated (nobody may decrypt fewer summed together).
4. **verify** (no phase of its own): every train (and the final evaluate) reply carries the
   trainer's vote on the global it received. When more than ``rollback-quorum`` of the votes
   refuse it, the newest aggregate is rolled back, *attribution* runs (one ``query.verify``
   phase: candidate globals, each the previous global plus one disjoint group of at least
   ``group-size`` of the refused round's updates, checked by the trainers with the same
   rules), the round is redone from the groups they accept, and the phase whose global was
   refused runs again on the redone global. A round may be lost; the run goes on.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from flwr.app import ConfigRecord, Message, RecordDict

from federation import protocol as P
from federation.aggregation import capped_counts, integer_weights
from federation.config import FedConfig, to_flat
from federation.errors import FedguardError, ProtocolError, RejectedUpdate
from federation.robust import Decision, decide, resolve_max_malicious
from server.replies import describe_error_reply
from server.schemes import Scheme, U

__all__ = [
    "ClientResult",
    "GridLike",
    "RoundReport",
    "RunObserver",
    "RunResult",
    "run_federation",
    "screen_round",
]

log = logging.getLogger("fedguard.server")


class GridLike(Protocol):
    """The part of Flower's ``Grid`` the loop uses."""

    def get_node_ids(self) -> Iterable[int]: ...

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]: ...


@dataclass
class ClientResult(Generic[U]):
    """One node's train reply, parsed and validated; ``payload`` is the scheme's update type."""

    node_id: int
    status: str  # ok | budget-exhausted | error | rejected | lost
    reason: str = ""
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    payload: U | None = None  # the scheme's validated update (set exactly when status is ok)


def _payload(r: ClientResult[U]) -> U:
    """The validated update of an ok result (a loop invariant, not a check of peer input)."""
    if r.payload is None:
        raise RuntimeError(f"node {r.node_id}: result {r.status!r} has no validated update")
    return r.payload


@dataclass
class RoundReport:
    """Everything observable about one round; one line of ``metrics.jsonl``."""

    round: int
    seconds: float
    sampled: int
    replied: int
    accepted: list[int]
    rejected: dict[int, str]
    refused: dict[int, str]  # clients that did not train (budget exhausted, errors, lost)
    train_loss: float | None
    accuracy: float | None = None  # of the global model produced by this round
    loss: float | None = None
    epsilon_by_client: dict[str, float] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # eval-x-* metrics, e.g. "asr"
    clients: dict[int, str] = field(default_factory=dict)  # node id -> client label
    note: str = ""
    weights: dict[int, int] = field(default_factory=dict)  # node -> integer weight actually used
    clipped: dict[int, list[int]] = field(default_factory=dict)  # node -> [declared, used] count
    refusals: dict[int, str] = field(default_factory=dict)  # votes refusing the received global
    rolled_back: bool = False  # this round's aggregate was refused and undone
    recovery: dict[str, Any] = field(default_factory=dict)  # attribution of a rolled-back round

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 4),
            "sampled": self.sampled,
            "replied": self.replied,
            "accepted": self.accepted,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "refused": {str(k): v for k, v in self.refused.items()},
            "epsilon_by_client": self.epsilon_by_client,
            "max_epsilon": max(self.epsilon_by_client.values(), default=None),
            "decisions": self.decisions,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "bytes_up": {str(k): v for k, v in self.bytes_up.items()},
            "bytes_down": {str(k): v for k, v in self.bytes_down.items()},
            **{f"eval_{k}": v for k, v in self.extra.items()},
            "clients": {str(k): v for k, v in self.clients.items()},
            "weights": {str(k): v for k, v in self.weights.items()},
            "clipped_weights": {str(k): v for k, v in self.clipped.items()},
            "global_refusals": {str(k): v for k, v in self.refusals.items()},
            "rolled_back": self.rolled_back,
            **({"recovery": self.recovery} if self.recovery else {}),
            **({"note": self.note} if self.note else {}),
        }


@dataclass
class RunResult:
    """How the run ended."""

    rounds_completed: int
    stopped_early: bool
    stop_reason: str
    reports: list[RoundReport]
    rolled_back_rounds: list[int] = field(default_factory=list)


class RunObserver(Protocol):
    """Receives what the loop produces; the ServerApp's observer writes files and prints."""

    def on_round(self, report: RoundReport) -> None: ...

    def on_audit(self, entry: dict[str, Any]) -> None: ...

    def on_checkpoint(self, round_: int, state: dict[str, Any]) -> None: ...


class _NullObserver:
    def on_round(self, report: RoundReport) -> None:
        pass

    def on_audit(self, entry: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, round_: int, state: dict[str, Any]) -> None:
        pass


def _wait_for_nodes(grid: GridLike, wanted: int, timeout: float, clock: Callable[[], float],
                    sleep: Callable[[float], None]) -> list[int]:
    deadline = clock() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= wanted or clock() >= deadline:
            return nodes[:wanted] if len(nodes) >= wanted else nodes
        sleep(0.5)


def exchange(
    grid: GridLike,
    node_contents: dict[int, RecordDict],
    message_type: str,
    round_: int,
    timeout: float,
) -> tuple[dict[int, Message], dict[int, str]]:
    """Send one message per node and collect replies.

    Returns ``(replies, lost)``: replies with content by node id, and a reason for every node
    that answered with an error or not at all. Replies are matched to nodes through the
    message ids, never through the sender field (an error reply comes from the SuperLink).
    """
    messages = [
        Message(content, dst_node_id=node, message_type=message_type, group_id=str(round_))
        for node, content in node_contents.items()
    ]
    raw = list(grid.send_and_receive(messages, timeout=timeout))
    by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    replies: dict[int, Message] = {}
    lost: dict[int, str] = {}
    for reply in raw:
        node = by_id.get(reply.metadata.reply_to_message_id)
        if node is None or node in replies or node in lost:
            log.warning("ignoring an unexpected or duplicate reply")
            continue
        if reply.has_error():
            # Flower types the reason ``str | None`` and a Ray failure sends a whole coloured
            # traceback: one readable line either way (a reply without one must not end the run).
            lost[node] = describe_error_reply(reply.error.code, reply.error.reason)
        elif not reply.has_content():
            lost[node] = "empty-reply"
        else:
            replies[node] = reply
    for node in node_contents:
        if node not in replies and node not in lost:
            lost[node] = f"no-reply within {timeout:.0f}s"
    return replies, lost


_OFFLINE_REASON = "offline: not connected during the round"
"""Why a node that was not connected while its round ran has no reply (``lost: ...``)."""


def _train_exchange(
    grid: GridLike,
    node_contents: dict[int, RecordDict],
    round_: int,
    timeout: float,
    *,
    expected_back: set[int],
    rejoin_wait: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[dict[int, Message], dict[int, str]]:
    """One train phase in which a node that is offline when it starts can still take part.

    A message to an offline node is answered at once by the SuperLink with an error, so a
    client that crashed in the previous round and is restarting would miss this round too.
    Instead, the nodes connected now get their messages; afterwards, each node that has come
    back (re)connected gets its message (the round waits for it). Nodes in ``expected_back``
    (lost in the previous round) are waited for up to ``rejoin_wait`` seconds after the others
    replied. A node still offline then is lost with :data:`_OFFLINE_REASON`. The whole phase
    takes at most ``timeout + rejoin_wait``: a node that comes back late gets only what is left
    of that, so nodes reconnecting one after another cannot each claim a full ``timeout``.
    Returns ``(replies, lost)`` like :func:`exchange`.
    """
    phase_end = clock() + timeout + rejoin_wait
    online = {int(n) for n in grid.get_node_ids()}
    later = {n: c for n, c in node_contents.items() if n not in online}
    now_ = {n: c for n, c in node_contents.items() if n in online}
    replies, lost = exchange(grid, now_, P.MSG_TRAIN, round_, timeout) if now_ else ({}, {})
    deadline = clock() + rejoin_wait
    while later and clock() < phase_end:
        online = {int(n) for n in grid.get_node_ids()}
        back = {n: c for n, c in later.items() if n in online}
        if back:
            log.info("round %d: node(s) %s came back; sending them this round", round_, sorted(back))
            more, more_lost = exchange(grid, back, P.MSG_TRAIN, round_, phase_end - clock())
            replies.update(more)
            lost.update(more_lost)
            for n in back:
                del later[n]
            continue
        if not expected_back & set(later) or clock() >= deadline:
            break
        sleep(0.5)
    for n in later:
        lost[n] = _OFFLINE_REASON
    return replies, lost


def _metrics_of(content: RecordDict) -> dict[str, float]:
    if P.METRICS not in content.metric_records:
        raise ProtocolError("reply has no metrics record")
    out: dict[str, float] = {}
    for k, v in content.metric_records[P.METRICS].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _status_of(content: RecordDict) -> tuple[str, str]:
    rec = content.config_records.get(P.STATUS)
    if rec is None:
        raise ProtocolError("reply has no status record")
    code, reason = rec.get(P.STATUS_CODE), rec.get(P.STATUS_REASON, "")
    if code not in (P.STATUS_OK, P.STATUS_BUDGET_EXHAUSTED, P.STATUS_ERROR, P.STATUS_REFUSED_GLOBAL):
        raise ProtocolError("unknown status code")
    return str(code), str(reason)[:500]


_MAX_EXTRA_METRICS = 16
"""At most this many ``eval-x-NAME`` metrics per round (a hook adds one or two)."""


def _weighted_extra(results: Sequence[ClientResult[Any]]) -> dict[str, float]:
    """Weighted means of ``eval-x-NAME`` metrics (weights ``eval-x-NAME-examples``).

    Each is a peer's claim, so a value counts only if it is a finite number in bound and its
    weight is in ``(0, eval-examples]`` (no more examples than the peer says it evaluated);
    and a NAME counts only if more than half of the replies report it validly (every client
    runs the same hooks, so a name only a minority sends cannot make a row of its own).
    """
    def valid(r: ClientResult[Any], key: str) -> tuple[float, float] | None:
        v, w = r.metrics.get(key), r.metrics.get(key + "-examples", 0.0)
        examples = r.metrics.get(P.EVAL_EXAMPLES, 0.0)
        if not (isinstance(v, (int, float)) and isinstance(w, (int, float))
                and isinstance(examples, (int, float))):
            return None
        if not (math.isfinite(v) and abs(v) <= _EVAL_BOUND and math.isfinite(w) and 0 < w <= examples):
            return None
        return float(v), float(w)

    sent = Counter(k for r in results for k in r.metrics
                   if k.startswith(P.EVAL_EXTRA_PREFIX) and not k.endswith("-examples"))
    out: dict[str, float] = {}
    for key in sorted(k for k, c in sent.items() if 2 * c > len(results)):
        pairs = [p for p in (valid(r, key) for r in results) if p is not None]
        if 2 * len(pairs) > len(results) and len(out) < _MAX_EXTRA_METRICS:
            out[key[len(P.EVAL_EXTRA_PREFIX):]] = sum(v * w for v, w in pairs) / sum(w for _v, w in pairs)
    return out


# Bound on a reported loss or metric: a task's honest values are far inside it, so anything
# beyond is tampering (never clamped).
_EVAL_BOUND = 1e9


def _weighted_eval(results: Sequence[ClientResult[Any]]) -> tuple[float | None, float | None]:
    """Sample-weighted means of the primary metric and the loss of the evaluation the replies carry.

    The primary metric is the task's (``eval-primary``): accuracy for the bundled classifiers,
    whatever the task names otherwise (e.g. mse); :class:`RoundReport` keeps it as ``accuracy``.
    """
    weighted = [r for r in results if r.metrics.get(P.EVAL_EXAMPLES, 0) > 0]
    num = sum(r.metrics[P.EVAL_EXAMPLES] for r in weighted)
    if num <= 0:
        return None, None
    primary = sum(r.metrics[P.EVAL_PRIMARY] * r.metrics[P.EVAL_EXAMPLES] for r in weighted) / num
    loss = sum(r.metrics[P.EVAL_LOSS] * r.metrics[P.EVAL_EXAMPLES] for r in weighted) / num
    return primary, loss


def _parse_eval(content: RecordDict) -> dict[str, float]:
    """The reply's metrics; its evaluation fields must be present, finite and bounded."""
    m = _metrics_of(content)
    n, primary, loss = m.get(P.EVAL_EXAMPLES, 0.0), m.get(P.EVAL_PRIMARY), m.get(P.EVAL_LOSS)
    if not (0 <= n <= 1e9) or n != int(n) or (n > 0 and (primary is None or loss is None)):
        raise ProtocolError("bad evaluation metrics")
    if n > 0:
        values = [primary, loss, *(v for k, v in m.items() if k.startswith(P.EVAL_METRIC_PREFIX))]
        if not all(v is not None and abs(v) < _EVAL_BOUND for v in values):  # NaN fails too
            raise ProtocolError("evaluation metrics out of range")
    return m


MAX_RECOVERIES_PER_ROUND = 2
"""Rollbacks one round's phase may trigger before the loop goes on with what it has."""


@dataclass
class _Uploads(Generic[U]):
    """The accepted updates of the newest aggregated round (what attribution regroups)."""

    round: int
    results: list[ClientResult[U]]
    counts: list[int]  # capped sample counts, in the order of ``results``


def _contents(scheme: Scheme[Any], flat: dict[str, Any], nodes: Sequence[int], rnd: int
              ) -> dict[int, RecordDict]:
    out: dict[int, RecordDict] = {}
    for node in nodes:
        rd = scheme.global_records(node, rnd)
        rd[P.CFG] = ConfigRecord({**flat, P.CFG_ROUND: rnd, P.CFG_NODE_ID: node,
                                  P.GLOBAL_ROUND: scheme.global_round})
        out[node] = rd
    return out


def _vote_of(content: RecordDict, global_round: int, candidates: int = 0
             ) -> tuple[bool, str] | list[tuple[bool, str]] | None:
    """A reply's vote on the global(s) it was sent; None when absent or malformed."""
    rec = content.config_records.get(P.VOTE)
    if rec is None or rec.get(P.VOTE_ROUND) != global_round:
        return None
    accept, reason = rec.get(P.VOTE_ACCEPT), rec.get(P.VOTE_REASON, "")
    if candidates == 0:
        if not isinstance(accept, bool):
            return None
        return accept, str(reason)[:300]
    if not isinstance(accept, list) or len(accept) != candidates \
            or not all(isinstance(a, bool) for a in accept):
        return None
    reasons = reason if isinstance(reason, list) and len(reason) == candidates else [""] * candidates
    return [(bool(a), str(r)[:200]) for a, r in zip(accept, reasons, strict=True)]


def _refused(votes: dict[int, tuple[bool, str]], quorum: float) -> bool:
    """More than ``quorum`` of the votes refuse."""
    refusals = sum(1 for ok, _r in votes.values() if not ok)
    return bool(votes) and refusals > quorum * len(votes)


def _aggregate(scheme: Scheme[U], cfg: FedConfig, accepted: Sequence[ClientResult[U]], rnd: int
               ) -> tuple[dict[int, int], dict[int, list[int]], list[int]]:
    """Cap the declared counts, aggregate; return weights used, clipped counts, capped counts."""
    declared = [r.num_examples for r in accepted]
    counts = capped_counts(declared, cfg.recover.weight_cap)
    weights = [int(w) for w in integer_weights(counts)]
    scheme.aggregate([_payload(r) for r in accepted], weights, rnd)
    clipped = {r.node_id: [d, c] for r, d, c in zip(accepted, declared, counts, strict=True) if d != c}
    return ({r.node_id: w for r, w in zip(accepted, weights, strict=True)}, clipped, counts)


def _recover(grid: GridLike, cfg: FedConfig, scheme: Scheme[U], obs: RunObserver,
             uploads: _Uploads[U] | None, flat: dict[str, Any], nodes: Sequence[int], rnd: int,
             refusals: dict[int, str], clock: Callable[[], float]) -> dict[str, Any] | None:
    """Roll back the newest aggregate, attribute, redo it from the groups the trainers accept.

    Returns what happened (for the rolled-back round's report), or None if nothing could be
    rolled back.
    """
    t0 = clock()
    undone = scheme.rollback()
    if undone is None:
        obs.on_audit({"round": rnd, "event": "rollback-impossible",
                      "reason": "the global was refused but no aggregate can be undone",
                      "refusals": {str(k): v for k, v in refusals.items()}})
        return None
    obs.on_audit({"round": undone, "event": "rolled-back", "refused_in_round": rnd,
                  "refusals": {str(k): v for k, v in refusals.items()}})
    info: dict[str, Any] = {"round": undone, "phases": 0, "groups": [], "refused_groups": [],
                            "excluded": [], "redone": False}
    k = cfg.recover.group_size
    if uploads is None or uploads.round != undone or len(uploads.results) < 2 * k:
        # One group would be the refused aggregate itself: nothing to attribute, round lost.
        info["excluded"] = sorted(r.node_id for r in uploads.results) if uploads else []
        info["note"] = f"fewer than 2 x group-size ({2 * k}) updates: the round is lost"
        obs.on_audit({"round": undone, "event": "round-lost", "reason": info["note"]})
        info["seconds"] = clock() - t0
        return info
    groups = _groups(uploads, k, cfg.run.seed)
    group_weights = [[int(w) for w in integer_weights(capped_counts(c, cfg.recover.weight_cap))]
                     for _g, c in groups]
    rd = scheme.candidate_records([([_payload(r) for r in g], w)
                                   for (g, _c), w in zip(groups, group_weights, strict=True)], undone)
    contents: dict[int, RecordDict] = {}
    for node in nodes:
        content = RecordDict()
        for key, record in rd.items():
            content[key] = record
        content[P.CFG] = ConfigRecord({**flat, P.CFG_ROUND: rnd, P.CFG_NODE_ID: node, P.GLOBAL_ROUND: undone})
        contents[node] = content
    replies, lost = exchange(grid, contents, P.MSG_VERIFY, rnd, cfg.run.round_timeout)
    info["phases"] = 1
    tallies: list[dict[int, tuple[bool, str]]] = [{} for _ in groups]
    for node, reply in replies.items():
        vote = _vote_of(reply.content, undone, len(groups))
        if isinstance(vote, list):
            for i, v in enumerate(vote):
                tallies[i][node] = v
        else:
            why = _status_reason(reply.content)
            obs.on_audit({"round": undone, "node": node, "event": "attribution-no-vote", "reason": why})
    for node, why in lost.items():
        obs.on_audit({"round": undone, "node": node, "event": "attribution-no-vote", "reason": why})
    good: list[ClientResult[U]] = []
    good_counts: list[int] = []
    for i, ((members, counts), tally) in enumerate(zip(groups, tallies, strict=True)):
        ids = sorted(r.node_id for r in members)
        info["groups"].append(ids)
        bad = _refused(tally, cfg.recover.rollback_quorum) or not tally
        obs.on_audit({"round": undone, "event": "attribution-group", "group": i, "nodes": ids,
                      "refused": bad, "votes": len(tally),
                      "refusals": {str(n): r for n, (ok, r) in sorted(tally.items()) if not ok}})
        if bad:
            info["refused_groups"].append(i)
            info["excluded"].extend(ids)
        else:
            good.extend(members)
            good_counts.extend(counts)
    if good:
        weights, clipped, _c = _aggregate(scheme, cfg, good, undone)
        info.update(redone=True, weights={str(k_): v for k_, v in weights.items()},
                    clipped_weights={str(k_): v for k_, v in clipped.items()})
        obs.on_audit({"round": undone, "event": "redone", "nodes": sorted(weights),
                      "weights": {str(n): w for n, w in sorted(weights.items())}})
        obs.on_checkpoint(undone, {"round": undone, **scheme.checkpoint()})
    else:
        obs.on_audit({"round": undone, "event": "round-lost", "reason": "every group was refused"})
    info["excluded"] = sorted(info["excluded"])
    info["seconds"] = clock() - t0
    return info


def _mark_rolled_back(report: RoundReport, info: dict[str, Any], refusals: dict[int, str]) -> None:
    """Record on a round's report that its aggregate was refused, undone and attributed."""
    report.rolled_back, report.recovery, report.refusals = True, info, dict(refusals)
    excluded = set(info["excluded"])
    report.accepted = [n for n in report.accepted if n not in excluded]
    for n in excluded:
        report.rejected[n] = "attribution: in a group the trainers refused"
    report.weights = {int(n): w for n, w in info.get("weights", {}).items()}
    report.clipped = {int(n): c for n, c in info.get("clipped_weights", {}).items()}


def _groups(uploads: _Uploads[U], k: int, seed: int) -> list[tuple[list[ClientResult[U]], list[int]]]:
    """Disjoint groups of at least ``k`` uploads, by a shuffle the round's seed fixes."""
    order = list(range(len(uploads.results)))
    random.Random(f"{seed}/{uploads.round}").shuffle(order)
    m = len(order) // k
    return [([uploads.results[i] for i in order[j::m]], [uploads.counts[i] for i in order[j::m]])
            for j in range(m)]


def _status_reason(content: RecordDict) -> str:
    try:
        code, reason = _status_of(content)
    except ProtocolError as exc:
        return f"protocol: {exc}"
    return f"{code}: {reason}"


def run_federation(
    grid: GridLike,
    cfg: FedConfig,
    scheme: Scheme[U],
    *,
    observer: RunObserver | None = None,
    start_round: int = 1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    node_wait: float = 120.0,
) -> RunResult:
    """Run rounds ``start_round .. cfg.run.rounds`` and return how the run ended.

    A bad reply costs that reply only: it is recorded with a reason and the round goes on
    while at least ``min-clients`` (default 1) accepted updates remain. A global that the
    trainers refuse costs its round (rolled back, attributed, redone), never the run.

    A node that is offline when a train phase starts (a crashed client restarting) gets its
    message once it is back, within the same phase; one lost in the previous train phase is
    waited for up to ``cfg.run.rejoin_wait`` seconds (the ``rejoin-wait`` key) after the
    others replied (once: a node that did
    not come back is not waited for again until it has replied). So a client killed mid-round
    and restarted misses that round only, if it reconnects before the next one ends.
    """
    obs = observer or _NullObserver()
    flat = to_flat(cfg)
    nodes = _wait_for_nodes(grid, cfg.run.clients, node_wait, clock, sleep)
    if not nodes:
        raise ProtocolError("no client nodes connected")
    if len(nodes) < cfg.run.clients:
        log.warning("only %d of %d nodes connected; continuing with them", len(nodes), cfg.run.clients)
    scheme.setup(grid, nodes, cfg)
    for entry in scheme.drain_audit():
        obs.on_audit(entry)

    reports: list[RoundReport] = []
    pending: RoundReport | None = None
    completed = start_round - 1
    if start_round > 1:  # resumed: the last checkpointed model is evaluated by the next replies
        pending = RoundReport(round=start_round - 1, seconds=0.0, sampled=0, replied=0, accepted=[],
                              rejected={}, refused={}, train_loss=None,
                              note="evaluated after a server restart; details in the earlier line")
    stop_reason, stopped_early = "", False
    uploads: _Uploads[U] | None = None
    rolled_back: list[int] = []
    rnd, recoveries, t0 = start_round, 0, clock()
    extra_timings: dict[str, float] = {}
    lost_last: set[int] = set()  # nodes without a reply in the previous train phase
    gone: set[int] = set()  # waited for once in vain: not waited for again until they reply
    while rnd <= cfg.run.rounds:
        t_phase = clock()
        global_round = scheme.global_round
        contents = _contents(scheme, flat, nodes, rnd)
        down = {n: scheme.bytes_down(n) for n in nodes}
        # A node lost last round (a crashed client restarting) may come back within
        # rejoin_wait; one that did not is not waited for again until it has replied.
        replies, lost = _train_exchange(
            grid, contents, rnd, cfg.run.round_timeout, expected_back=lost_last - gone,
            rejoin_wait=cfg.run.rejoin_wait, clock=clock, sleep=sleep)
        gone = (gone | (lost_last & set(lost))) - set(replies)
        lost_last = set(lost)
        down = {n: b for n, b in down.items() if lost.get(n) != _OFFLINE_REASON}  # not sent
        t_train = clock() - t_phase

        results: list[ClientResult[U]] = [ClientResult(n, "lost", reason) for n, reason in lost.items()]
        evals: list[ClientResult[U]] = []
        votes: dict[int, tuple[bool, str]] = {}
        for node, reply in replies.items():
            res: ClientResult[U] = ClientResult(node, "error")
            vote = _vote_of(reply.content, global_round)
            if isinstance(vote, tuple):
                votes[node] = vote
            try:
                res.status, res.reason = _status_of(reply.content)
                if res.status == P.STATUS_REFUSED_GLOBAL:
                    results.append(res)
                    continue
                res.metrics = _parse_eval(reply.content)
                evals.append(res)
                if res.status == P.STATUS_OK:
                    # A trainer without fedguard's checks (e.g. a partner app under
                    # clients.mods) sends no vote and is not counted; one that refused the
                    # global it trained on contradicts itself.
                    if isinstance(vote, tuple) and not vote[0]:
                        raise ProtocolError("an update trained on a global it refused")
                    res.num_examples = _positive_count(res.metrics.get(P.NUM_EXAMPLES))
                    res.payload = scheme.parse_update(node, reply.content)
            except RejectedUpdate as exc:
                res.status, res.reason = "rejected", exc.reason + (f": {exc.detail}" if exc.detail else "")
            except ProtocolError as exc:
                res.status, res.reason = "rejected", f"protocol: {exc}"
            results.append(res)

        refusals = {n: r for n, (ok, r) in votes.items() if not ok}
        for node, why in sorted(refusals.items()):
            obs.on_audit({"round": rnd, "node": node, "event": "global-refused",
                          "global_round": global_round, "reason": why})
        if _refused(votes, cfg.recover.rollback_quorum) and recoveries < MAX_RECOVERIES_PER_ROUND:
            # The global these replies were trained on is refused: their updates are discarded
            # (only trainers that accepted it trained), the round is recovered and run again.
            info = _recover(grid, cfg, scheme, obs, uploads, flat, nodes, rnd, refusals, clock)
            if info is not None:
                recoveries += 1
                rolled_back.append(int(info["round"]))
                uploads = None
                extra_timings["refused-train-phase"] = extra_timings.get("refused-train-phase", 0.0) + t_train
                extra_timings["recovery"] = extra_timings.get("recovery", 0.0) + float(info["seconds"])
                if pending is not None and pending.round == info["round"]:
                    _mark_rolled_back(pending, info, refusals)
                continue

        if pending is not None:  # replies evaluated last round's model
            pending.accuracy, pending.loss = _weighted_eval(evals)
            pending.extra = _weighted_extra(evals)
            obs.on_round(pending)
            reports.append(pending)
            pending = None

        candidates = [r for r in results if r.status == P.STATUS_OK]
        t1 = clock()
        decisions = _decide(grid, cfg, scheme, candidates, rnd)
        t_screen = clock() - t1
        accepted = [r for r in candidates if decisions[r.node_id].accepted]
        for r in candidates:
            if not decisions[r.node_id].accepted:
                r.status, r.reason = "rejected", "; ".join(decisions[r.node_id].reasons)
        for r in results:
            if r.status != P.STATUS_OK:
                obs.on_audit({"round": rnd, "node": r.node_id, "event": r.status, "reason": r.reason})
        for entry in scheme.drain_audit():
            obs.on_audit(entry)
        for node, d in sorted(decisions.items()):
            obs.on_audit({"round": rnd, "node": node,
                          "event": "accepted" if d.accepted else "filtered", **d.to_record()})

        report = RoundReport(
            round=rnd,
            seconds=0.0,
            sampled=len(nodes),
            replied=len(replies),
            accepted=sorted(r.node_id for r in accepted),
            rejected={r.node_id: r.reason for r in results if r.status == "rejected"},
            refused={r.node_id: f"{r.status}: {r.reason}" for r in results
                     if r.status not in (P.STATUS_OK, "rejected")},
            train_loss=_mean([r.metrics.get(P.M_TRAIN_LOSS) for r in accepted]),
            epsilon_by_client={_client_label(r): r.metrics[P.M_EPSILON] for r in evals
                               if P.M_EPSILON in r.metrics},
            decisions=[d.to_record() for _n, d in sorted(decisions.items())],
            clients={r.node_id: _client_label(r) for r in evals},
            refusals=refusals,
        )
        need = max(cfg.run.min_clients, 1)
        if len(accepted) < need:
            exhausted = sum(1 for r in results if r.status == P.STATUS_BUDGET_EXHAUSTED)
            stop_reason = (
                f"round {rnd}: only {len(accepted)} update(s) accepted, min-clients is {need}"
                + (f"; {exhausted} client(s) have exhausted their privacy budget" if exhausted else "")
            )
            stopped_early = True
            report.seconds = clock() - t0
            report.timings = {"train-phase": t_train, "screen": t_screen, **extra_timings}
            obs.on_audit({"round": rnd, "event": "stopped", "reason": stop_reason})
            obs.on_round(report)
            reports.append(report)
            break

        t2 = clock()
        t_agg = 0.0
        if scheme.hides_updates and len(accepted) < cfg.recover.group_size:
            # Trainers would refuse a global summing fewer than k updates (and they would be
            # right: one of them could subtract its own update and read the others').
            report.note = (f"not aggregated: {len(accepted)} accepted update(s), "
                           f"group-size is {cfg.recover.group_size}")
            obs.on_audit({"round": rnd, "event": "not-aggregated", "reason": report.note})
        else:
            report.weights, report.clipped, counts = _aggregate(scheme, cfg, accepted, rnd)
            uploads = _Uploads(rnd, list(accepted), counts)
            t_agg = clock() - t2
            obs.on_audit({"round": rnd, "event": "aggregated", "global_round": rnd,
                          "weights": {str(n): w for n, w in sorted(report.weights.items())},
                          "clipped": {str(n): c for n, c in sorted(report.clipped.items())}})
        report.seconds = clock() - t0
        report.timings = {"train-phase": t_train, "screen": t_screen, "aggregate": t_agg,
                          **extra_timings, **_sum_client_timings(accepted)}
        report.bytes_up = {r.node_id: int(r.metrics.get(P.M_BYTES_UP, 0)) for r in accepted}
        report.bytes_down = down
        if t_agg > 0 or not scheme.hides_updates:
            obs.on_checkpoint(rnd, {"round": rnd, **scheme.checkpoint()})
        completed = rnd
        pending = report
        rnd, recoveries, t0, extra_timings = rnd + 1, 0, clock(), {}

    # Final evaluation of the last model (nothing trains, nothing privacy-relevant is spent).
    recoveries = 0
    while pending is not None:
        global_round = scheme.global_round
        contents = _contents(scheme, flat, nodes, pending.round + 1)
        replies, _lost = exchange(grid, contents, P.MSG_EVALUATE, pending.round + 1,
                                  cfg.run.round_timeout)
        evals = []
        votes = {}
        for node, reply in replies.items():
            vote = _vote_of(reply.content, global_round)
            if isinstance(vote, tuple):
                votes[node] = vote
                if not vote[0]:
                    continue
            try:
                evals.append(ClientResult(node, "ok", metrics=_parse_eval(reply.content)))
            except ProtocolError as exc:
                log.warning("node %s: bad evaluation reply: %s", node, exc)
        refusals = {n: r for n, (ok, r) in votes.items() if not ok}
        if _refused(votes, cfg.recover.rollback_quorum) and recoveries < MAX_RECOVERIES_PER_ROUND:
            info = _recover(grid, cfg, scheme, obs, uploads, flat, nodes, pending.round + 1,
                            refusals, clock)
            if info is not None:
                recoveries += 1
                uploads = None
                rolled_back.append(int(info["round"]))
                if pending.round == info["round"]:
                    _mark_rolled_back(pending, info, refusals)
                continue
        pending.accuracy, pending.loss = _weighted_eval(evals)
        pending.extra = _weighted_extra(evals)
        obs.on_round(pending)
        reports.append(pending)
        pending = None
    return RunResult(completed, stopped_early, stop_reason, reports, sorted(set(rolled_back)))


def _decide(grid: GridLike, cfg: FedConfig, scheme: Scheme[U], candidates: list[ClientResult[U]],
            rnd: int) -> dict[int, Decision]:
    return screen_round(grid, cfg, scheme, {r.node_id: _payload(r) for r in candidates},
                        {r.node_id: r.num_examples for r in candidates}, rnd)


def screen_round(grid: GridLike, cfg: FedConfig, scheme: Scheme[U], payloads: Mapping[int, U],
                 counts: Mapping[int, int], rnd: int) -> dict[int, Decision]:
    """Who is aggregated, with what weight: the server's one rule, for the round loop and for
    :class:`server.strategy.FedguardStrategy`.

    Under encryption the uploads' validity check (the projection screen's certified band,
    docs/soundness.md) runs with or without ``--defense``: the server cannot look at an
    update, so validity is part of secure aggregation (as PINE/Prio validity proofs are), and
    a wrapped, shifted or garbage upload is rejected (``statistic:*``) before it can spoil an
    aggregate; the rollback stays the second line for what the check cannot see. The filters
    run only when ``--defense`` names some (:func:`federation.robust.decide`). Plaintext
    without a filter screens nothing. When the screen itself cannot run (an error while
    computing the statistics), no update is judged safe: every candidate is rejected with
    ``screening-failed: …``, the round is lost and the run goes on.
    """
    ids = sorted(payloads)
    if not ids or not (cfg.defense.defenses or scheme.validates_uploads):
        return {i: Decision(i, True, counts[i], (), {}) for i in ids}
    f = resolve_max_malicious(cfg.defense.max_malicious, len(ids))
    try:
        stats = scheme.statistics(grid, {i: payloads[i] for i in ids}, rnd)
    except (FedguardError, ValueError) as exc:
        why = f"screening-failed: {exc}"[:300]
        log.warning("round %d: %s", rnd, why)
        return {i: Decision(i, False, 0, (why,), {}) for i in ids}
    decisions = decide(stats, {i: counts[i] for i in ids}, cfg.defense.defenses, f=f)
    return {int(d.client_id): d for d in decisions}


def _positive_count(value: float | None) -> int:
    if value is None or not (1 <= value <= 1e9) or value != int(value):
        raise RejectedUpdate("bad-sample-count", f"{value!r}")
    return int(value)


def _client_label(r: ClientResult[Any]) -> str:
    pid = r.metrics.get(P.M_PARTITION_ID)
    return f"client-{int(pid)}" if pid is not None else f"node-{r.node_id}"


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _sum_client_timings(results: Sequence[ClientResult[Any]]) -> dict[str, float]:
    keys = (P.M_TRAIN_SECONDS, P.M_ENCRYPT_SECONDS, P.M_DECRYPT_SECONDS, "verify-seconds", P.M_EVAL_SECONDS)
    out = {}
    for k in keys:
        vals = [r.metrics[k] for r in results if k in r.metrics]
        if vals:
            out[f"client-{k}-max"] = max(vals)
            out[f"client-{k}-sum"] = sum(vals)
    return out
