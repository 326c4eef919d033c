"""Encrypted screening by coefficient-domain projections: sound, linear, and no oracle.

What is computed
----------------
A seeded upload ``i`` is, per chunk, an RLWE ciphertext ``(c0_i, a_i)`` with
``a_i = PRG(seed_i)``; it decrypts to the integer coefficient vector
``dec_i = c0_i + a_i * s  (mod q)`` = ``m_i + e_i`` (the encoded update plus encryption
noise), over **all** ``D = chunks * N`` coefficients, padding included. Decryption is
linear, so for a public vector ``z``::

    <z, dec_i> = <z, c0_i> + <z, a_i * s>   (mod q)

* The **server** computes ``<z, c0_i>`` itself (:func:`server_projections`): it has ``c0``.
* A **key holder** (a trainer) computes ``<z, a_i * s> + f_i`` (:func:`holder_projections`)
  from the seeds alone -- it never sees ``c0``, so it learns nothing about any update.
  ``f_i`` is a flooding term from a PRF keyed by the secret key (see below).
* :func:`combine` adds both mod ``q`` and centres: ``v_ik = <z_k, m_i + e_i> + f_ik``.

``z_k`` (``k < r``) has i.i.d. entries ``-1 / 0 / +1`` with probabilities 1/4, 1/2, 1/4,
expanded from ``z_seed = H(round, r, length, nonce)`` (:class:`Challenge`). The server draws
the round's nonce before the round starts and sends only its :func:`commitment` with the
train message; each trainer returns, with its upload, a :func:`upload_tag` -- a MAC under a
key derived from the shared secret key, which the server does not have -- binding its seed
to the round, the commitment it received and its length. The nonce is revealed in the screening
request, after every upload is in: an uploader fixed its vector before it could know ``z``
(the commitment hides the nonce), and a key holder projects a seed only with the one nonce
whose commitment that seed's uploader was shown. So every answer about an upload, from any
key holder, uses the same ``z`` (and the same flood): asking several holders, or asking with
other nonces, subsets, lengths or repetition counts, tells the server nothing more than the
``r`` values of one answer.

What it certifies (docs/soundness.md has the argument; :func:`screen_parameters` derives
every number from it): a client passes only if ``|v_ik| <= t`` for every ``k``. An update
with some coefficient ``|dec| > 2t`` (centred mod q: wraps, mass in padding, a half-modulus
shift, garbage) passes with probability ``<= 2^-r``; one whose norm exceeds the certified
gap over the honest bound passes with probability ``<= 2^-soundness_bits``. The same
projections are a random-projection sketch: :func:`sketch_statistics` estimates squared
norms and pair distances (``<m_i, m_j> = (2 Delta^2 / N) <x_i, x_j>``).

What a key holder checks before it answers (``clients.encrypted.handle_screen`` keeps the
state): one screening per round it trained in, rounds increasing, at most as many seeds as
the round sampled, every seed distinct and never answered before, ``r`` equal to
:func:`repetitions` and the length equal to its own upload's, the nonce opening the
commitment it was sent this round, and every seed's tag (:func:`bound_seeds`). It
recomputes ``z`` from the nonce, so the server cannot choose ``z``, and ``a_i =
PRG(seed_i)`` is pseudo-random, so the server cannot choose the polynomial multiplied by
``s``. Each answer is then an LWE sample with flooding noise
(pseudo-random coefficients, error uniform in ``[-F, F]``), never an exact equation in
``s``; repeated queries are refused, so the noise cannot be averaged away.

Nothing here logs; no exception contains key material.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from threadpoolctl import threadpool_limits

from crypto import _seal
from crypto.ckks import Context, EncryptedVector, Preset, SecretContext, _public_of, _ring
from federation.errors import KeyMismatch

__all__ = [
    "FLOOD_BITS",
    "MAX_REPETITIONS",
    "NONCE_BYTES",
    "SOUNDNESS_BITS",
    "TAG_BYTES",
    "Challenge",
    "ScreenParameters",
    "SketchStatistics",
    "bound_seeds",
    "check_projections",
    "combine",
    "commitment",
    "directions",
    "holder_projections",
    "new_challenge",
    "reconcile",
    "repetitions",
    "screen_parameters",
    "server_projections",
    "sketch_statistics",
    "upload_tag",
]

NONCE_BYTES: Final = 32
"""Length of the server's fresh per-round nonce."""

TAG_BYTES: Final = 32
"""Length of an upload's tag (HMAC-SHA256, :func:`upload_tag`)."""

SOUNDNESS_BITS: Final = 40
"""An out-of-bound update passes the screen with probability ``<= 2^-40`` (the issue's target);
:func:`repetitions` derives ``r`` from it, and key holders refuse any other ``r``."""

FLOOD_BITS: Final = 10
"""Flooding amplitude ``F = 2^10`` (coefficient units, scale ``2^28``): each key-holder
answer carries a PRF-derived integer uniform in ``[-F, F]``. Why 10: it is ~190x SEAL's
own noise deviation (3.2), which makes each answer an LWE sample at least as hard as the
uploads themselves, while it changes a squared-norm estimate by ``F^2 N / (3 Delta^2)``
= 2e-8 (absolute, squared parameter units) and a projection of an update of norm 0.01
by 0.04 %."""

MAX_REPETITIONS: Final = 512
"""Largest ``r`` a key holder accepts (bounds its work per request)."""

THETA: Final = 0.25
"""Paley-Zygmund level: a repetition rejects an over-long update when ``p^2`` exceeds
``THETA * E[p^2]``, which happens with probability ``>= (1 - THETA)^2 / 3``. 1/4 balances
the repetitions needed (r = 137 for 2^-40) against the certified norm gap (~23x)."""

_Z_DOMAIN: Final = b"fedguard.screen.z.v2\x00"
_COMMIT_DOMAIN: Final = b"fedguard.screen.commit.v1\x00"
_TAG_DOMAIN: Final = b"fedguard.screen.tag.v1\x00"
_FLOOD_INFO: Final = b"fedguard.screen.flood.v1"
_TAG_INFO: Final = b"fedguard.screen.tag-key.v1"
_LIMB_BITS: Final = 14
_LIMBS: Final = 4  # balanced digits: 4 of 14 bits cover |y| < 2^55 (centred mod q), |digit| <= 2^13
_SUB: Final = 2048  # terms per float32 product: 2^11 * 2^13 = 2^24, float32's exact-integer limit
_BLOCK: Final = 8  # chunks per block of z bytes (one AES-CTR call; a whole number of _SUB)
_THREADED_MIN_UPLOADS: Final = 16
"""Below this many uploads a projection runs its matrix products on one BLAS thread.

Measured (1.2 M values, 2 cores, ``OPENBLAS_NUM_THREADS`` 1 vs 2): with 3 and 6 uploads a
second thread bought no wall time and cost +75-90 % CPU (OpenBLAS's idle thread spins
between the per-block products); with 10 uploads 13 % less wall time for +70 % CPU, with 20
uploads 37 % for +38 %. Where the trainers share the machine (a simulation, a holder that
also trains) the spinning thread only takes CPU from the others."""
# SEAL 4's default noise sampler (SEAL_USE_GAUSSIAN_NOISE off, as in TenSEAL's build) is a
# centred binomial, 21 random bits minus 21: |e| <= 21, variance 10.5 (measured: 10.53 over
# 1.2 M fresh coefficients), not a normal clipped at 6 sigma = 19.2.
_NOISE_MAX: Final = 21
_ROUNDING: Final = 0.5  # encoding rounds each coefficient to the nearest integer
_A = TypeVar("_A", bound=Hashable)
_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]


# -- parameters from the soundness argument ------------------------------------------------


@dataclass(frozen=True)
class ScreenParameters:
    """Every number of the projection check, derived in :func:`screen_parameters`.

    Units: ``threshold``, ``honest_coefficient_norm``, ``flood`` and
    ``certified_coefficient_bound`` are integer coefficient units (values times
    ``Delta = 2^28``, after the canonical embedding); ``norm_bound`` and
    ``certified_norm`` are parameter units (the update's L2 norm).
    """

    preset: Preset
    length: int
    norm_bound: float
    repetitions: int
    threshold: int
    honest_coefficient_norm: float
    flood: int
    certified_coefficient_bound: int
    certified_norm: float
    soundness_bits: int
    false_reject_bits: int

    @property
    def chunks(self) -> int:
        return -(-self.length // self.preset.spec.values_per_chunk)

    @property
    def dimension(self) -> int:
        """Coefficients projected per client (every chunk, padding included)."""
        return self.chunks * self.preset.spec.poly_degree

    @property
    def sketch_relative_error(self) -> float:
        """Standard deviation of a squared-norm estimate, relative: ``sqrt(2 / r)``."""
        return math.sqrt(2.0 / self.repetitions)


def repetitions(soundness_bits: int = SOUNDNESS_BITS) -> int:
    """``r``, the projections per upload that give ``2^-soundness_bits`` soundness.

    The 3-point lemma needs ``2^-r <= 2^-s``; for a long unwrapped vector the error splits in
    two halves, Paley-Zygmund ``(1 - (1 - THETA)^2 / 3)^r <= 2^-(s+1)`` and the event that
    some projection is so large that it wraps (Hoeffding, ``2^-(s+1)``). 137 for ``s = 40``.

    Raises
    ------
    ValueError
        ``soundness_bits`` below 1, or needing more than :data:`MAX_REPETITIONS`.
    """
    if soundness_bits < 1:
        raise ValueError("soundness_bits must be positive")
    pz_pass = 1.0 - (1.0 - THETA) ** 2 / 3.0
    r = max(soundness_bits, math.ceil((soundness_bits + 1) / -math.log2(pz_pass)))
    if r > MAX_REPETITIONS:
        raise ValueError(f"soundness_bits={soundness_bits} needs {r} > {MAX_REPETITIONS} repetitions")
    return r


def screen_parameters(
    preset: Preset,
    length: int,
    norm_bound: float,
    *,
    soundness_bits: int = SOUNDNESS_BITS,
    false_reject_bits: int = 40,
    max_weight: int = 4096,
) -> ScreenParameters:
    """Derive repetitions, threshold and certified bounds from the written argument.

    Parameters
    ----------
    preset:
        CKKS preset of the uploads (``AGGREGATION``: one prime, complex packing).
    length:
        Values per update.
    norm_bound:
        Public bound ``B`` on an honest update's L2 norm (parameter units).
    soundness_bits:
        ``s``: an out-of-bound update passes with probability ``<= 2^-s``.
    false_reject_bits:
        An honest update (``||x|| <= B``) is rejected with probability ``<= 2^-this``.
    max_weight:
        Largest total integer weight of an aggregate (``WEIGHT_DENOMINATOR``).

    Raises
    ------
    ValueError
        A bound the modulus cannot certify (the message names ``norm_bound``).
    """
    spec = preset.spec
    if len(spec.data_moduli) != 1:
        raise ValueError("projection screening needs a single-prime preset (AGGREGATION)")
    r = repetitions(soundness_bits)
    if not (math.isfinite(norm_bound) and norm_bound > 0):
        raise ValueError(f"norm_bound must be a positive number, got {norm_bound!r}")
    if length < 1 or soundness_bits < 1 or false_reject_bits < 1:
        raise ValueError("length and bit targets must be positive")
    q = spec.data_moduli[0]
    n_deg = spec.poly_degree
    chunks = -(-length // spec.values_per_chunk)
    dim = chunks * n_deg
    # Honest coefficient norm: Parseval for the canonical embedding, ||m||^2 = 2 Delta^2
    # ||x||^2 / N, plus noise and rounding (each coefficient at most 6 sigma + 1/2).
    honest = spec.scale * math.sqrt(2.0 / n_deg) * norm_bound + (_NOISE_MAX + _ROUNDING) * math.sqrt(dim)
    # Hoeffding per projection, union bound over r: P[|<z,m>| > alpha ||m||] <= 2^-frb / r.
    alpha = math.sqrt(2.0 * (false_reject_bits * math.log(2.0) + math.log(2.0 * r)))
    flood = 2**FLOOD_BITS
    t = math.ceil(alpha * honest) + flood
    coeff_bound = 2 * t
    # Modulus requirements: the 3-point lemma needs q > 4t; for the norm argument a vector
    # with every coefficient <= 2t (so ||dec|| <= 2t sqrt(D)) must not wrap its projections:
    # by Hoeffding |<z, dec>| <= alpha_w * 2t sqrt(D) except with probability 2^-(s+1), and
    # that plus the flood must stay below q / 2; the aggregate of max_weight passing updates
    # must not wrap either (max_weight * 2t < q / 2).
    alpha_w = math.sqrt(2.0 * ((soundness_bits + 1) * math.log(2.0) + math.log(2.0 * r)))
    no_wrap = 2 * (math.ceil(alpha_w * 2 * t * math.sqrt(dim)) + flood)
    need = max(4 * t, no_wrap, 4 * t * max_weight)
    if need >= q:
        limit = norm_bound * q / need
        raise ValueError(
            f"norm_bound={norm_bound:g} is too large for the modulus with {length} values "
            f"(projections could wrap); it must stay below {limit:.3g}"
        )
    certified_coeff_norm = math.sqrt(2.0 / THETA) * (t + flood)
    certified = certified_coeff_norm * math.sqrt(n_deg / 2.0) / spec.scale
    return ScreenParameters(
        preset=preset,
        length=length,
        norm_bound=float(norm_bound),
        repetitions=r,
        threshold=t,
        honest_coefficient_norm=honest,
        flood=flood,
        certified_coefficient_bound=coeff_bound,
        certified_norm=certified,
        soundness_bits=soundness_bits,
        false_reject_bits=false_reject_bits,
    )


# -- the challenge -------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One round's screening challenge: what the server sends to the key holders.

    ``z_seed`` hashes the round, the repetition count, the vector length and the nonce --
    not the seeds: one round's ``z`` is the same for every subset of its uploads, so no
    choice of seeds gives the server a second ``z`` for an upload. Which nonce a seed may be
    projected with is fixed by the seed's tag (:func:`upload_tag`, checked by key holders).
    """

    round: int
    repetitions: int
    length: int
    nonce: bytes
    seeds: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 1:
            raise ValueError("round must be a positive int")
        if not 1 <= self.repetitions <= MAX_REPETITIONS:
            raise ValueError(f"repetitions must lie in [1, {MAX_REPETITIONS}]")
        if self.length < 1:
            raise ValueError("length must be positive")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        seeds = tuple(self.seeds)
        if not seeds or any(not isinstance(s, bytes) or len(s) != _seal.SEED_BYTES for s in seeds):
            raise ValueError(f"seeds must be {_seal.SEED_BYTES}-byte strings")
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        object.__setattr__(self, "seeds", seeds)

    @property
    def z_seed(self) -> bytes:
        h = hashlib.sha256(_Z_DOMAIN)
        h.update(self.round.to_bytes(8, "big") + self.repetitions.to_bytes(4, "big"))
        h.update(self.length.to_bytes(8, "big") + self.nonce)
        return h.digest()

    @property
    def commitment(self) -> bytes:
        """The commitment this challenge's nonce opens (:func:`commitment`)."""
        return commitment(self.round, self.nonce)


def commitment(round_: int, nonce: bytes) -> bytes:
    """``H(round, nonce)``: sent with the round's train messages, opened by the screening request.

    Hiding (a 256-bit random nonce under SHA-256): an uploader learns nothing about ``z``
    from it; binding: the server cannot open it to a second nonce.
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    return hashlib.sha256(_COMMIT_DOMAIN + round_.to_bytes(8, "big") + nonce).digest()


def _tag_key(secret: SecretContext) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_TAG_INFO)
    return hkdf.derive(secret._sk_packed)


def _tag(key: bytes, round_: int, commit: bytes, length: int, seed: bytes) -> bytes:
    msg = _TAG_DOMAIN + round_.to_bytes(8, "big") + commit + length.to_bytes(8, "big") + seed
    return hmac.new(key, msg, hashlib.sha256).digest()


def upload_tag(secret: SecretContext, round_: int, commit: bytes, length: int, seed: bytes) -> bytes:
    """The uploader's tag: ``HMAC(K, round, commitment, length, seed)``, ``K`` derived from the key.

    ``seed`` is the upload's seed (:func:`crypto.provenance.upload_seed`) and ``length`` its
    number of values. Every key holder can check the tag and the server cannot forge it; it
    pins the seed to the one commitment (hence nonce) and the one length its uploader used,
    hence to one ``z`` (a holder told another length by the server finds the tag unbound).

    Raises
    ------
    TypeError
        ``secret`` is not a :class:`~crypto.ckks.SecretContext` (a public context cannot tag).
    ValueError
        A seed or commitment of the wrong length.
    """
    if not isinstance(secret, SecretContext):
        raise TypeError("an upload tag needs a SecretContext")
    if len(seed) != _seal.SEED_BYTES or len(commit) != hashlib.sha256().digest_size:
        raise ValueError("a seed and a commitment are 32 bytes each")
    if length < 1:
        raise ValueError("length must be positive")
    return _tag(_tag_key(secret), round_, commit, length, seed)


def bound_seeds(secret: SecretContext, challenge: Challenge, tags: Sequence[bytes]) -> list[bool]:
    """Per seed of ``challenge``: is its tag the one its uploader made for this nonce and length?

    A seed whose tag fails was either tagged for another commitment (the server showed its
    uploader another nonce) or not by a key holder: it is never projected.
    """
    if len(tags) != len(challenge.seeds):
        raise ValueError("one tag per seed")
    key = _tag_key(secret)
    commit = challenge.commitment
    return [isinstance(t, bytes) and hmac.compare_digest(
                _tag(key, challenge.round, commit, challenge.length, s), t)
            for s, t in zip(challenge.seeds, tags, strict=True)]


def new_challenge(
    round_: int,
    vectors: Sequence[EncryptedVector],
    repetitions: int,
    *,
    nonce: bytes | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> Challenge:
    """The round's challenge for ``vectors``: the committed ``nonce``, or a fresh one from ``rng``.

    Raises
    ------
    ValueError
        A vector is not seeded, lengths differ, or two uploads share a seed.
    """
    if not vectors:
        raise ValueError("need at least one vector")
    seeds = []
    for v in vectors:
        if v._seed is None:
            raise ValueError("projection screening needs seeded uploads")
        seeds.append(v._seed)
    if len({v.length for v in vectors}) != 1:
        raise ValueError("vectors have different lengths")
    return Challenge(round_, repetitions, vectors[0].length,
                     rng(NONCE_BYTES) if nonce is None else nonce, tuple(seeds))


_TERNARY: Final = np.array(
    [[((b >> (2 * j)) & 1) - ((b >> (2 * j + 1)) & 1) for j in range(4)] for b in range(256)],
    dtype=np.float64,
).view(np.dtype((np.void, 32))).reshape(256)  # byte -> its four entries (z = low - high bit)
_TERNARY32: Final = _TERNARY.view(np.float64).reshape(256, 4).astype(np.float32).view(
    np.dtype((np.void, 16))).reshape(256)  # the same table as four float32 (one take, 16 bytes)


def _z_block(z_seed: bytes, start: int, stop: int, degree: int, r: int) -> _F64:
    """``z`` for chunks ``start..stop-1`` (one block) as ``(r, (stop-start) * N)`` float64.

    Entries are in {-1, 0, 1}, two bits each (``z = b0 - b1``: probabilities 1/4, 1/2,
    1/4). Blocks are :data:`_BLOCK` chunks (the last may be shorter) and ``start`` must be
    a multiple of it: block ``b`` owns the AES-256-CTR(key=z_seed) bytes from
    ``b * _BLOCK * N * r / 4`` on, read repetition-major, so one block is one contiguous
    ``(r, block * N)`` matrix.
    """
    out: _F64 = np.take(_TERNARY, _z_bytes(z_seed, start, stop, degree, r)).view(
        np.float64).reshape(r, (stop - start) * degree)
    return out


def _z_bytes(z_seed: bytes, start: int, stop: int, degree: int, r: int) -> npt.NDArray[np.uint8]:
    """The AES-CTR bytes of one ``z`` block (four entries per byte; see :func:`_z_block`)."""
    if start % _BLOCK:
        raise ValueError("z blocks start at multiples of the block size")
    per_chunk = degree * r // 4  # bytes: 2 bits per entry
    first_block, nbytes = start * per_chunk // 16, (stop - start) * per_chunk
    ctr = Cipher(algorithms.AES(z_seed), modes.CTR(first_block.to_bytes(16, "big")))
    return np.frombuffer(ctr.encryptor().update(bytes(nbytes)), dtype=np.uint8)


def directions(challenge: Challenge) -> _F64:
    """The challenge's ``z``: ``(r, D)`` float64 in {-1, 0, 1}, ``D = chunks * N``.

    Row ``k`` is repetition ``k`` over every coefficient of every chunk (padding included).
    Server and key holders derive it identically from ``z_seed``, block by block.
    """
    spec = Preset.AGGREGATION.spec
    chunks = -(-challenge.length // spec.values_per_chunk)
    parts = [_z_block(challenge.z_seed, b, min(chunks, b + _BLOCK), spec.poly_degree,
                      challenge.repetitions) for b in range(0, chunks, _BLOCK)]
    return np.concatenate(parts, axis=1)


def _centre(y: _U64, q: int) -> _I64:
    signed = y.view(np.int64)
    out: _I64 = np.where(y > np.uint64(q // 2), signed - np.int64(q), signed)
    return out


def _project(
    polys_of: Callable[[int, int], _U64],
    count: int,
    params_chunks: int,
    z_seed: bytes,
    degree: int,
    r: int,
    q: int,
) -> list[list[int]]:
    """``<z_k, y_i> mod q`` for ``y_i`` given block by block as ``(count, block, N)`` coefficients.

    Exact in float32: each centred coefficient (``|y| < 2^55``) is written in
    :data:`_LIMBS` balanced digits of :data:`_LIMB_BITS` bits (``y = sum d_j 2^(14 j)``,
    ``|d_j| <= 2^13``), and each product with ``z`` in {-1, 0, 1} spans :data:`_SUB` terms,
    so every partial sum stays within ``2^11 * 2^13 = 2^24``, where float32 represents every
    integer -- whatever order BLAS adds in; sums are carried on in int64. A product's slice of
    ``z`` (``r x _SUB`` float32, ~1 MB) is expanded from its bytes just before it is used, so
    it is read from cache, not memory.
    """
    acc = np.zeros((r, _LIMBS * count), dtype=np.int64)
    half = 1 << (_LIMB_BITS - 1)
    mask = np.int64((1 << _LIMB_BITS) - 1)
    # offset: a digit 2^13 in every place; y + offset is in [0, 2^57), its unsigned digits
    # minus 2^13 are the balanced ones (the top digit is not masked, so it may reach +2^13)
    offset = np.int64(sum(half << (_LIMB_BITS * j) for j in range(_LIMBS)))
    with threadpool_limits(1 if count < _THREADED_MIN_UPLOADS else None, user_api="blas"):
        for start in range(0, params_chunks, _BLOCK):
            stop = min(params_chunks, start + _BLOCK)
            zb = _z_bytes(z_seed, start, stop, degree, r).reshape(r, -1)  # (r, B * N / 4)
            u = _centre(polys_of(start, stop), q).reshape(count, -1) + offset  # (count, B * N)
            digits = np.concatenate([(u >> (_LIMB_BITS * j)) & mask for j in range(_LIMBS - 1)]
                                    + [u >> (_LIMB_BITS * (_LIMBS - 1))])
            digits = (digits - half).astype(np.float32)  # (limbs * count, B * N), |d| <= 2^13
            for c in range(0, digits.shape[1], _SUB):
                z = np.take(_TERNARY32, zb[:, c // 4:(c + _SUB) // 4]).view(np.float32).reshape(r, -1)
                acc += (z @ digits[:, c:c + _SUB].T).astype(np.int64)  # (r, limbs * count), exact
    per_limb = acc.T.reshape(_LIMBS, count, r)
    return [[sum(int(per_limb[j, i, k]) << (_LIMB_BITS * j) for j in range(_LIMBS)) % q
             for k in range(r)] for i in range(count)]


def server_projections(
    ctx: Context, vectors: Sequence[EncryptedVector], challenge: Challenge
) -> list[list[int]]:
    """Server side: ``<z_k, c0_i> mod q`` for every upload ``i`` and repetition ``k``.

    Cost ``O(n * D * (log N + r))``: an inverse NTT of every ``c0`` chunk (by SEAL), then
    exact float32 products of balanced 14-bit digits against ternary ``z`` (:func:`_project`).

    Raises
    ------
    KeyMismatch
        A vector belongs to another key or preset.
    ValueError
        The vectors do not match the challenge (count, seeds, length).
    """
    public = _public_of(ctx)
    spec = public.preset.spec
    vectors = list(vectors)
    for v in vectors:
        if v.preset is not public.preset or v.fingerprint != public.fingerprint:
            raise KeyMismatch("a vector was made under another key or preset")
    if tuple(v._seed for v in vectors) != challenge.seeds or any(
        v.length != challenge.length for v in vectors
    ):
        raise ValueError("the vectors are not the challenge's uploads")
    if len(spec.data_moduli) != 1:
        raise KeyMismatch("projection screening needs a single-prime preset")
    q = spec.data_moduli[0]
    chunks = vectors[0].chunk_count

    ring = _ring(public.preset)

    def c0_coefficients(start: int, stop: int) -> _U64:
        block = np.stack([v._c0[start:stop, 0] for v in vectors])
        return ring.ntt_inverse(block.reshape(-1, spec.poly_degree)).reshape(block.shape)

    return _project(c0_coefficients, len(vectors), chunks, challenge.z_seed, spec.poly_degree,
                     challenge.repetitions, q)


def _flood_key(secret: SecretContext) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_FLOOD_INFO)
    return hkdf.derive(secret._sk_packed)


def _flood(key: bytes, z_seed: bytes, seed: bytes, r: int, bound: int) -> list[int]:
    """``r`` integers uniform in ``[-bound, bound]`` from PRF(key, z_seed, seed)."""
    row_key = hmac.new(key, z_seed + seed, hashlib.sha256).digest()
    stream = Cipher(algorithms.AES(row_key), modes.CTR(bytes(16))).encryptor()
    raw = np.frombuffer(stream.update(bytes(8 * r)), dtype="<u8")
    width = 2 * bound + 1  # modulo bias < width / 2^64: negligible
    return [int(w) % width - bound for w in raw]


def holder_projections(secret: SecretContext, challenge: Challenge) -> list[list[int]]:
    """Key-holder side: ``<z_k, a_i * s> + f_ik mod q`` from the seeds alone.

    Deterministic: honest holders (same secret key) agree bit for bit. The caller
    (``clients.encrypted.handle_screen``) checks the challenge against its own state first.

    Raises
    ------
    TypeError
        If ``secret`` is not a :class:`~crypto.ckks.SecretContext`.
    """
    if not isinstance(secret, SecretContext):
        raise TypeError("key-holder projections need a SecretContext")
    spec = secret.preset.spec
    if len(spec.data_moduli) != 1:
        raise KeyMismatch("projection screening needs a single-prime preset")
    q = spec.data_moduli[0]
    s_ntt = secret._keys.to_array()[0]
    chunks = -(-challenge.length // spec.values_per_chunk)

    ring = _ring(secret.preset)

    def as_coefficients(start: int, stop: int) -> _U64:
        a = np.stack([_seal.expand_uniform(seed, spec.data_moduli, spec.poly_degree, start, stop)[:, 0]
                      for seed in challenge.seeds])
        a_s = _seal.pointwise_mulmod(a, np.broadcast_to(s_ntt, a.shape), q)
        return ring.ntt_inverse(a_s.reshape(-1, spec.poly_degree)).reshape(a.shape)

    r = challenge.repetitions
    raw = _project(as_coefficients, len(challenge.seeds), chunks, challenge.z_seed,
                   spec.poly_degree, r, q)
    key = _flood_key(secret)
    zs = challenge.z_seed
    return [[(p + f) % q for p, f in zip(row, _flood(key, zs, seed, r, 2**FLOOD_BITS), strict=True)]
            for row, seed in zip(raw, challenge.seeds, strict=True)]


def combine(preset: Preset, server: Sequence[Sequence[int]], holder: Sequence[Sequence[int]]) -> _I64:
    """``v_ik = centred(<z_k, c0_i> + <z_k, a_i s> + f_ik mod q)``: ``(n, r)`` int64.

    Raises
    ------
    ValueError
        Shapes differ or a holder value is not a residue in ``[0, q)``.
    """
    q = preset.spec.data_moduli[0]
    if len(server) != len(holder) or any(len(a) != len(b) for a, b in zip(server, holder, strict=True)):
        raise ValueError("server and key-holder projections differ in shape")
    out = np.empty((len(server), len(server[0]) if server else 0), dtype=np.int64)
    for i, (srow, hrow) in enumerate(zip(server, holder, strict=True)):
        for k, (a, b) in enumerate(zip(srow, hrow, strict=True)):
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < q:
                raise ValueError("a key-holder projection is not a residue mod q")
            v = (a + b) % q
            out[i, k] = v - q if v > q // 2 else v
    return out


def check_projections(projections: npt.ArrayLike, params: ScreenParameters) -> list[str | None]:
    """Per client: ``None`` if every ``|v_ik| <= t``, else the rejection reason.

    ``"statistic:wraparound"`` when some ``|v_ik| > q/4`` (no honest or merely long update
    gets there: it means coefficients of the order of the modulus), otherwise
    ``"statistic:out-of-bound"``.
    """
    v = np.asarray(projections, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != params.repetitions:
        raise ValueError(f"expected (clients, {params.repetitions}) projections, got {v.shape}")
    q = params.preset.spec.data_moduli[0]
    out: list[str | None] = []
    for row in np.abs(v):
        peak = int(row.max()) if row.size else 0
        if peak <= params.threshold:
            out.append(None)
        elif peak > q // 4:
            out.append("statistic:wraparound")
        else:
            out.append("statistic:out-of-bound")
    return out


@dataclass(frozen=True)
class SketchStatistics:
    """Norms and distances estimated from the projections (parameter units squared).

    ``sq_norms[i] = N / (Delta^2 r) * sum_k v_ik^2`` estimates ``||x_i||^2`` and
    ``sq_dists[i, j]`` likewise ``||x_i - x_j||^2``, each with relative standard deviation
    about ``sqrt(2 / r)``; they are the Gram matrix of real vectors, so never inconsistent.
    """

    sq_norms: _F64
    sq_dists: _F64


def sketch_statistics(projections: npt.ArrayLike, params: ScreenParameters) -> SketchStatistics:
    """JL estimates of squared norms and pair distances from ``(n, r)`` projections."""
    v = np.asarray(projections, dtype=np.float64)
    spec = params.preset.spec
    unit = spec.poly_degree / (spec.scale**2 * v.shape[1])
    sq = unit * np.einsum("ik,ik->i", v, v)
    diff = v[:, None, :] - v[None, :, :]
    dists = unit * np.einsum("ijk,ijk->ij", diff, diff)
    np.fill_diagonal(dists, 0.0)
    return SketchStatistics(sq, dists)


def reconcile(answers: Mapping[str, _A], needed: int) -> tuple[_A | None, frozenset[str]]:
    """The key holders' answer given identically by at least ``needed`` of them, and by more
    holders than any other answer; who differs.

    Honest holders compute the same integers (the flooding is a PRF of the shared secret
    key), so agreement is exact equality of the whole answer. With ``needed = f + 1`` and at
    most ``f`` lying trainers, an answer given ``needed`` times was given by an honest holder
    at least once, so it is the true one -- whatever the liars agreed on among themselves.
    Returns ``(None, every holder)`` when no answer qualifies (ask more holders).

    Raises
    ------
    ValueError
        No answers, or ``needed < 1``.
    """
    if not answers:
        raise ValueError("no answers")
    if needed < 1:
        raise ValueError("needed must be positive")
    ranked = Counter(answers.values()).most_common(2)
    best, votes = ranked[0]
    if votes < needed or (len(ranked) > 1 and ranked[1][1] == votes):
        return None, frozenset(answers)
    return best, frozenset(h for h, v in answers.items() if v != best)
