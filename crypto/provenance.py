"""Binding an aggregate ciphertext to the seeded uploads it claims to sum.

A trainer's upload is a *seeded* symmetric encryption: its second polynomials are
``c1 = PRG(seed)``, expanded from a public 32-byte seed. The server's weighted sum
``sum_i w_i * ct_i`` therefore has ``c1 = sum_i w_i * PRG(seed_i)`` (mod each prime), which
anyone can recompute from the seeds and weights alone. A key holder that checks it knows
that the ciphertext it is about to decrypt is a weighted sum of exactly those uploads,
except for ``c0``:

* it rules out a fresh public-key encryption passed off as the global (``G := 0``): such a
  ciphertext has ``c1 = pk1 * u + e1``, not a sum of seeded polynomials;
* it rules out a sum over other uploads, or other weights, than the ones listed (so a key
  holder can count how many distinct uploads it is decrypting together);
* it does **not** rule out a trivial encryption added to ``c0`` (``c0 += Delta * m``): that
  leaves ``c1`` unchanged. What remains against it is the model checks a trainer runs on
  what it decrypted (range, loss regression).

Nothing here needs a secret key: the server uses the same function to build provenance.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import numpy as np

from crypto import _seal
from crypto.ckks import (
    _BLOCK_CHUNKS,
    Context,
    EncryptedVector,
    Preset,
    U64Array,
    _addmod_into,
    _mulmod,
    _preset_from_field,
    _preset_id_field,
    _public_of,
)

__all__ = ["SEED_BYTES", "SeedSum", "c1_matches", "matches", "seed_sum", "upload_seed"]

SEED_BYTES: Final = _seal.SEED_BYTES
"""Length of an upload's public seed (32)."""


def upload_seed(enc: EncryptedVector) -> bytes:
    """The public seed of a seeded upload (raises ``ValueError`` for an unseeded ciphertext)."""
    if not isinstance(enc, EncryptedVector) or enc._seed is None:
        raise ValueError("not a seeded upload")
    return enc._seed


class SeedSum:
    """``sum_i w_i * PRG(seed_i)`` for some uploads: the ``c1`` their weighted sum must have.

    Lets a key holder verify a growing global incrementally: keep the sum for the rounds it
    has checked, add only the new round's seeds. :meth:`to_bytes` / :meth:`from_bytes` keep it
    in a node's state (it is public: anyone can compute it from the seeds).
    """

    __slots__ = ("_c1", "count", "fingerprint", "multiplier", "preset")

    def __init__(self, preset: Preset, fingerprint: str, multiplier: int, count: int,
                 c1: U64Array) -> None:
        self.preset, self.fingerprint = preset, fingerprint
        self.multiplier, self.count, self._c1 = multiplier, count, c1

    def to_bytes(self) -> bytes:
        head = struct.pack("<16s8sQQ", _preset_id_field(self.preset),
                           bytes.fromhex(self.fingerprint), self.multiplier, self.count)
        return head + np.ascontiguousarray(self._c1, dtype="<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, ctx: Context, length: int) -> SeedSum | None:
        """Parse what :meth:`to_bytes` wrote for ``ctx``'s key and a ``length``-value vector."""
        public = _public_of(ctx)
        spec = public.preset.spec
        chunks = -(-length // spec.values_per_chunk)
        shape = (chunks, len(spec.data_moduli), spec.poly_degree)
        head = struct.calcsize("<16s8sQQ")
        if len(data) != head + 8 * int(np.prod(shape)):
            return None
        preset_field, fp, multiplier, count = struct.unpack_from("<16s8sQQ", data)
        if _preset_from_field(preset_field) is not public.preset or fp.hex() != public.fingerprint:
            return None
        c1 = np.frombuffer(data, dtype="<u8", offset=head).reshape(shape).astype(np.uint64)
        return cls(public.preset, public.fingerprint, int(multiplier), int(count), c1)


def seed_sum(ctx: Context, length: int, seeds: Sequence[bytes], weights: Sequence[int],
             base: SeedSum | None = None) -> SeedSum | None:
    """``base + sum_i weights[i] * PRG(seeds[i])`` for vectors of ``length`` values.

    Returns None for malformed seeds or weights (wrong length, a repeated seed, a weight
    outside ``[1, 2^31)``); never raises for a peer's values.
    """
    public = _public_of(ctx)
    spec = public.preset.spec
    if len(seeds) != len(weights) or len(set(seeds)) != len(seeds) \
            or any(len(s) != SEED_BYTES for s in seeds):
        return None
    if any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w < 2**31 for w in weights):
        return None
    chunks = -(-length // spec.values_per_chunk)
    shape = (chunks, len(spec.data_moduli), spec.poly_degree)
    acc = base._c1.copy() if base is not None else np.zeros(shape, dtype=np.uint64)
    if acc.shape != shape:
        return None
    moduli = np.array(spec.data_moduli, dtype=np.uint64).reshape(-1, 1)
    for start in range(0, chunks, _BLOCK_CHUNKS):
        stop = min(chunks, start + _BLOCK_CHUNKS)
        for seed, w in zip(seeds, weights, strict=True):
            a = _seal.expand_uniform(seed, spec.data_moduli, spec.poly_degree, start, stop)
            for j, q in enumerate(spec.data_moduli):
                _addmod_into(acc[start:stop, j], _mulmod(a[:, j], w, q), moduli[j])
    multiplier = (base.multiplier if base is not None else 0) + sum(weights)
    count = (base.count if base is not None else 0) + len(seeds)
    return SeedSum(public.preset, public.fingerprint, multiplier, count, acc)


def matches(enc: EncryptedVector, expected: SeedSum | None) -> bool:
    """Whether ``enc`` is an unseeded ciphertext whose ``c1`` and multiplier are ``expected``'s."""
    if expected is None or enc._c1 is None:
        return False
    if enc.preset is not expected.preset or enc.fingerprint != expected.fingerprint:
        return False
    return enc.multiplier == expected.multiplier and bool(np.array_equal(enc._c1, expected._c1))


def c1_matches(
    ctx: Context, enc: EncryptedVector, seeds: Sequence[bytes], weights: Sequence[int]
) -> bool:
    """Whether ``enc``'s second polynomials equal ``sum_i weights[i] * PRG(seeds[i])``.

    Parameters
    ----------
    ctx:
        Either context of the key ``enc`` must belong to.
    enc:
        An *unseeded* ciphertext (an aggregate); a seeded one never matches.
    seeds:
        32-byte public seeds, pairwise distinct (a repeated seed never matches: it would let
        one upload count twice).
    weights:
        One integer in ``[1, 2^31)`` per seed.

    Returns
    -------
    bool
        False for any mismatch, including a wrong key, a wrong multiplier
        (``enc.multiplier != sum(weights)``) or malformed seeds/weights; never raises for
        a peer's values.
    """
    public = _public_of(ctx)
    if enc.preset is not public.preset or enc.fingerprint != public.fingerprint or not seeds:
        return False
    return matches(enc, seed_sum(ctx, enc.length, seeds, weights))
