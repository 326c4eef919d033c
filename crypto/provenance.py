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

from collections.abc import Sequence
from typing import Final

import numpy as np

from crypto import _seal
from crypto.ckks import (
    _BLOCK_CHUNKS,
    Context,
    EncryptedVector,
    _addmod_into,
    _check_same_key,
    _mulmod,
    _public_of,
)

__all__ = ["SEED_BYTES", "c1_matches", "upload_seed"]

SEED_BYTES: Final = _seal.SEED_BYTES
"""Length of an upload's public seed (32)."""


def upload_seed(enc: EncryptedVector) -> bytes:
    """The public seed of a seeded upload (raises ``ValueError`` for an unseeded ciphertext)."""
    if not isinstance(enc, EncryptedVector) or enc._seed is None:
        raise ValueError("not a seeded upload")
    return enc._seed


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
    try:
        _check_same_key(public, enc.preset, enc.fingerprint)
    except Exception:  # noqa: BLE001 - a mismatch is a "no", whatever its kind
        return False
    if enc._c1 is None or not seeds or len(seeds) != len(weights):
        return False
    if len(set(seeds)) != len(seeds) or any(len(s) != SEED_BYTES for s in seeds):
        return False
    if any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w < 2**31 for w in weights):
        return False
    if enc.multiplier != sum(weights):
        return False
    spec = enc.preset.spec
    moduli = np.array(spec.data_moduli, dtype=np.uint64).reshape(-1, 1)
    for start in range(0, enc.chunk_count, _BLOCK_CHUNKS):
        stop = min(enc.chunk_count, start + _BLOCK_CHUNKS)
        acc = np.zeros((stop - start, len(spec.data_moduli), spec.poly_degree), dtype=np.uint64)
        for seed, w in zip(seeds, weights, strict=True):
            a = _seal.expand_uniform(seed, spec.data_moduli, spec.poly_degree, start, stop)
            for j, q in enumerate(spec.data_moduli):
                _addmod_into(acc[:, j], _mulmod(a[:, j], w, q), moduli[j])
        if not np.array_equal(acc, enc._c1[start:stop]):
            return False
    return True
