"""Attacks for simulated malicious clients.

Each attack is a small frozen dataclass satisfying the :class:`Attack` protocol: it may
poison the attacker's training data before local training (:meth:`Attack.poison_data`) and
the update it trained afterwards (:meth:`Attack.poison_update`). Attacks compose with
:func:`compose` instead of inheriting from each other.

Threat model (DESIGN.md §1): attackers are trainers. They collude, know the defence
configuration (:attr:`AttackContext.defenses`, the norm threshold) and the global model, and
can estimate honest updates from their own honest training (:attr:`AttackContext.
benign_estimates`); they never see other trainers' updates.

========== ================================================================= ===========
name       what it does                                                      kind
========== ================================================================= ===========
label-flip ``y -> 9 - y`` on all the attacker's data                         data
sign-flip  ``-scale x update``                                                model
scaling    ``boost x update`` (naive; ``adaptive=True`` hides from defences)  model
gaussian   ``N(0, sigma²)`` per coordinate, ``sigma sqrt(d)`` = benign norm   model
alie       ``mean - z std`` per coordinate of the benign estimates            model
ipm        ``-epsilon x mean`` of the benign estimates                        model
backdoor   pixel trigger + relabel to ``target`` on a fraction, then boosted  data+model
min-max    ``mean + gamma p``, max distance to benign <= max benign distance  model
min-sum    ``mean + gamma p``, sum of sq. distances <= largest benign sum     model
           (both: colluders pool their benign updates, all send one vector)
wrap       boosted update + padding-slot mass that wraps the modulus          ciphertext
shift      ``(q - 1) / 2`` added to every NTT value of ``c0`` (key-free)       ciphertext
garbage    uniform coefficients below each prime under a valid header        ciphertext
========== ================================================================= ===========

Ciphertext attacks (``wrap``, ``shift``) also implement :class:`UploadAttack`: they change the
encrypted upload itself (:meth:`UploadAttack.poison_upload`), which only matters under CKKS.

Nothing here mutates its inputs; randomness comes from the ``rng`` argument
(:meth:`~Attack.poison_data`) or from ``AttackContext.seed`` and the round
(:meth:`~Attack.poison_update`), so every attack is deterministic under a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from crypto import EncryptedVector
from crypto.ckks import add_coefficients, encode_coefficients
from federation.errors import ConfigError
from federation.robust import DEFAULT_NORM_K

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "TRIGGER_SIZE",
    "TRIGGER_VALUE",
    "Attack",
    "AttackContext",
    "Backdoor",
    "Composed",
    "Garbage",
    "Gaussian",
    "LabelFlip",
    "MinMax",
    "MinSum",
    "Scaling",
    "Shift",
    "SignFlip",
    "TriggerRates",
    "UploadAttack",
    "Wrap",
    "alie_z",
    "apply_trigger",
    "compose",
    "make_attack",
    "select_malicious",
    "trigger_rates",
]

F32 = npt.NDArray[np.float32]
Images = npt.NDArray[np.uint8]
Labels = npt.NDArray[np.int64]

TRIGGER_SIZE: Final[int] = 4
"""Side of the white square stamped in the bottom-right corner of a triggered image."""

TRIGGER_VALUE: Final[int] = 255
"""Pixel value of the trigger (white on Fashion-MNIST's black background)."""

NUM_CLASSES: Final[int] = 10


# --------------------------------------------------------------------------- context


@dataclass(frozen=True, eq=False)
class AttackContext:
    """What a realistic colluding attacker knows when it crafts its update.

    Attributes
    ----------
    global_model:
        ``(d,)`` float32 global model of this round (every trainer holds it).
    round:
        Server round, ``>= 1`` (0 allowed for tests).
    n_clients, n_attackers:
        Clients in the round and how many of them collude.
    defenses:
        The defence names in force (attackers know the configuration).
    benign_estimates:
        ``(k, d)`` honest updates the colluders computed themselves (their own honest
        training); ALIE, IPM, Gaussian and the evasion use their mean, spread and norms.
        ``k = 0`` is allowed: the attack then falls back to ``benign_update`` or its own update.
    benign_update:
        This attacker's own honest update, if it trained one; else ``None``.
    norm_k:
        The norm filter's threshold multiple (part of the known defence configuration).
    seed:
        Attack randomness seed (combined with ``round``); give each attacker its own.
    """

    global_model: F32
    round: int
    n_clients: int
    n_attackers: int
    defenses: tuple[str, ...] = ()
    benign_estimates: F32 = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    benign_update: F32 | None = None
    norm_k: float = DEFAULT_NORM_K
    seed: int = 0

    def __post_init__(self) -> None:
        model = np.asarray(self.global_model, dtype=np.float32).ravel()
        est = np.asarray(self.benign_estimates, dtype=np.float32)
        if est.size == 0:
            est = np.zeros((0, model.size), dtype=np.float32)
        if est.ndim != 2 or est.shape[1] != model.size:
            raise ValueError(
                f"benign_estimates must be (k, {model.size}), got {np.shape(self.benign_estimates)}"
            )
        if not (0 <= self.n_attackers <= self.n_clients) or self.n_clients < 1:
            raise ValueError(f"need 0 <= n_attackers ({self.n_attackers}) <= n_clients >= 1")
        if self.round < 0 or self.seed < 0:
            raise ValueError("round and seed must be >= 0")
        object.__setattr__(self, "global_model", model)
        object.__setattr__(self, "benign_estimates", est)
        object.__setattr__(self, "defenses", tuple(self.defenses))
        if self.benign_update is not None:
            own = np.asarray(self.benign_update, dtype=np.float32).ravel()
            object.__setattr__(self, "benign_update", own)

    def rng(self) -> np.random.Generator:
        """A fresh generator for this (seed, round): same inputs, same attack."""
        return np.random.default_rng([self.seed, self.round])

    def estimates_or(self, fallback: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The benign estimates as float64 ``(k, d)``; if there are none, the own benign
        update, else ``fallback`` (the attacker's trained update) as a single estimate."""
        if self.benign_estimates.shape[0] > 0:
            return self.benign_estimates.astype(np.float64)
        own = self.benign_update if self.benign_update is not None else fallback
        return np.asarray(own, dtype=np.float64).reshape(1, -1)


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Attack(Protocol):
    """A malicious client's behaviour: poison data before training, the update after."""

    @property
    def name(self) -> str:
        """The ``--attack`` name."""
        ...

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        """Return (possibly) poisoned copies of ``x`` (N, 28, 28 uint8) and ``y`` (N int64)."""
        ...

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        """Return the update to send, given the one trained locally (float32, ``(d,)``)."""
        ...


def _f32(u: npt.ArrayLike) -> F32:
    return np.array(u, dtype=np.float32, copy=True)


def _check_data(x: Images, y: Labels) -> None:
    if x.ndim != 3 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x (N, H, W) and y (N,), got {x.shape} and {y.shape}")


def _positive(name: str, key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"attack.{key}", f"{name}: must be a positive number, got {value!r}")


def _fraction(name: str, key: str, value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"attack.{key}", f"{name}: must be in [0, 1], got {value!r}")


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


# --------------------------------------------------------------------------- evasion


def _evade(update: npt.NDArray[np.float64], ctx: AttackContext, safety: float) -> F32:
    """Shrink a boosted update until the known defences should let it through.

    * ``multikrum``: pull it into the ball around the benign mean whose radius is the
      median distance of the benign estimates to their mean (needs k >= 2), so its nearest
      neighbours look like an honest client's.
    * ``norm``: scale it to ``safety x norm_k x`` the median benign norm, just under the
      filter's threshold (the filter uses the median of all submitted norms, which the
      colluders' own capped norms barely move).
    """
    est = ctx.estimates_or(update)
    out = update
    if "multikrum" in ctx.defenses and est.shape[0] >= 2:
        centre = est.mean(axis=0)
        radius = float(np.median(np.linalg.norm(est - centre, axis=1)))
        dist = float(np.linalg.norm(out - centre))
        if dist > radius > 0:
            out = centre + (out - centre) * (radius / dist)
    if "norm" in ctx.defenses:
        cap = safety * ctx.norm_k * float(np.median(np.linalg.norm(est, axis=1)))
        norm = float(np.linalg.norm(out))
        if norm > cap:
            out = out * (cap / norm)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- attacks


@dataclass(frozen=True)
class LabelFlip:
    """Data poisoning: every label ``y`` becomes ``num_classes - 1 - y``; update untouched."""

    num_classes: int = NUM_CLASSES
    name: str = field(default="label-flip", init=False)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        _check_data(x, y)
        return x.copy(), (self.num_classes - 1 - y).astype(np.int64)

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        return _f32(own_update)


@dataclass(frozen=True)
class SignFlip:
    """Model poisoning: send ``-scale x`` the trained update (points against the consensus)."""

    scale: float = 1.0
    name: str = field(default="sign-flip", init=False)

    def __post_init__(self) -> None:
        _positive(self.name, "scale", self.scale)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        return (-self.scale * np.asarray(own_update, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class Scaling:
    """Model poisoning: send ``boost x`` the trained update.

    Naive by default (the textbook boosted attacker that norm filters catch). With
    ``adaptive=True`` it applies the same evasion as the backdoor (stay under the norm
    threshold, inside the benign cloud) and so mostly loses its boost.
    """

    boost: float = 10.0
    adaptive: bool = False
    safety: float = 0.9
    name: str = field(default="scaling", init=False)

    def __post_init__(self) -> None:
        _positive(self.name, "boost", self.boost)
        _fraction(self.name, "safety", self.safety)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        boosted = self.boost * np.asarray(own_update, dtype=np.float64)
        if self.adaptive:
            return _evade(boosted, ctx, self.safety)
        return boosted.astype(np.float32)


@dataclass(frozen=True)
class Gaussian:
    """Model poisoning: a random update ``N(0, sigma²)`` per coordinate.

    ``sigma = sigma_scale x median benign norm / sqrt(d)``, so with ``sigma_scale = 1`` the
    random update is as long as an honest one (it dodges the norm filter, carries no signal);
    larger values make it louder. Randomness: ``ctx.rng()`` (seed, round).
    """

    sigma_scale: float = 1.0
    name: str = field(default="gaussian", init=False)

    def __post_init__(self) -> None:
        _positive(self.name, "sigma_scale", self.sigma_scale)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        u = np.asarray(own_update, dtype=np.float64).ravel()
        est = ctx.estimates_or(u)
        scale = float(np.median(np.linalg.norm(est, axis=1)))
        sigma = self.sigma_scale * scale / math.sqrt(max(u.size, 1))
        noise = ctx.rng().normal(0.0, sigma, size=u.size)
        return noise.astype(np.float32).reshape(np.shape(own_update))


def alie_z(n_clients: int, n_attackers: int) -> float:
    """ALIE's ``z_max`` (Baruch et al., 2019): how many benign std-devs to shift.

    ``s = floor(n/2 + 1) - f`` honest clients must be "won over"; ``z = Phi^-1((n - s)/n)``.
    The probability is kept inside ``(0, 1)``. ``statistics.NormalDist.inv_cdf`` is used
    (exact to double precision, same values as ``scipy.stats.norm.ppf``, no extra dependency).
    """
    if n_clients < 1 or not (0 <= n_attackers <= n_clients):
        raise ValueError(f"need 0 <= n_attackers ({n_attackers}) <= n_clients ({n_clients})")
    s = math.floor(n_clients / 2 + 1) - n_attackers
    p = min(max((n_clients - s) / n_clients, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class ALIE:
    """Model poisoning "a little is enough": ``mean - z x std`` per coordinate.

    Mean and std come from the colluders' benign estimates (std with ``ddof=1`` when
    ``k >= 2``, else 0). ``z`` defaults to :func:`alie_z` of the round's ``n`` and ``f``;
    for ``z <= 1`` the update stays within one std of the benign mean in every coordinate,
    so distance- and norm-based filters see nothing unusual. Each attacker computes it from
    the estimates it is given (``ctx``); they are not pooled as for min-max / min-sum, so
    the attackers' vectors differ.
    """

    z: float | None = None
    name: str = field(default="alie", init=False)

    def __post_init__(self) -> None:
        if self.z is not None and not math.isfinite(self.z):
            raise ConfigError("attack.z", f"alie: must be a finite number, got {self.z!r}")

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        est = ctx.estimates_or(own_update)
        mean = est.mean(axis=0)
        std = est.std(axis=0, ddof=1) if est.shape[0] >= 2 else np.zeros_like(mean)
        z = self.z if self.z is not None else alie_z(ctx.n_clients, ctx.n_attackers)
        out: F32 = (mean - z * std).astype(np.float32).reshape(np.shape(own_update))
        return out


@dataclass(frozen=True)
class IPM:
    """Model poisoning, inner-product manipulation (Xie et al., 2020): ``-epsilon x mean``.

    The mean is of the benign estimates. Small ``epsilon`` (default 0.5) keeps the update
    short and close to the others (aimed at Krum/norm filters) while making its inner
    product with the honest mean negative; a large one (e.g. 10) overwhelms median-type rules.
    """

    epsilon: float = 0.5
    name: str = field(default="ipm", init=False)

    def __post_init__(self) -> None:
        _positive(self.name, "epsilon", self.epsilon)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        mean = ctx.estimates_or(own_update).mean(axis=0)
        out: F32 = (-self.epsilon * mean).astype(np.float32).reshape(np.shape(own_update))
        return out


def apply_trigger(x: Images) -> Images:
    """Stamp the backdoor trigger on images ``(..., H, W)``: a white ``TRIGGER_SIZE`` square
    in the bottom-right corner. Returns a new array."""
    out = np.array(x, dtype=np.uint8, copy=True)
    out[..., -TRIGGER_SIZE:, -TRIGGER_SIZE:] = TRIGGER_VALUE
    return out


@dataclass(frozen=True)
class Backdoor:
    """Backdoor (BadNets trigger + model replacement, Bagdasaryan et al., 2020).

    Data: a ``poison_frac`` fraction (rounded half up) of the attacker's images, chosen with
    ``rng``, get the trigger (:func:`apply_trigger`) and the label ``target``; the rest keep
    the main task, so the model stays accurate on clean inputs.

    Update: boosted by ``boost`` (default ``n_clients / n_attackers``, enough for the
    colluders to replace the averaged model). With ``adaptive=True`` (default: attackers
    know the defences) the boost is then shrunk so the update passes: under ``norm`` its
    norm is capped at ``safety x norm_k x`` the median benign norm (just under the
    threshold), under ``multikrum`` it is pulled into the benign cloud.
    """

    target: int = 0
    poison_frac: float = 0.5
    boost: float | None = None
    adaptive: bool = True
    safety: float = 0.9
    name: str = field(default="backdoor", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not (0 <= self.target < NUM_CLASSES):
            raise ConfigError("attack.target", f"backdoor: a class in 0..9, got {self.target!r}")
        _fraction(self.name, "poison_frac", self.poison_frac)
        _fraction(self.name, "safety", self.safety)
        if self.boost is not None:
            _positive(self.name, "boost", self.boost)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        _check_data(x, y)
        count = _half_up(self.poison_frac * x.shape[0])
        idx = np.sort(rng.choice(x.shape[0], size=count, replace=False))
        px = np.array(x, dtype=np.uint8, copy=True)
        py = np.array(y, dtype=np.int64, copy=True)
        px[idx] = apply_trigger(px[idx])
        py[idx] = self.target
        return px, py

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        boost = self.boost
        if boost is None:
            boost = ctx.n_clients / max(ctx.n_attackers, 1)
        boosted = boost * np.asarray(own_update, dtype=np.float64)
        if self.adaptive:
            return _evade(boosted, ctx, self.safety)
        return boosted.astype(np.float32)


_PERTURBATIONS: Final = ("std", "unit", "sign")


def _perturbation(kind: str, est: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Shejwalkar & Houmansadr's perturbation directions (unit length)."""
    mu = est.mean(axis=0)
    if kind == "std":
        p = -est.std(axis=0)
    elif kind == "sign":
        p = -np.sign(mu)
    else:
        p = -mu
    norm = float(np.linalg.norm(p))
    out: npt.NDArray[np.float64] = p / norm if norm > 0 else p
    return out


def _largest_gamma(ok: Callable[[float], bool], start: float, tol: float = 1e-3) -> float:
    """The paper's search: the largest ``gamma`` with ``ok(gamma)`` (halving steps)."""
    gamma, step, best = start, start / 2, 0.0
    while step > tol * start:
        if ok(gamma):
            best = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return best


@dataclass(frozen=True)
class MinMax:
    """Model poisoning in the benign spread (Shejwalkar & Houmansadr, NDSS 2021, "min-max").

    ``mean + gamma p`` for the perturbation ``p`` (``std``: minus the benign std, ``unit``:
    minus the mean's direction, ``sign``: minus its signs), with the largest ``gamma`` whose
    distance to every benign estimate stays within the largest distance between two benign
    estimates: as far out as possible without looking farther than an honest outlier.

    ``collude=True`` (default) is the paper's setting: the colluders pool the benign updates
    of their own clients (``benign_estimates`` holds one per colluder, the same set for
    every colluder; :mod:`simulations.adversary` computes it) and **all send the one
    malicious vector** this yields. ``collude=False`` is a variant the paper does not
    evaluate: each attacker works from its own data alone (its update and two half-data
    updates), so the colluders' vectors differ.
    """

    perturbation: str = "std"
    collude: bool = True
    name: str = field(default="min-max", init=False)

    def __post_init__(self) -> None:
        if self.perturbation not in _PERTURBATIONS:
            raise ConfigError(f"attack.{self.name}.perturbation",
                              f"got {self.perturbation!r}; allowed: {', '.join(_PERTURBATIONS)}")

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def _accept(self, candidate: npt.NDArray[np.float64], est: npt.NDArray[np.float64]) -> bool:
        pair = max((float(np.linalg.norm(a - b)) for a in est for b in est), default=0.0)
        return float(np.max(np.linalg.norm(est - candidate, axis=1))) <= pair

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        u = np.asarray(own_update, dtype=np.float64).ravel()
        est = ctx.estimates_or(u)
        mu, p = est.mean(axis=0), _perturbation(self.perturbation, est)
        scale = float(np.median(np.linalg.norm(est, axis=1))) or 1.0
        gamma = _largest_gamma(lambda g: self._accept(mu + g * p, est), 10.0 * scale)
        out: F32 = (mu + gamma * p).astype(np.float32).reshape(np.shape(own_update))
        return out


@dataclass(frozen=True)
class MinSum(MinMax):
    """``min-sum``: like :class:`MinMax`, but the bound is on the *sum* of squared distances
    to the benign estimates (at most the largest such sum of a benign estimate)."""

    name: str = field(default="min-sum", init=False)

    def _accept(self, candidate: npt.NDArray[np.float64], est: npt.NDArray[np.float64]) -> bool:
        sums = [float(np.sum(np.linalg.norm(est - e, axis=1) ** 2)) for e in est]
        return float(np.sum(np.linalg.norm(est - candidate, axis=1) ** 2)) <= max(sums, default=0.0)


@runtime_checkable
class UploadAttack(Protocol):
    """An attack on the encrypted upload itself (after the trainer encrypted its update)."""

    def poison_upload(self, enc: EncryptedVector, ctx: AttackContext) -> EncryptedVector:
        """Return the ciphertext to send instead of ``enc`` (same key, length and seed)."""
        ...


@dataclass(frozen=True)
class Wrap:
    """Boosted update whose plaintext wraps the modulus through its padding slots.

    The model part is ``boost x`` the trained update (a model replacement that looks like the
    attacker's honest direction, cosine 1); the unused slots of the last chunk -- which no
    honest update touches and no statistic over the model part sees -- get ``+-1`` values
    multiplied by ``K = wrap * q / max|coefficient|``: far beyond any encodable value, so the
    plaintext's coefficients wrap around ``q``. Against statistics computed modulo a fixed
    modulus this is what made a 50x update read like the honest median; the projection
    screen rejects it as ``statistic:wraparound``. With no padding (length a multiple of the
    chunk size) the wrap mass goes to the last chunk's coefficients directly.
    """

    boost: float = 10.0
    wrap: float = 0.75
    name: str = field(default="wrap", init=False)

    def __post_init__(self) -> None:
        _positive(self.name, "boost", self.boost)
        _fraction(self.name, "wrap", self.wrap)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        return (self.boost * np.asarray(own_update, dtype=np.float64)).astype(np.float32)

    def poison_upload(self, enc: EncryptedVector, ctx: AttackContext) -> EncryptedVector:
        spec = enc.preset.spec
        q = spec.data_moduli[0]
        per = spec.values_per_chunk
        slots = np.zeros(enc.chunk_count * per)
        pad = np.arange(enc.length, slots.size)
        rng = ctx.rng()
        if pad.size:
            slots[pad] = rng.choice([-1.0, 1.0], size=pad.size)
            mass = encode_coefficients(enc.preset, slots)
        else:
            mass = np.zeros((enc.chunk_count, spec.poly_degree), dtype=np.int64)
            mass[-1] = rng.integers(-(2**20), 2**20, size=spec.poly_degree)
        k = max(1, round(self.wrap * q / max(int(np.abs(mass).max()), 1)))
        return add_coefficients(enc, (mass.astype(object) * k % q).astype(np.int64))


@dataclass(frozen=True)
class Shift:
    """The half-modulus shift: ``(q - 1) / 2`` added to every NTT value of ``c0``.

    Needs no key. It adds the constant polynomial ``(q - 1) / 2`` to the plaintext: an even
    aggregation weight cancels it mod ``q`` and an odd one leaves the aggregate destroyed, while
    statistics that square or multiply it can look honest. The model part is the honest update.
    """

    name: str = field(default="shift", init=False)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        return np.asarray(own_update, dtype=np.float32).copy()

    def poison_upload(self, enc: EncryptedVector, ctx: AttackContext) -> EncryptedVector:
        spec = enc.preset.spec
        delta = np.zeros((enc.chunk_count, spec.poly_degree), dtype=np.int64)
        delta[:, 0] = (spec.data_moduli[0] - 1) // 2  # constant polynomial = every NTT value
        return add_coefficients(enc, delta)


@dataclass(frozen=True)
class Composed:
    """Several attacks in sequence: data poisons in order, then update poisons in order."""

    parts: tuple[Attack, ...]

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.parts)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        for part in self.parts:
            x, y = part.poison_data(x, y, rng)
        return x, y

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        for part in self.parts:
            own_update = part.poison_update(own_update, ctx)
        return own_update


@dataclass(frozen=True)
class Garbage:
    """Ciphertext poisoning: a well-formed upload that encrypts nothing.

    Under CKKS it keeps its honest envelope's header (preset, key fingerprint, length: all
    public) and replaces the payload by coefficients drawn uniformly below each prime, with a
    fresh seed. Every structural check passes, and it decrypts to noise of magnitude about
    ``q / Delta``; one such upload in a sum ruins the aggregate. Only the public key
    fingerprint is needed, so any party could send it. In plaintext it sends values drawn
    uniformly in ``[-bound, bound]`` (the largest update the protocol lets through).
    """

    bound: float = 4.0
    name: str = field(default="garbage", init=False)

    def __post_init__(self) -> None:
        _positive(self.name, "bound", self.bound)

    def poison_data(self, x: Images, y: Labels, rng: np.random.Generator) -> tuple[Images, Labels]:
        return x.copy(), y.copy()

    def poison_update(self, own_update: F32, ctx: AttackContext) -> F32:
        return _f32(own_update)  # the upload itself is replaced after encryption

    def garbage_envelope(self, honest: bytes, rng: np.random.Generator) -> bytes:
        """A seeded-upload envelope with the header fields and seed of ``honest`` and a uniform
        payload (the seed stays, so the trainer's screening tag still binds the upload)."""
        from crypto import EncryptedVector, Preset, wire

        preset = Preset.from_id(honest[8:24].rstrip(b"\0").decode("ascii"))
        fingerprint = honest[24:32].hex()
        length = int.from_bytes(honest[44:52], "little")
        spec = preset.spec
        chunks = -(-length // spec.values_per_chunk)
        c0 = np.stack([rng.integers(0, q, size=(chunks, spec.poly_degree), dtype=np.uint64)
                       for q in spec.data_moduli], axis=1)
        seed = honest[wire.HEADER_BYTES:wire.HEADER_BYTES + 32]  # a seeded envelope's seed field
        enc = EncryptedVector(preset, fingerprint, length, 1, c0, None, seed)
        return wire.encode(enc)

    def garbage_update(self, dim: int, rng: np.random.Generator) -> F32:
        """The plaintext counterpart: uniform values in ``[-bound, bound]``."""
        return rng.uniform(-self.bound, self.bound, size=dim).astype(np.float32)


def compose(*attacks: Attack) -> Composed:
    """Chain attacks, e.g. ``compose(LabelFlip(), Scaling(boost=5))``."""
    if not attacks:
        raise ValueError("compose needs at least one attack")
    return Composed(tuple(attacks))


_FACTORIES: Final[dict[str, Callable[..., Attack]]] = {
    "label-flip": LabelFlip,
    "sign-flip": SignFlip,
    "scaling": Scaling,
    "gaussian": Gaussian,
    "alie": ALIE,
    "ipm": IPM,
    "backdoor": Backdoor,
    "min-max": MinMax,
    "min-sum": MinSum,
    "wrap": Wrap,
    "shift": Shift,
    "garbage": Garbage,
}
"""The attack registry: every attack is registered here, and only here."""

ATTACKS: Final[tuple[str, ...]] = tuple(_FACTORIES)
"""Every name ``--attack`` accepts (the registry's keys, in registration order)."""


def make_attack(name: str, **params: Any) -> Attack:
    """Build the attack called ``name`` (one of :data:`ATTACKS`) with its parameters.

    Raises
    ------
    ConfigError
        Key ``attack`` for an unknown name or parameter; ``attack.<param>`` for a bad value.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError("attack", f"unknown {name!r}; allowed: {', '.join(ATTACKS)}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError("attack", f"{name}: bad parameters {sorted(params)} ({exc})") from None


# --------------------------------------------------------------------------- helpers


class TriggerRates(NamedTuple):
    """What the backdoor trigger does to one client's test images (:func:`trigger_rates`).

    ``success``: share of triggered images not of class ``target`` classified as ``target``
    (over ``success_examples``), the usual backdoor success rate; its floor is the model's
    ordinary mistakes into the target class (a few percent at 75 % accuracy). ``flips``: share
    of the images classified correctly without the trigger (target class excluded, over
    ``flip_examples``) that the trigger sends to ``target``: what the trigger alone does, with
    no such floor (0.0 with no eligible image, which then carries no weight).
    """

    success: float
    success_examples: int
    flips: float
    flip_examples: int


def trigger_rates(
    predict_fn: Callable[[Images], npt.ArrayLike],
    test_x: Images,
    test_y: npt.ArrayLike,
    target: int,
) -> TriggerRates:
    """Backdoor success and trigger flips of ``predict_fn`` (one clean and one triggered pass).

    Parameters
    ----------
    predict_fn:
        Maps uint8 images ``(N, 28, 28)`` to predicted labels ``(N,)``.
    test_x, test_y:
        Clean test images and labels (not modified; the trigger is stamped on copies).
    target:
        The backdoor's target class.

    Raises
    ------
    ValueError
        If every test image is of the target class (the rates are undefined), or
        ``predict_fn`` returns the wrong number of labels.
    """
    labels = np.asarray(test_y).ravel()
    keep = labels != target
    count = int(keep.sum())
    if count == 0:
        raise ValueError("no test image outside the target class")
    images = np.asarray(test_x)[keep]
    clean = np.asarray(predict_fn(images)).ravel()
    triggered = np.asarray(predict_fn(apply_trigger(images))).ravel()
    if clean.shape[0] != count or triggered.shape[0] != count:
        raise ValueError(f"predict_fn returned {clean.shape[0]} / {triggered.shape[0]} labels for {count}")
    hit = triggered == target
    eligible = clean == labels[keep]
    flips = int(eligible.sum())
    return TriggerRates(float(hit.mean()), count, float(hit[eligible].mean()) if flips else 0.0, flips)


def select_malicious(n_clients: int, frac: float, seed: int) -> frozenset[int]:
    """Which partition indices are malicious: ``frac x n_clients`` of them, rounded half up.

    Deterministic in ``(n_clients, frac, seed)``. Rounding half up (``0.25 x 10 -> 3``)
    rather than Python's half-to-even, so the count does not surprise.

    Raises
    ------
    ConfigError
        Key ``malicious`` when ``frac`` is outside ``[0, 1]``; ``num-clients`` when
        ``n_clients < 1``.
    """
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ConfigError("num-clients", f"must be an int >= 1, got {n_clients!r}")
    if not (0.0 <= frac <= 1.0):
        raise ConfigError("malicious", f"a fraction in [0, 1], got {frac!r}")
    count = _half_up(frac * n_clients)
    chosen = np.random.default_rng(seed).choice(n_clients, size=count, replace=False)
    return frozenset(int(i) for i in chosen)
