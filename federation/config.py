"""One typed, validated configuration tree.

Flower's flat run config (``[tool.flwr.app.config]``, ``--run-config``) and the ``fedguard`` CLI
are read into :class:`FedConfig` once, at the edge, by :func:`from_flat`. Every bad value raises
:class:`~federation.errors.ConfigError` naming the flat key (the same spelling as the CLI flag)
and what is allowed. Inside fedguard only the typed tree is passed around.

The flat spelling is the single source of truth for names: ``FLAT_KEYS`` maps every accepted
key to its section and field.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum, StrEnum
from typing import Any

from federation.errors import ConfigError
from federation.partition import parse_partition
from federation.privacy import Accountant  # the accountant names live with the accounting

__all__ = [
    "BUILTIN_TASKS",
    "DEFENSES",
    "DP_RECIPE",
    "FLAT_KEYS",
    "MAX_WEIGHT_CAP",
    "MIN_GROUP_SIZE",
    "TASK_NAMES",
    "Accountant",
    "AttackConfig",
    "DPConfig",
    "DataConfig",
    "DefenseConfig",
    "FedConfig",
    "RecoverConfig",
    "RunConfig",
    "SecureAggregation",
    "SecureConfig",
    "TrainConfig",
    "from_flat",
    "parse_defenses",
    "to_flat",
]

# Short names of the bundled tasks -> their import strings (federation.tasks resolves them; kept
# here so the config needs no torch). Any other task is named by "package.module:attribute".
BUILTIN_TASKS: dict[str, str] = {
    "fashion-mnist": "federation.tasks:FASHION_MNIST",
    "fashion-mnist-tanh": "federation.tasks:FASHION_MNIST_TANH",
    "resnet-1m": "federation.resnet:RESNET_1M",
    "resnet-10m": "federation.resnet:RESNET_10M",
}
TASK_NAMES = tuple(BUILTIN_TASKS)
_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

# DP-SGD settings found by sweeping on the Fashion-MNIST task (docs/evidence/README.md): large
# Poisson batches, a large step without momentum, tight clipping, and tanh activations (bounded
# activations keep more signal after clipping: 82.4 % against 81.6 % with ReLU at ε = 3, 40
# rounds). With DP on, every key here that the caller did not set (absent, None or "auto")
# takes this value; without DP it takes PLAIN_DEFAULTS. One rule for the CLI, `flwr run` and
# the library API: it is applied by from_flat.
DP_RECIPE: dict[str, Any] = {"task": "fashion-mnist-tanh", "batch-size": 512, "lr": 4.0,
                             "momentum": 0.0, "max-grad-norm": 0.5}
PLAIN_DEFAULTS: dict[str, Any] = {"task": "fashion-mnist", "batch-size": 64, "lr": 0.05,
                                  "momentum": 0.9, "max-grad-norm": 1.0}
AUTO = "auto"
DEFENSES: tuple[str, ...] = ("norm", "multikrum", "cosine")
"""Every defence name, in canonical order; ``none`` (no filter) is the empty selection.

The one list: ``--defense``, the flat key ``defense`` and :func:`federation.robust.screen` all
read it through :func:`parse_defenses`. Attack names live with the attacks
(``simulations.attacks.ATTACKS``): they are a simulation's concern, checked where one starts.
"""


class SecureAggregation(StrEnum):
    """How updates travel and are aggregated."""

    NONE = "none"
    CKKS = "ckks"


@dataclass(frozen=True)
class RunConfig:
    """Shape of the federation: how many rounds and clients, seeds, where outputs go."""

    rounds: int = 3
    clients: int = 3  # 0: every node connected when the run starts (the ServerApp resolves it)
    min_clients: int = 0  # 0 means "all sampled clients must stay reachable minus failures"
    seed: int = 0
    out_dir: str = ""  # absolute path of the run folder; empty: the ServerApp writes nothing
    round_timeout: float = 600.0  # seconds to wait for one phase's replies
    # seconds a node lost in the previous train phase (a crashed client restarting) may take
    # to come back, counted once the others have replied; waited for once (server.loop)
    rejoin_wait: float = 30.0


@dataclass(frozen=True)
class DataConfig:
    """Task and data split. The partition string is ``iid``, ``dirichlet:ALPHA`` or ``shards:K``."""

    task: str = "fashion-mnist"
    partition: str = "dirichlet:0.5"
    # empty: FEDGUARD_DATA_DIR, then the Debian package, then the vendored subset;
    # "subset": the vendored subset even when the full set is installed
    data_dir: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters (plain SGD with momentum, or DP-SGD)."""

    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy. Off unless ``epsilon`` or ``noise_multiplier`` is set.

    ``epsilon`` is the budget of a client's whole ledger; noise is calibrated once per run
    for the rounds left x local epochs at each client's own sample rate, paying for the
    history the client already spent (none for a fresh client). ``delta`` of 0 means
    ``min(1e-5, 1/n)`` for a client with n records.
    """

    epsilon: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 0.0
    max_grad_norm: float = 1.0
    accountant: Accountant = Accountant.PRV

    @property
    def enabled(self) -> bool:
        return self.epsilon > 0 or self.noise_multiplier > 0


@dataclass(frozen=True)
class SecureConfig:
    """Secure aggregation mode and where keys come from."""

    mode: SecureAggregation = SecureAggregation.NONE
    key_dir: str = ""  # provisioned mode: a bundle directory; empty: in-band key setup


@dataclass(frozen=True)
class DefenseConfig:
    """Poisoned-update filters, applied in plaintext or under encryption."""

    defenses: tuple[str, ...] = ()
    screen_quorum: int = 2
    max_malicious: int = -1  # -1: automatic, federation.robust.max_krum_f (the most Krum tolerates)
    # Public bound on an honest update's L2 norm (parameter units) for the encrypted
    # soundness check (docs/soundness.md). Honest Fashion-MNIST updates measure ~0.5-5
    # (plain and DP recipes); 50 leaves 10x margin and is far below the modulus limit.
    screen_norm_bound: float = 50.0


@dataclass(frozen=True)
class RecoverConfig:
    """Verified globals, rollback, attribution and weight caps (one malicious party never ends a run).

    Trainers check every global they receive before using it: finite, ``|value| <= value_bound``,
    and a loss on their local evaluation split of at most ``max_loss_ratio`` times the loss of
    the previous global they accepted (``group_loss_ratio`` for an attribution candidate). A
    global that more than ``rollback_quorum`` of the voting trainers refuse is rolled back.
    Attribution then sums disjoint groups of at least ``group_size`` accepted updates (nobody
    ever decrypts fewer summed together; trainers refuse smaller groups). A declared sample
    count above ``weight_cap`` times the median of the set being aggregated is clipped to it
    (trainers check the same rule on the weights).
    """

    value_bound: float = 1e4  # absolute units of a model parameter
    max_loss_ratio: float = 1.5  # new loss / previous loss, both in nats
    # the same bound for an attribution candidate: the sum of one group only, which on non-IID
    # data is naturally worse than the full aggregate (1.55x was seen for an honest group)
    group_loss_ratio: float = 3.0
    rollback_quorum: float = 0.5  # fraction of the votes received
    group_size: int = 3  # k, updates per attribution group (and per aggregate)
    weight_cap: float = 3.0  # multiple of the median declared sample count


@dataclass(frozen=True)
class AttackConfig:
    """Simulated attackers (simulations only): a fraction of clients running one attack.

    ``attack`` is a name, optionally with parameters: ``scaling:boost=50``.
    """

    attack: str = ""
    malicious: float = 0.0


@dataclass(frozen=True)
class FedConfig:
    """The whole configuration of one federated run."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    recover: RecoverConfig = field(default_factory=RecoverConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able nested dict (enums as their values)."""
        out: dict[str, Any] = _jsonable(asdict(self))
        return out


# flat key -> (section, field)
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "num-server-rounds": ("run", "rounds"),
    "num-clients": ("run", "clients"),
    "min-clients": ("run", "min_clients"),
    "seed": ("run", "seed"),
    "out-dir": ("run", "out_dir"),
    "round-timeout": ("run", "round_timeout"),
    "rejoin-wait": ("run", "rejoin_wait"),
    "task": ("data", "task"),
    "partition": ("data", "partition"),
    "data-dir": ("data", "data_dir"),
    "local-epochs": ("train", "local_epochs"),
    "batch-size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "momentum": ("train", "momentum"),
    "dp-epsilon": ("dp", "epsilon"),
    "dp-noise": ("dp", "noise_multiplier"),
    "dp-delta": ("dp", "delta"),
    "max-grad-norm": ("dp", "max_grad_norm"),
    "dp-accountant": ("dp", "accountant"),
    "secure-aggregation": ("secure", "mode"),
    "key-dir": ("secure", "key_dir"),
    "defense": ("defense", "defenses"),
    "screen-quorum": ("defense", "screen_quorum"),
    "max-malicious": ("defense", "max_malicious"),
    "screen-norm-bound": ("defense", "screen_norm_bound"),
    "verify-value-bound": ("recover", "value_bound"),
    "verify-max-loss-ratio": ("recover", "max_loss_ratio"),
    "verify-group-loss-ratio": ("recover", "group_loss_ratio"),
    "rollback-quorum": ("recover", "rollback_quorum"),
    "group-size": ("recover", "group_size"),
    "weight-cap": ("recover", "weight_cap"),
    "attack": ("attack", "attack"),
    "malicious": ("attack", "malicious"),
}

_SECTIONS = {f.name: f.type for f in fields(FedConfig)}


def from_flat(flat: Mapping[str, Any], base: FedConfig | None = None) -> FedConfig:
    """Read a flat mapping (Flower run config, CLI options) into a validated :class:`FedConfig`.

    Unknown keys are errors (with a suggestion); values are converted and range-checked.
    Keys absent from ``flat`` keep their value from ``base``. Without a ``base``, the keys of
    :data:`DP_RECIPE` that ``flat`` does not set (absent, ``None`` or ``"auto"``) take the DP
    recipe when DP is on (``dp-epsilon`` or ``dp-noise`` > 0) and :data:`PLAIN_DEFAULTS`
    otherwise.
    """
    if base is None:
        flat = _with_recipe(flat)
    cfg = base or FedConfig()
    updates: dict[str, dict[str, Any]] = {}
    for key, raw in flat.items():
        if key not in FLAT_KEYS:
            close = difflib.get_close_matches(key, FLAT_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(key, f"unknown setting{hint} Known: {', '.join(sorted(FLAT_KEYS))}")
        section, name = FLAT_KEYS[key]
        updates.setdefault(section, {})[name] = _convert(key, getattr(getattr(cfg, section), name), raw)
    for section, values in updates.items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})
    _validate(cfg)
    return cfg


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO))


def _dp_requested(flat: Mapping[str, Any]) -> bool:
    for key in ("dp-epsilon", "dp-noise"):
        raw = flat.get(key)
        if raw is None or _unset(raw):
            continue
        try:
            if float(raw) > 0:
                return True
        except (TypeError, ValueError):
            return False  # from_flat reports the bad value under its key
    return False


def _with_recipe(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` with unset recipe keys filled (DP recipe or plain defaults); None values dropped."""
    recipe = DP_RECIPE if _dp_requested(flat) else PLAIN_DEFAULTS
    out = {k: v for k, v in flat.items() if v is not None}
    for key, value in recipe.items():
        if _unset(flat.get(key)):
            out[key] = value
    return out


def to_flat(cfg: FedConfig) -> dict[str, bool | int | float | str]:
    """The inverse of :func:`from_flat`: a flat dict that Flower's run config can carry."""
    out: dict[str, bool | int | float | str] = {}
    for key, (section, name) in FLAT_KEYS.items():
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = ",".join(value) if value else "none"
        out[key] = value
    return out


def _convert(key: str, current: Any, raw: Any) -> Any:
    """Convert ``raw`` to the type of the field's current value, or raise ConfigError."""
    if isinstance(current, Enum):
        allowed = [m.value for m in type(current)]
        text = str(raw).strip().lower()
        if text not in allowed:
            raise ConfigError(key, f"got {raw!r}; allowed: {' | '.join(allowed)}")
        return type(current)(text)
    if isinstance(current, tuple):  # the defence list
        return parse_defenses(raw, key)
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "1", "yes"):
            return True
        if str(raw).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(key, f"got {raw!r}; allowed: true | false")
    if isinstance(current, int):
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ConfigError(key, f"got {raw!r}; expected an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, f"got {raw!r}; expected an integer") from None
    if isinstance(current, float):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, f"got {raw!r}; expected a number") from None
        if not math.isfinite(value):
            raise ConfigError(key, f"got {raw!r}; expected a finite number")
        return value
    return str(raw)


def parse_defenses(raw: Any, key: str = "defense") -> tuple[str, ...]:
    """Read a defence selection into names of :data:`DEFENSES`, in canonical order.

    ``"none"`` or ``""`` gives ``()``; ``"cosine, norm"`` (any order, spaces and case ignored)
    gives ``("norm", "cosine")``. The order does not matter because the screen composes the
    filters side by side.

    Raises
    ------
    ConfigError
        Naming ``key``: an unknown, empty or repeated name, or ``none`` combined with others.
    """
    text = str(raw).strip().lower()
    if text in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in text.split(","))
    bad = [p for p in parts if p not in DEFENSES]
    if bad or len(set(parts)) != len(parts):
        raise ConfigError(
            key, f"got {raw!r}; allowed: none, or a comma list of {', '.join(DEFENSES)}"
        )
    return tuple(d for d in DEFENSES if d in parts)  # canonical order


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _validate(cfg: FedConfig) -> None:
    """Range checks that need more than one field's type."""
    r, d, t, p, s, f, a = cfg.run, cfg.data, cfg.train, cfg.dp, cfg.secure, cfg.defense, cfg.attack
    _check(1 <= r.rounds <= 10_000, "num-server-rounds", f"got {r.rounds}; allowed: 1..10000")
    _check(0 <= r.clients <= 10_000, "num-clients",
           f"got {r.clients}; allowed: 1..10000, or 0 for every connected node")
    known = r.clients or 10_000  # with 0, the bounds below are checked again once resolved
    _check(
        0 <= r.min_clients <= known,
        "min-clients",
        f"got {r.min_clients}; allowed: 0..num-clients ({r.clients})",
    )
    _check(r.round_timeout > 0, "round-timeout", f"got {r.round_timeout}; allowed: > 0 seconds")
    _check(0 <= r.rejoin_wait <= r.round_timeout, "rejoin-wait",
           f"got {r.rejoin_wait}; allowed: 0..round-timeout ({r.round_timeout}) seconds")
    _check(
        d.task in BUILTIN_TASKS or bool(_IMPORT_STRING.match(d.task)),
        "task",
        f"got {d.task!r}; allowed: {', '.join(BUILTIN_TASKS)}, or an import string "
        "'package.module:attribute' naming a federation.tasks.Task",
    )
    parse_partition(d.partition)  # raises ConfigError("partition", ...)
    _check(1 <= t.local_epochs <= 1000, "local-epochs", f"got {t.local_epochs}; allowed: 1..1000")
    _check(1 <= t.batch_size <= 65536, "batch-size", f"got {t.batch_size}; allowed: 1..65536")
    _check(0 < t.lr <= 10, "lr", f"got {t.lr}; allowed: 0 < lr <= 10")
    _check(0 <= t.momentum < 1, "momentum", f"got {t.momentum}; allowed: 0 <= momentum < 1")
    _check(p.epsilon >= 0, "dp-epsilon", f"got {p.epsilon}; allowed: > 0 (0 = not set)")
    _check(p.noise_multiplier >= 0, "dp-noise", f"got {p.noise_multiplier}; allowed: > 0 (0 = not set)")
    _check(
        not (p.epsilon > 0 and p.noise_multiplier > 0),
        "dp-epsilon",
        "set either dp-epsilon (a budget; noise is calibrated) or dp-noise, not both",
    )
    _check(0 <= p.delta < 1, "dp-delta", f"got {p.delta}; allowed: 0 < delta < 1 (0 = default)")
    _check(p.max_grad_norm > 0, "max-grad-norm", f"got {p.max_grad_norm}; allowed: > 0")
    _check(
        1 <= f.screen_quorum <= known,
        "screen-quorum",
        f"got {f.screen_quorum}; allowed: 1..num-clients ({r.clients})",
    )
    _check(
        math.isfinite(f.screen_norm_bound) and f.screen_norm_bound > 0,
        "screen-norm-bound",
        f"got {f.screen_norm_bound}; allowed: > 0 (L2 norm bound of an honest update)",
    )
    _check(
        -1 <= f.max_malicious < known,
        "max-malicious",
        f"got {f.max_malicious}; allowed: -1 (automatic) or 0..num-clients-1",
    )
    _validate_recover(cfg.recover)
    _check(0 <= a.malicious < 1, "malicious", f"got {a.malicious}; allowed: 0 <= fraction < 1")
    _check(
        not (a.malicious > 0 and a.attack == ""),
        "attack",
        "malicious > 0 needs an attack (NAME[:KEY=VALUE,...], e.g. scaling:boost=50)",
    )
    _check(
        s.mode is SecureAggregation.CKKS or not s.key_dir,
        "key-dir",
        "a key directory only makes sense with secure-aggregation ckks",
    )


# Protocol floors that a server-sent config cannot lower: trainers read the run config from
# the server's message, so these bounds are what they enforce whatever the server claims.
MIN_GROUP_SIZE = 2  # the default is 3; 2 lets each trainer of a pair read the other's update
MAX_WEIGHT_CAP = 10.0


def _validate_recover(v: RecoverConfig) -> None:
    _check(1.0 <= v.value_bound <= 1e6, "verify-value-bound",
           f"got {v.value_bound}; allowed: 1..1e6 (absolute parameter value)")
    _check(1.0 < v.max_loss_ratio <= 100.0, "verify-max-loss-ratio",
           f"got {v.max_loss_ratio}; allowed: 1 < ratio <= 100")
    _check(1.0 < v.group_loss_ratio <= 100.0, "verify-group-loss-ratio",
           f"got {v.group_loss_ratio}; allowed: 1 < ratio <= 100")
    _check(0.0 < v.rollback_quorum <= 1.0, "rollback-quorum",
           f"got {v.rollback_quorum}; allowed: 0 < fraction of votes <= 1")
    _check(MIN_GROUP_SIZE <= v.group_size <= 1000, "group-size",
           f"got {v.group_size}; allowed: {MIN_GROUP_SIZE}..1000 updates")
    _check(1.0 <= v.weight_cap <= MAX_WEIGHT_CAP, "weight-cap",
           f"got {v.weight_cap}; allowed: 1..{MAX_WEIGHT_CAP:g} (multiple of the median count)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
