"""``fedguard bench crypto``: CKKS primitives, projection screening, and a round comparison.

Benchmarks are a command, not tests: everything here measures and returns a JSON-able dict;
progress goes to stderr. Times are reported both as wall-clock and as CPU seconds of this
process (SEAL is single-threaded, so CPU time is the honest "one core" figure on a shared
machine; numpy's BLAS may use both cores for the screening products, so there wall can be
below CPU).

* :func:`bench_crypto`: bytes per value, encrypt / aggregate / decrypt throughput at 100 k,
  1 M and 10 M values, and the projection screening (:mod:`crypto.stats`) for n clients x d
  values: server and key-holder time, growth in n and d, honest rejections, sketch error.
* :func:`bench_rounds`: the demo task twice, side by side -- plaintext and CKKS, DP on in
  both, same seeds -- comparing the median wall time of the rounds after the first.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from rich.console import Console

from crypto import ckks, stats, wire
from crypto.ckks import Preset, PublicContext, SecretContext
from federation.aggregation import WEIGHT_DENOMINATOR
from federation.config import DefenseConfig, from_flat
from server.progress import RoundProgress

__all__ = ["bench_crypto", "bench_crypto_all", "bench_rounds"]

_FLOAT32_BYTES = 4
T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``fn``; return its result, wall seconds and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _rate(values: int, seconds: float) -> float:
    return values / seconds if seconds > 0 else math.inf


_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


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
    """Projection screening of ``clients`` uploads of ``length`` values (crypto.stats)."""
    rng = np.random.default_rng(seed)
    secret = SecretContext.generate(Preset.AGGREGATION)
    server = PublicContext.from_bytes(secret.public().to_bytes())
    params = stats.screen_parameters(Preset.AGGREGATION, length, DefenseConfig().screen_norm_bound,
                                     max_weight=WEIGHT_DENOMINATOR)
    _say(f"screening: encrypting {clients} x {length:,} values (trainers; not timed)")
    updates = [_update(rng, length) for _ in range(clients)]
    uploads = [ckks.encrypt(secret, u) for u in updates]
    del updates
    challenge = stats.new_challenge(1, uploads, params.repetitions)
    _say(f"screening: {clients} x {length:,}, r = {params.repetitions}: server projections")
    server_part, wall, cpu = _timed(lambda: stats.server_projections(server, uploads, challenge))
    _say("screening: key-holder projections")
    holder_part, h_wall, h_cpu = _timed(lambda: stats.holder_projections(secret, challenge))
    (v, verdicts, sketch), c_wall, c_cpu = _timed(lambda: _decide(params, server_part, holder_part))
    honest = [float(np.sum(ckks.decrypt(secret, u).astype(np.float64) ** 2)) for u in uploads[:3]]
    rel = [abs(float(sketch.sq_norms[i]) - h) / h for i, h in enumerate(honest)]
    return {
        "clients": clients,
        "values": length,
        "repetitions": params.repetitions,
        "threshold": params.threshold,
        "certified_norm": params.certified_norm,
        "norm_bound": params.norm_bound,
        "server": {"wall_s": wall, "cpu_s": cpu},
        "key_holder": {"wall_s": h_wall, "cpu_s": h_cpu},
        "check_and_sketch": {"wall_s": c_wall, "cpu_s": c_cpu},
        "request_bytes": 32 * (clients + 1) + 24,
        "answer_values": clients * params.repetitions,
        "rejected_honest": sum(r is not None for r in verdicts),
        "largest_projection_over_threshold": float(np.abs(v).max()) / params.threshold,
        "sq_norm_relative_error_first_3": rel,
        "stated_sq_norm_relative_std": params.sketch_relative_error,
    }


def _decide(params: stats.ScreenParameters, server_part: list[list[int]],
            holder_part: list[list[int]]) -> tuple[Any, list[str | None], stats.SketchStatistics]:
    v = stats.combine(Preset.AGGREGATION, server_part, holder_part)
    return v, stats.check_projections(v, params), stats.sketch_statistics(v, params)


def bench_crypto(
    sizes: Sequence[int] = (100_000, 1_000_000, 10_000_000),
    *,
    presets: Iterable[Preset] = (Preset.AGGREGATION,),
    aggregate_count: int = 10,
    screening_shapes: Sequence[tuple[int, int]] = ((10, 250_000), (10, 1_000_000), (20, 1_000_000),
                                                   (50, 1_000_000)),
    screening: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure bytes per value, throughput and screening cost; return a JSON-able dict.

    Parameters
    ----------
    sizes:
        Vector lengths (values) to measure encryption, aggregation and decryption at.
    presets:
        Presets to measure (default: AGGREGATION, the only one fedguard uses).
    aggregate_count:
        Vectors per weighted sum (the same ciphertext, re-used to bound memory).
    screening_shapes:
        ``(clients, values)`` pairs of the projection-screening benchmark (AGGREGATION
        preset, the derived ``r`` repetitions, the default norm bound).
    screening:
        Set False to skip the screening benchmark.
    seed:
        Seed of the synthetic data (keys and ciphertext randomness stay random).

    Returns
    -------
    dict
        ``{"environment": ..., "presets": {id: {...}}, "screening": [{...}, ...]}``; rates are
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
        result["screening"] = [_bench_screening(n, d, seed) for n, d in screening_shapes]
    return result


def bench_rounds(*, clients: int, rounds: int, data_dir: str, dp_epsilon: float,
                 defense: str = "none") -> dict[str, Any]:
    """Median seconds per round (rounds 2..R), plaintext vs CKKS, DP on in both.

    Rounds print on stderr under a live progress line (none when stderr is not a terminal).
    """
    from simulations.simulate import simulate

    out: dict[str, Any] = {"clients": clients, "rounds": rounds, "dp_epsilon": dp_epsilon,
                           "defense": defense, "data_dir": data_dir or "default search"}
    with tempfile.TemporaryDirectory(prefix="fg-bench-") as tmp:
        for mode in ("none", "ckks"):
            cfg = from_flat({"num-clients": clients, "num-server-rounds": rounds,
                             "partition": "dirichlet:0.5", "data-dir": data_dir,
                             "dp-epsilon": dp_epsilon, "secure-aggregation": mode,
                             "defense": defense, "out-dir": str(Path(tmp) / mode)})
            _say(f"round timing: secure-aggregation {mode}")
            t = time.perf_counter()
            with RoundProgress(rounds, console=_stderr, prefix="[bench crypto]   ") as display:
                summary = simulate(cfg, display=display)
            per_round = summary["seconds_per_round"]
            out[mode] = {
                "wall_seconds": round(time.perf_counter() - t, 2),
                "seconds_per_round": per_round,
                "median_round_seconds": statistics.median(per_round[1:] or per_round),
                "final_accuracy": summary["final_accuracy"],
                "upload_bytes_per_param": summary["upload_bytes_per_param"],
            }
    out["encrypted_over_plaintext"] = (out["ckks"]["median_round_seconds"]
                                       / out["none"]["median_round_seconds"])
    return out


def bench_crypto_all(*, quick: bool = False, rounds: bool = True) -> dict[str, Any]:
    """Everything ``fedguard bench crypto`` reports, as a JSON-able dict."""
    started = time.time()
    if quick:
        primitives = bench_crypto(sizes=(10_000, 100_000), screening_shapes=((3, 100_000),))
    else:
        primitives = bench_crypto()
    out: dict[str, Any] = {"primitives": primitives}
    if rounds:
        out["rounds"] = (bench_rounds(clients=3, rounds=2, data_dir="subset", dp_epsilon=8.0) if quick
                         else bench_rounds(clients=10, rounds=4, data_dir="", dp_epsilon=8.0))
    out["total_seconds"] = round(time.time() - started, 1)
    return out
