"""Size and speed of the CKKS recipes (``fedguard bench crypto``).

Benchmarks are a command, not tests: :func:`bench_crypto` measures and returns a
JSON-able dict; progress goes to stderr. Times are reported both as wall-clock and as
CPU seconds of this process (SEAL is single-threaded, so CPU time is the honest "one
core" figure on a shared machine). Memory stays at a few hundred MB per 10M values:
aggregation re-uses one ciphertext ``aggregate_count`` times (same work per vector).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from crypto import ckks, stats, wire
from crypto.ckks import Preset, PublicContext, SecretContext

__all__ = ["bench_crypto"]

_FLOAT32_BYTES = 4
T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``fn``; return its result, wall seconds and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _rate(values: int, seconds: float) -> float:
    return values / seconds if seconds > 0 else math.inf


def _say(message: str) -> None:
    print(f"[bench crypto] {message}", file=sys.stderr, flush=True)


def _update(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    """Values shaped like fedguard updates: |x| in [1e-3, 1e-1], random signs."""
    values = rng.uniform(1e-3, 1e-1, n) * rng.choice([-1.0, 1.0], n)
    out: npt.NDArray[np.float32] = values.astype(np.float32)
    return out


def _sizes(preset: Preset, n: int) -> dict[str, float]:
    seeded = wire.encoded_size(preset, n, seeded=True)
    full = wire.encoded_size(preset, n, seeded=False)
    return {
        "upload_bytes": seeded,
        "upload_bytes_per_value": seeded / n,
        "upload_vs_float32": seeded / (n * _FLOAT32_BYTES),
        "aggregate_bytes": full,
        "aggregate_bytes_per_value": full / n,
        "aggregate_vs_float32": full / (n * _FLOAT32_BYTES),
    }


def _bench_size(
    secret: SecretContext, server: PublicContext, n: int, aggregate_count: int, seed: int
) -> dict[str, Any]:
    preset = secret.preset
    x = _update(np.random.default_rng(seed), n)
    _say(f"{preset.id}: {n:,} values: encrypt (trainer, seeded)")
    enc, wall, cpu = _timed(lambda: ckks.encrypt(secret, x))
    row: dict[str, Any] = {"values": n, "chunks": enc.chunk_count, **_sizes(preset, n)}
    row["encrypt"] = {"wall_s": wall, "cpu_s": cpu, "values_per_s": _rate(n, cpu)}

    blob, wall, cpu = _timed(lambda: wire.encode(enc))
    row["wire_encode"] = {"wall_s": wall, "cpu_s": cpu, "bytes": len(blob)}
    limit = wire.encoded_size(preset, n, seeded=False)
    upload, wall, cpu = _timed(
        lambda: wire.decode(blob, server, expected_length=n, max_bytes=limit)
    )
    row["wire_decode"] = {"wall_s": wall, "cpu_s": cpu, "values_per_s": _rate(n, cpu)}

    _say(f"{preset.id}: {n:,} values: weighted sum of {aggregate_count} (server)")
    weights = list(range(1, aggregate_count + 1))
    many = [upload] * aggregate_count
    total, wall, cpu = _timed(lambda: ckks.weighted_sum(server, many, weights))
    row["aggregate"] = {
        "vectors": aggregate_count,
        "wall_s": wall,
        "cpu_s": cpu,
        "values_per_s": _rate(n * aggregate_count, cpu),
    }

    _say(f"{preset.id}: {n:,} values: decrypt aggregate (trainer)")
    plain, wall, cpu = _timed(lambda: ckks.decrypt(secret, total))
    row["decrypt"] = {"wall_s": wall, "cpu_s": cpu, "values_per_s": _rate(n, cpu)}
    # The same ciphertext repeated: this is one encryption's noise, after weighting.
    err = np.abs(plain.astype(np.float64) / sum(weights) - x.astype(np.float64))
    row["aggregate_max_abs_error"] = float(err.max())
    return row


def _bench_screening(clients: int, length: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    secret = SecretContext.generate(Preset.SCREENING)
    server = PublicContext.from_bytes(secret.public().to_bytes())
    updates = [_update(rng, length) for _ in range(clients)]
    reference = np.mean(updates, axis=0).astype(np.float32)
    _say(f"screening: encrypting {clients} x {length:,} values (trainers; not timed)")
    uploads = [ckks.encrypt(secret, u) for u in updates]
    ref = ckks.encrypt(secret, reference)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) < 16:
            _say(f"screening: chunk {done}/{total}")

    _say(
        f"screening: {clients} norms + {clients * (clients - 1) // 2} distances + "
        f"{clients} inner products (server, one core)"
    )
    req, wall, cpu = _timed(
        lambda: stats.compute_statistics(
            server, uploads, reference=ref, value_bound=0.1, progress=progress
        )
    )
    blobs = req.blobs()
    _say("screening: key holder decrypts and sums slots")
    got, h_wall, h_cpu = _timed(lambda: stats.decrypt_scalars(secret, blobs))

    xs = [u.astype(np.float64) for u in updates]
    r = reference.astype(np.float64)
    worst = {kind.value: 0.0 for kind in stats.StatKind}
    for lab, g in zip(req.labels, got, strict=True):
        want: float
        scale: float
        if lab.kind is stats.StatKind.SQUARED_NORM:
            want = scale = float(xs[lab.i] @ xs[lab.i])
        elif lab.kind is stats.StatKind.SQUARED_DISTANCE:
            assert lab.j is not None
            d = xs[lab.i] - xs[lab.j]
            want = scale = float(d @ d)
        else:
            want = float(xs[lab.i] @ r)
            scale = float(np.linalg.norm(xs[lab.i]) * np.linalg.norm(r))
        worst[lab.kind.value] = max(worst[lab.kind.value], abs(g - want) / scale)
    return {
        "clients": clients,
        "values": length,
        "statistics": len(req.labels),
        "server": {"wall_s": wall, "cpu_s": cpu},
        "key_holder": {"wall_s": h_wall, "cpu_s": h_cpu},
        "bytes_to_each_key_holder": sum(len(b) for b in blobs),
        "max_relative_error": worst,
    }


def bench_crypto(
    sizes: Sequence[int] = (100_000, 1_000_000, 10_000_000),
    *,
    presets: Iterable[Preset] = tuple(Preset),
    aggregate_count: int = 10,
    screening_clients: int = 10,
    screening_length: int = 1_000_000,
    screening: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure bytes per value, throughput and screening cost; return a JSON-able dict.

    Parameters
    ----------
    sizes:
        Vector lengths (values) to measure encryption, aggregation and decryption at.
    presets:
        Presets to measure (default: all).
    aggregate_count:
        Vectors per weighted sum (the same ciphertext, re-used to bound memory).
    screening_clients, screening_length:
        Shape of the screening benchmark (SCREENING preset): all squared norms, all
        pairwise squared distances and one inner product per client with a reference.
    screening:
        Set False to skip the screening benchmark.
    seed:
        Seed of the synthetic data (keys and ciphertext randomness stay random).

    Returns
    -------
    dict
        ``{"environment": ..., "presets": {id: {...}}, "screening": {...}}``; rates are
        values per CPU second, sizes in bytes, times in seconds.
    """
    result: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "presets": {},
    }
    for preset in presets:
        spec = preset.spec
        secret, wall, _ = _timed(functools.partial(SecretContext.generate, preset))
        server = PublicContext.from_bytes(secret.public().to_bytes())
        entry: dict[str, Any] = {
            "poly_degree": spec.poly_degree,
            "data_modulus_bits": [q.bit_length() for q in spec.data_moduli],
            "special_modulus_bits": spec.special_modulus.bit_length(),
            "scale_bits": spec.scale_bits,
            "packing": spec.packing.value,
            "values_per_ciphertext": spec.values_per_chunk,
            "keygen_s": wall,
            "public_context_bytes": len(server.to_bytes()),
            "secret_context_bytes": len(secret.to_bytes()),
            "sizes": [],
        }
        for i, n in enumerate(sizes):
            entry["sizes"].append(_bench_size(secret, server, int(n), aggregate_count, seed + i))
        result["presets"][preset.id] = entry
    if screening:
        result["screening"] = _bench_screening(screening_clients, screening_length, seed)
    return result


if __name__ == "__main__":  # pragma: no cover - manual use: python -m crypto.bench
    import json

    print(json.dumps(bench_crypto(), indent=2))
