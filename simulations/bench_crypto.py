"""``fedguard bench crypto``: CKKS primitives, then an encrypted round against a plaintext round.

The primitives (bytes per parameter, encrypt/aggregate/decrypt throughput at 100 k, 1 M and
10 M values, screening cost for 10 clients x 1 M) come from :func:`crypto.bench.bench_crypto`.
The round comparison runs the demo task twice, side by side in one invocation — plaintext
and CKKS, DP on in both, same seeds — and compares the median wall time of the rounds after
the first (round 1 carries start-up and, under CKKS, the key setup).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from crypto.bench import bench_crypto
from federation.config import from_flat
from server.progress import RoundProgress

__all__ = ["bench_crypto_all", "bench_rounds"]


_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(message: str) -> None:
    print(f"[bench crypto] {message}", file=sys.stderr, flush=True)


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


def bench_crypto_all(*, quick: bool = False) -> dict[str, Any]:
    """Everything ``fedguard bench crypto`` reports, as a JSON-able dict."""
    started = time.time()
    if quick:
        primitives = bench_crypto(sizes=(10_000, 100_000), screening_length=100_000)
        rounds = bench_rounds(clients=3, rounds=2, data_dir="subset", dp_epsilon=8.0)
    else:
        primitives = bench_crypto()
        rounds = bench_rounds(clients=10, rounds=4, data_dir="", dp_epsilon=8.0)
    return {"primitives": primitives, "rounds": rounds,
            "total_seconds": round(time.time() - started, 1)}
