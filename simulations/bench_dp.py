"""DP-SGD benchmark: epoch time private vs non-private, and accuracy at ε ∈ {1, 3, 8}.

Two parts, both on Fashion-MNIST and the task's CNN:

1. **Epoch time** (:func:`time_epochs`). One client-sized shard (6 000 records, a tenth of the
   training set: the size of a client in the 10-client federation), one torch thread (as a
   simulated client runs), and for each batch size the same fresh model trained for one local
   epoch without DP and with DP in every grad-sample mode. Runs are *interleaved*
   (plain, fused, hooks, ... , plain, fused, ...) so that machine load drifts hit all modes
   alike; we report the minimum and the median over repeats and the ratio private / plain
   at the same batch size (the ratio of minima is the headline). Both loops are equally
   optimised: in-memory tensors, no DataLoader, the same SGD-with-momentum step; DP adds
   Poisson sampling, per-sample clipping and noise, and nothing else.
2. **Accuracy at ε** (:func:`accuracy_at_epsilon`). *Centralised* DP-SGD — one party holding
   the whole training set — with the noise calibrated once for the whole run to reach ε at
   δ = 1e-5, then test accuracy. This is a reference point, not the federated figure (the
   federated runs are ``fedguard bench dp --federated``, real simulations with the DP recipe).

Progress goes to stderr; the result is a JSON-ready dict (also written to ``out``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from clients.training import DPPlan, evaluate, train_local
from crypto import encrypt
from federation.aggregation import WEIGHT_DENOMINATOR
from federation.config import from_flat
from federation.data import load_fashion_mnist, normalize
from federation.privacy import (
    PrivacyEvent,
    PrivacyLedger,
    calibrate_noise,
    poisson_schedule,
)
from federation.tasks import build_model, resolve_task

__all__ = ["DP_MODES", "accuracy_at_epsilon", "bench_dp", "bench_models", "crypto_round_profile",
           "fused_coverage", "time_epochs"]

DP_MODES: tuple[str, ...] = ("fused", "hooks", "ghost", "functorch")

Log = Callable[[str], None]

# Centralised DP-SGD hyper-parameters for the accuracy part (see accuracy_at_epsilon).
CENTRAL_BATCH_SIZE = 1024
CENTRAL_LR = 8.0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_epochs(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (64, 128, 256),
    modes: Sequence[str] = DP_MODES,
    repeats: int = 3,
    noise_multiplier: float = 1.0,
    max_grad_norm: float = 1.0,
    lr: float = 0.05,
    momentum: float = 0.9,
    task: str = "fashion-mnist",
    threads: int = 1,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Seconds per local epoch, non-private vs each DP grad-sample mode, side by side.

    Every run, plain and private, uses ``threads`` torch threads (checked after each run and
    reported as ``torch_threads``): a ratio of epochs on different thread counts means nothing.
    Seconds are wall-clock of the training loop; ``cpu_s`` beside them is the process CPU time
    of the same loop, less disturbed by other load on the machine.

    Parameters
    ----------
    x, y:
        One client's training data as the task's ``load_data`` gives it.
    batch_sizes:
        Batch sizes to compare at (DP uses them as the expected Poisson batch size).
    modes:
        DP grad-sample modes (see :class:`clients.training.DPPlan`).
    repeats:
        Interleaved repetitions; min and median are reported.

    Returns
    -------
    dict
        ``{"<batch>": {"plain": {...}, "<mode>": {"min_s", "median_s", "ratio_min",
        "ratio_median"}}}`` plus ``best`` (fastest mode and its ratio at each batch size).
    """
    result: dict[str, Any] = {"torch_threads": threads}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in batch_sizes:
            result[str(batch)] = _time_batch(x, y, batch, modes, repeats, noise_multiplier,
                                             max_grad_norm, lr, momentum, task, threads, log)
    finally:
        torch.set_num_threads(previous_threads)
    return result


def _time_batch(x: np.ndarray, y: np.ndarray, batch: int, modes: Sequence[str], repeats: int,
                noise_multiplier: float, max_grad_norm: float, lr: float, momentum: float,
                task: str, threads: int, log: Log) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"plain": [], **{m: [] for m in modes}}
    cpu: dict[str, list[float]] = {"plain": [], **{m: [] for m in modes}}
    for rep in range(repeats):
        for mode in ["plain", *modes]:
            model = build_model(task, 0)
            plan = None if mode == "plain" else DPPlan(noise_multiplier, max_grad_norm, mode)  # type: ignore[arg-type]
            c0 = time.process_time()
            r = train_local(
                model,
                x,
                y,
                epochs=1,
                batch_size=batch,
                lr=lr,
                momentum=momentum,
                seed=rep,
                dp=plan,
                task=resolve_task(task),
            )
            cpu[mode].append(time.process_time() - c0)
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"{mode} epoch changed torch threads to "
                                   f"{torch.get_num_threads()} (expected {threads})")
            runs[mode].append(r.seconds)
            log(
                f"[bench dp] batch {batch} repeat {rep + 1}/{repeats} {mode:<9} "
                f"{r.seconds:6.2f} s ({cpu[mode][-1]:.2f} CPU-s)"
            )
    base_min = min(runs["plain"])
    base_med = statistics.median(runs["plain"])
    base_cpu = min(cpu["plain"])
    row: dict[str, Any] = {}
    for mode, secs in runs.items():
        row[mode] = {
            "min_s": round(min(secs), 4),
            "median_s": round(statistics.median(secs), 4),
            "ratio_min": round(min(secs) / base_min, 3),
            "ratio_median": round(statistics.median(secs) / base_med, 3),
            "all_s": [round(s, 4) for s in secs],
            "cpu_min_s": round(min(cpu[mode]), 4),
            "cpu_ratio_min": round(min(cpu[mode]) / base_cpu, 3),
        }
    best = min(modes, key=lambda m: row[m]["ratio_min"]) if modes else None
    row["best"] = None if best is None else {"mode": best, **row[best]}
    if best is not None:
        log(
            f"[bench dp] batch {batch}: plain {base_min:.2f} s/epoch; best DP mode {best} "
            f"{row[best]['min_s']:.2f} s/epoch = {row[best]['ratio_min']:.2f}x wall, "
            f"{row[best]['cpu_ratio_min']:.2f}x CPU (minima of {repeats}, {threads} threads)"
        )
    return row


def accuracy_at_epsilon(
    epsilon: float,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    delta: float = 1e-5,
    epochs: int = 10,
    batch_size: int = CENTRAL_BATCH_SIZE,
    lr: float = CENTRAL_LR,
    momentum: float = 0.0,
    max_grad_norm: float = 0.5,
    accountant: str = "prv",
    seed: int = 0,
    task: str = "fashion-mnist",
    log: Log = _stderr,
) -> dict[str, Any]:
    """Test accuracy of *centralised* DP-SGD calibrated to (ε, δ) for the whole run.

    Parameters
    ----------
    epsilon:
        Target ε for all ``epochs`` together (at ``delta``).
    train_x, train_y, test_x, test_y:
        Normalised float32 images (N x 1 x 28 x 28) and int64 labels.
    delta:
        δ (per record).
    epochs, batch_size, lr, momentum, max_grad_norm:
        DP-SGD hyper-parameters (batch size = expected Poisson batch size). Defaults from a
        small sweep at ε = 3 (5-10 epochs): B=1024, lr=8, C=0.5, no momentum gave 87.0 %;
        B=512/lr=4: 86.0 %; B=256/lr=2: 82.5 % (5 epochs); B=128/lr=0.05/momentum 0.9: 81.9 %.

    Returns
    -------
    dict
        ``setting`` ("centralised"), the target and the achieved ε (from a ledger of the steps
        actually taken), the noise multiplier, accuracy (fraction), test loss (nats) and seconds.
    """
    n = len(train_y)
    q, per_epoch = poisson_schedule(n, batch_size)
    total = epochs * per_epoch
    sigma = calibrate_noise(epsilon, delta, q, total, accountant)
    log(f"[bench dp] centralised ε={epsilon:g}: sigma={sigma:.3f} for {total} steps at q={q:.4f}")
    model = build_model(task, seed)
    t0 = time.perf_counter()
    r = train_local(
        model,
        train_x,
        train_y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        seed=seed,
        dp=DPPlan(sigma, max_grad_norm),
    )
    seconds = time.perf_counter() - t0
    spent = PrivacyLedger((PrivacyEvent(sigma, r.sample_rate, r.steps, "centralised"),))
    ev = evaluate(model, test_x, test_y)
    eps_spent = spent.epsilon(delta, accountant)
    log(
        f"[bench dp] centralised ε={epsilon:g}: accuracy {ev.accuracy:.4f} "
        f"(ε spent {eps_spent:.3f}, {seconds:.0f} s)"
    )
    return {
        "setting": "centralised",
        "target_epsilon": epsilon,
        "epsilon": round(eps_spent, 4),
        "delta": delta,
        "accountant": accountant,
        "noise_multiplier": sigma,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "max_grad_norm": max_grad_norm,
        "steps": r.steps,
        "sample_rate": r.sample_rate,
        "train_examples": n,
        "test_examples": ev.num_examples,
        "accuracy": round(ev.accuracy, 4),
        "test_loss": round(ev.loss, 4),
        "seconds": round(seconds, 1),
    }


def bench_dp(
    out: Path | None = None,
    epsilons: Sequence[float] = (1.0, 3.0, 8.0),
    *,
    quick: bool = False,
    data_dir: str | None = None,
    client_examples: int = 6000,
    batch_sizes: Sequence[int] = (64, 128, 256, 512),
    modes: Sequence[str] = DP_MODES,
    repeats: int = 3,
    accuracy_epochs: int = 10,
    accuracy: bool = True,
    threads: int = 1,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Run both benchmark parts and return (and write to ``out``) one JSON-ready dict.

    ``quick`` shrinks everything to a smoke test of a few seconds (numbers meaningless).
    Torch runs on ``threads`` threads (1, as each simulated client does).
    """
    if quick:
        client_examples, batch_sizes, repeats, accuracy_epochs = 512, (64,), 1, 1
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = load_fashion_mnist(data_dir)
        log(f"[bench dp] data {data!r}, torch threads {threads}")
        rng = np.random.default_rng(0)
        shard = rng.permutation(data.n_train)[: min(client_examples, data.n_train)]
        x = normalize(data.train_x[shard])
        y = np.asarray(data.train_y[shard], dtype=np.int64)
        t0 = time.perf_counter()
        epoch = time_epochs(x, y, batch_sizes=batch_sizes, modes=modes, repeats=repeats,
                            threads=threads, log=log)
        result: dict[str, Any] = {
            "benchmark": "dp",
            "quick": quick,
            "environment": {
                "torch": torch.__version__,
                "opacus": _version("opacus"),
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "torch_threads": threads,
                "dataset": data.source,
            },
            "epoch_time": {
                "client_examples": len(y),
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "by_batch_size": epoch,
                "seconds": round(time.perf_counter() - t0, 1),
                "note": "ratio = DP epoch time / non-private epoch time, same data, model and "
                "batch size, runs interleaved; the ratio of minima is the headline figure (least "
                "disturbed by other load on the machine), medians are reported alongside",
            },
        }
        if accuracy:
            train_x, train_y = normalize(data.train_x), np.asarray(data.train_y, dtype=np.int64)
            test_x, test_y = normalize(data.test_x), np.asarray(data.test_y, dtype=np.int64)
            if quick:
                train_x, train_y = train_x[:2000], train_y[:2000]
                test_x, test_y = test_x[:1000], test_y[:1000]
            result["accuracy_at_epsilon"] = {
                "setting": "centralised DP-SGD on the whole training set (not federated)",
                "runs": [
                    accuracy_at_epsilon(
                        float(eps),
                        train_x,
                        train_y,
                        test_x,
                        test_y,
                        epochs=accuracy_epochs,
                        log=log,
                        batch_size=128 if quick else CENTRAL_BATCH_SIZE,
                        lr=2.0 if quick else CENTRAL_LR,
                    )
                    for eps in epsilons
                ],
            }
    finally:
        torch.set_num_threads(previous_threads)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"[bench dp] wrote {out}")
    return result


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# model sizes: the GroupNorm ResNet tasks, per-sample-gradient coverage, rounds, memory


def _descendants_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Ray's raylet and workers), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry.name), int(fields.get("PPid", "0").strip() or 0)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class _PeakMemory:
    """Samples the resident memory of this process tree every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _descendants_rss(os.getpid()))
            self._stop.wait(interval)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _descendants_rss(os.getpid()))


def fused_coverage(task: str, probe: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Which parameters the fused engine covers for ``task``'s model, and how.

    ``auto_mode`` is what ``grad-sample-mode = auto`` picks. With ``probe`` (two inputs of the
    task's size and their targets), ``methods`` gives, per method of
    :func:`clients.grad_sample.fused_plan` (``ghost``, ``per-sample``, ``per-channel``), the
    layers and the parameters it handles at that input size.
    """
    from clients.grad_sample import fused_plan, resolve_grad_sample_mode

    model = build_model(task, 0)
    supported = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm)
    covered = sum(p.numel() for m in model.modules() if type(m) in supported
                  for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.parameters())
    others = sorted({type(m).__name__ for m in model.modules()
                     if type(m) not in supported
                     and any(True for _ in m.parameters(recurse=False))})
    row: dict[str, Any] = {"parameters": total, "in_fused_layers": covered,
                           "uncovered_layer_types": others,
                           "auto_mode": resolve_grad_sample_mode(model)}
    if probe is not None and row["auto_mode"] == "fused":
        modules = dict(model.named_modules())
        methods: dict[str, dict[str, int]] = {}
        for layer in fused_plan(model, probe):
            entry = methods.setdefault(layer.method, {"layers": 0, "parameters": 0})
            entry["layers"] += 1
            entry["parameters"] += sum(p.numel() for p in modules[layer.name].parameters(False))
        row["methods"] = methods
    return row


def _start_ray(log: Log, attempts: int = 4, pause_s: float = 10.0) -> None:
    """Start Ray for the next simulation, retrying when its start-up times out.

    Under heavy load Ray's node start-up gives up after a fixed 30 s ("the current node timed
    out during startup"); Flower's Ray backend then fails the whole run. Flower uses an
    already-running Ray as it is, so the benchmark starts it here, with retries, with the
    resources the simulation asks for (all cores, one per client, no dashboard).
    """
    import logging

    import ray

    from simulations.simulate import quiet_flower

    quiet_flower()
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=os.cpu_count() or 1, num_gpus=0, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
            return
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if attempt == attempts:
                raise
            log(f"[bench models] Ray start-up failed ({str(exc)[:120]}); retry {attempt} of "
                f"{attempts - 1} in {pause_s * attempt:.0f} s")
            time.sleep(pause_s * attempt)


def _round_stats(summary: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    per_round = [r["seconds"] for r in rows if r.get("seconds")]
    timing = {k: statistics.median(r["timings"].get(k, 0.0) for r in rows)
              for k in (*_CRYPTO_PHASES, "client-train-seconds-max", "train-phase")}
    return {"seconds_per_round": per_round,
            "timings_per_round": [{k: round(float(v), 3) for k, v in (r.get("timings") or {}).items()}
                                  for r in rows],
            "notes_per_round": [r.get("note") for r in rows],
            "median_round_seconds": statistics.median(per_round[1:] or per_round),
            "upload_bytes_per_param": summary.get("upload_bytes_per_param"),
            "timings_median": {k: round(v, 3) for k, v in timing.items()},
            "crypto_seconds_median": round(sum(timing[k] for k in _CRYPTO_PHASES), 3),
            "rounds_completed": summary.get("rounds_completed")}


def crypto_round_profile(dim: int, clients: int = 3, holders: int = 2, repeats: int = 2,
                         seed: int = 0) -> dict[str, Any]:
    """CPU and wall seconds of every CKKS step of one round, in this process, for ``dim`` values.

    The same calls a round makes, with real keys and update-sized vectors (|x| ~ 0.01): per
    trainer, decoding the global, recomputing its ``c1`` from the round's seeds (on top of the
    kept sum of the earlier rounds, as ``clients.encrypted`` does), decrypting, encrypting the
    update and encoding it; on the server, parsing every upload, the screen's ``c0``
    projections, combining and checking them, aggregation and encoding the new global; per key
    holder, its seed-part projections. Minimum over ``repeats``; ``cpu_s`` is process time
    (what other load on the machine disturbs least), ``wall_s`` beside it.

    Returns
    -------
    dict
        ``steps`` (``{name: {"who", "cpu_s", "wall_s"}}``; client and holder steps per
        trainer, server steps per round), ``bytes`` (upload and global envelopes), and per
        role the CPU seconds of one round: ``client_cpu_s`` (one trainer), ``holder_cpu_s``
        (one key holder, on top), ``server_cpu_s``, and ``screen_critical_cpu_s`` =
        max(server projections, holder projections) + check (they run at the same time, on
        different machines in a deployment).
    """
    from crypto import Preset, SecretContext, weighted_sum
    from crypto.provenance import seed_sum, upload_seed

    secret = SecretContext.generate(Preset.AGGREGATION)
    rng = np.random.default_rng(seed)
    weights = [WEIGHT_DENOMINATOR // clients] * clients
    weights[0] += WEIGHT_DENOMINATOR - sum(weights)
    # an earlier round's global: its c1 sum is what a trainer keeps from its last check
    earlier = [encrypt(secret, (rng.standard_normal(dim) * 0.01).astype(np.float32))
               for _ in range(clients)]
    previous = weighted_sum(secret.public(), earlier, weights)
    kept = seed_sum(secret, dim, [upload_seed(e) for e in earlier], weights)
    if kept is None:
        raise RuntimeError("could not build the kept seed sum")
    runs = [_profile_round(secret, previous, kept.to_bytes(), weights,
                           [(rng.standard_normal(dim) * 0.01).astype(np.float32)
                            for _ in range(clients)]) for _ in range(repeats)]
    steps: dict[str, dict[str, Any]] = {
        name: {"who": who, "cpu_s": round(min(r[0][name][1] for r in runs), 4),
               "wall_s": round(min(r[0][name][2] for r in runs), 4)}
        for name, (who, _c, _w) in runs[0][0].items()}

    def total(who: str) -> float:
        return round(float(sum(v["cpu_s"] for v in steps.values() if v["who"] == who)), 4)

    critical = max(steps["server-projections"]["cpu_s"], steps["holder-projections"]["cpu_s"]) \
        + steps["server-check"]["cpu_s"]
    return {"values": dim, "clients": clients, "key_holders": holders, "steps": steps,
            "bytes": runs[0][1], "client_cpu_s": total("client"), "holder_cpu_s": total("holder"),
            "server_cpu_s": total("server"), "screen_critical_cpu_s": round(critical, 4),
            "note": "client and holder steps are per trainer (trainers run in parallel, on their "
                    "own machines in a deployment); server steps per round; one process, no "
                    "Flower, no Ray"}


def _profile_round(secret: Any, previous: Any, kept: bytes, weights: list[int],
                   updates: list[npt.NDArray[np.float32]]
                   ) -> tuple[dict[str, tuple[str, float, float]], dict[str, int]]:
    """One round of :func:`crypto_round_profile`: ``{step: (who, cpu_s, wall_s)}`` and sizes."""
    from crypto import Preset, add, decrypt, weighted_sum, wire
    from crypto.provenance import SeedSum, matches, seed_sum, upload_seed
    from crypto.stats import (
        check_projections,
        combine,
        holder_projections,
        new_challenge,
        screen_parameters,
        server_projections,
        sketch_statistics,
    )

    preset, public = Preset.AGGREGATION, secret.public()
    dim, n = int(updates[0].size), len(updates)
    max_bytes = wire.encoded_size(preset, dim, seeded=False)
    params = screen_parameters(preset, dim, 50.0, max_weight=WEIGHT_DENOMINATOR)
    out: dict[str, tuple[str, float, float]] = {}

    def timed(name: str, who: str, fn: Callable[..., Any], *args: Any, per: int = 1) -> Any:
        c, t = time.process_time(), time.perf_counter()
        result = fn(*args)
        _w, cpu, wall = out.get(name, (who, 0.0, 0.0))
        out[name] = (who, cpu + (time.process_time() - c) / per, wall + (time.perf_counter() - t) / per)
        return result

    blobs = [timed("client-upload-encode", "client", wire.encode,
                   timed("client-encrypt", "client", encrypt, secret, x, per=n), per=n)
             for x in updates]  # per trainer: the mean over the n trainers
    uploads = [timed("server-parse-uploads", "server", partial(
        wire.decode, expected_length=dim, max_bytes=max_bytes), b, public) for b in blobs]
    challenge = new_challenge(2, uploads, params.repetitions)
    own = timed("server-projections", "server", server_projections, public, uploads, challenge)
    theirs = timed("holder-projections", "holder", holder_projections, secret, challenge)

    def check() -> None:
        values = combine(preset, own, theirs)
        check_projections(values, params)
        sketch_statistics(values, params)

    timed("server-check", "server", check)
    total = timed("server-aggregate", "server", lambda: add(
        public, previous, weighted_sum(public, uploads, weights)))
    blob = timed("server-global-encode", "server", wire.encode, total)
    enc = timed("client-global-decode", "client", partial(
        wire.decode, expected_length=dim, max_bytes=max_bytes), blob, secret)

    def provenance() -> bool:  # what clients.encrypted._expected_c1 does with its kept sum
        base = SeedSum.from_bytes(kept, secret, dim)
        expected = seed_sum(secret, dim, [upload_seed(u) for u in uploads], weights, base)
        if expected is None:
            return False
        expected.to_bytes()  # kept in the trainer's state for the next round
        return matches(enc, expected)

    if not timed("client-provenance", "client", provenance):
        raise RuntimeError("the profiled global does not match its provenance")
    timed("client-decrypt", "client", decrypt, secret, enc)
    return out, {"upload": len(blobs[0]), "global": len(blob)}


# CIFAR-10's training set split over the bench's clients: the "realistic" client data size.
CIFAR10_TRAIN_EXAMPLES = 50_000


def _ratios(row: dict[str, Any], clients: int, examples: int) -> dict[str, Any]:
    """Encrypted vs plaintext round: the measured ratio, the overhead in seconds and by phase,
    and the ratio projected to a realistic client data size (stated in ``realistic``)."""
    plain, ckks = row["none"], row["ckks"]
    plain_round, ckks_round = plain["median_round_seconds"], ckks["median_round_seconds"]
    phases = ("train-phase", "screen", "aggregate")
    by_phase = {k: round(ckks["timings_median"].get(k, 0.0) - plain["timings_median"].get(k, 0.0), 3)
                for k in phases}
    # Training time grows linearly with the examples; the crypto overhead depends on the model
    # size only. Clients train in ceil(clients / cores) waves (one core each).
    waves = -(-clients // (os.cpu_count() or 1))
    target = CIFAR10_TRAIN_EXAMPLES // clients
    train_s = plain["timings_median"]["client-train-seconds-max"]
    projected_plain = plain_round + (target / examples - 1) * waves * train_s
    overhead = ckks_round - plain_round
    return {
        "encrypted_over_plaintext": round(ckks_round / plain_round, 3),
        # Less noisy under load: what the crypto phases add, over the plaintext round.
        "crypto_phases_over_plaintext_round": round(1 + ckks["crypto_seconds_median"] / plain_round, 3),
        "overhead_seconds": round(overhead, 3),
        "overhead_by_phase_seconds": by_phase,
        "realistic": {
            "examples_per_client": target,
            "measured_examples_per_client": examples,
            "projected_plain_round_s": round(projected_plain, 2),
            "projected_ckks_round_s": round(projected_plain + overhead, 2),
            "ratio": round((projected_plain + overhead) / projected_plain, 3),
            "note": f"CIFAR-10's {CIFAR10_TRAIN_EXAMPLES} training images split over {clients} "
                    "clients; projected, not run: the measured plaintext round plus the measured "
                    f"client training time scaled linearly to {target} examples ({waves} waves of "
                    "clients on the machine's cores), plus the measured encrypted overhead in "
                    "seconds (independent of the data size)",
        },
    }


# The phases of a round that encryption adds or makes slower (server/loop.py's timings keys).
_CRYPTO_PHASES = ("client-encrypt-seconds-max", "client-decrypt-seconds-max", "screen",
                  "aggregate")


def bench_models(
    out: Path | None = None,
    *,
    tasks: Sequence[str] = ("resnet-1m", "resnet-10m"),
    clients: int = 3,
    rounds: int = 3,
    batch_size: int = 64,
    repeats: int = 2,
    modes: Sequence[str] = ("fused", "hooks", "ghost"),
    encrypted_only: Sequence[str] = ("resnet-10m",),
    local_epochs: Sequence[int] = (1, 4),
    log: Log = _stderr,
) -> dict[str, Any]:
    """Per model size: DP/plain epoch time, fused-engine coverage, rounds plaintext vs CKKS.

    For each task: (1) one client's generated data (``federation.resnet``), one local epoch
    plain and in each DP ``mode`` (interleaved, min of ``repeats``; ``fused`` covers GroupNorm,
    ``hooks`` is what a model with an uncovered layer falls back to); (2) a simulation with DP
    on (ε = 8), the encrypted filter (``norm,multikrum``) and ``clients`` clients for ``rounds``
    rounds, once in plaintext and once under CKKS (tasks in ``encrypted_only``: CKKS only, one
    round), recording per-round seconds, client encrypt/decrypt and server screen/aggregate
    seconds, upload bytes per parameter and the peak resident memory of the whole process tree;
    (3) :func:`crypto_round_profile`, every CKKS step of a round in this process (CPU seconds).

    The ratio is the encrypted round (CKKS aggregation with its always-on validity check, the
    same filter) over the plaintext round, same clients, data and threads (median of rounds
    after the first); beside it the overhead in seconds by phase, and the ratio projected to
    CIFAR-10 split over the clients (``realistic``: see :func:`_ratios`).

    ``local_epochs``: the plaintext / CKKS pair runs once per value (``local-epochs``, each
    client's passes over its data per round); the first value fills ``none`` / ``ckks`` and the
    ratios above, every value a row of ``by_local_epochs`` (measured, not projected: with 256
    generated examples and batch 64, one epoch is 4 DP steps per round, four epochs 16).
    """
    import tempfile

    from federation.tasks import DataRequest, resolve_task
    from simulations.simulate import simulate

    result: dict[str, Any] = {"benchmark": "models", "environment": {
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "models": {}}
    for task in tasks:
        data = resolve_task(task).load_data(DataRequest(0, clients, "iid", 0))
        probe = (torch.from_numpy(data.train.x[:2]), torch.from_numpy(data.train.y[:2]))
        row: dict[str, Any] = {"coverage": fused_coverage(task, probe)}
        log(f"[bench models] {task}: {row['coverage']}")
        big = task in encrypted_only  # the large model: fused only, one repeat, one CKKS round
        row["epoch_time"] = time_epochs(data.train.x, data.train.y, batch_sizes=(batch_size,),
                                        modes=("fused",) if big else modes,
                                        repeats=1 if big else repeats, task=task, threads=1,
                                        log=log)
        sweep: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="fg-bench-models-") as tmp:
            for epochs in (local_epochs[:1] if big else local_epochs):
                runs: dict[str, Any] = sweep.setdefault(str(epochs), {"local_epochs": epochs})
                for mode in (("ckks",) if big else ("none", "ckks")):
                    # The run folders stay beside the JSON (metrics, audit log: where a slow
                    # round went); without ``out``, in a temporary folder.
                    name = f"{task}-{mode}" + ("" if epochs == local_epochs[0] else f"-e{epochs}")
                    folder = (Path(out).parent / f"{Path(out).stem}-runs" / name
                              if out is not None else Path(tmp) / name)
                    shutil.rmtree(folder, ignore_errors=True)  # this benchmark's previous run
                    cfg = from_flat({"task": task, "num-clients": clients,
                                     "num-server-rounds": 1 if big else rounds, "partition": "iid",
                                     "dp-epsilon": 8.0, "batch-size": batch_size, "lr": 0.5,
                                     "local-epochs": epochs, "secure-aggregation": mode,
                                     "defense": "norm,multikrum", "out-dir": str(folder)})
                    log(f"[bench models] {task}: simulation, secure-aggregation {mode}, "
                        f"local-epochs {epochs}")
                    _start_ray(log)
                    t, load = time.perf_counter(), os.getloadavg()[0]
                    with _PeakMemory() as mem:
                        summary = simulate(cfg, progress=lambda line: log("  " + line))
                    runs[mode] = {**_round_stats(summary, folder),
                                  "wall_seconds": round(time.perf_counter() - t, 1),
                                  "peak_rss_bytes": mem.peak,
                                  # 1-minute load average before and after: wall times need it
                                  "load_average": [round(load, 2), round(os.getloadavg()[0], 2)]}
        first = sweep[str(local_epochs[0])]
        row.update({mode: first[mode] for mode in ("none", "ckks") if mode in first})
        row["crypto_profile"] = crypto_round_profile(int(row["coverage"]["parameters"]),
                                                     clients, min(2, clients))
        log(f"[bench models] {task}: crypto steps (CPU-s) "
            + ", ".join(f"{k} {v['cpu_s']:.3f}" for k, v in row["crypto_profile"]["steps"].items()))
        if "none" in row:
            row.update(_ratios(row, clients, len(data.train.y)))
            row["by_local_epochs"] = [
                {"local_epochs": runs["local_epochs"],
                 "batches_per_round": runs["local_epochs"] * -(-len(data.train.y) // batch_size),
                 **{k: v for k, v in _ratios(runs, clients, len(data.train.y)).items()
                    if k in ("encrypted_over_plaintext", "overhead_seconds", "overhead_by_phase_seconds")},
                 "plaintext_round_s": runs["none"]["median_round_seconds"],
                 "ckks_round_s": runs["ckks"]["median_round_seconds"],
                 "load_average": {m: runs[m]["load_average"] for m in ("none", "ckks")}}
                for runs in sweep.values()]
            for r in row["by_local_epochs"]:
                log(f"[bench models] {task}: local-epochs {r['local_epochs']}: encrypted / plaintext "
                    f"round {r['encrypted_over_plaintext']:.3f}x ({r['ckks_round_s']:.1f} s / "
                    f"{r['plaintext_round_s']:.1f} s)")
            log(f"[bench models] {task}: encrypted / plaintext round "
                f"{row['encrypted_over_plaintext']:.3f}x, overhead {row['overhead_seconds']:.2f} s "
                f"per round; projected at {row['realistic']['examples_per_client']} examples per "
                f"client {row['realistic']['ratio']:.3f}x")
        result["models"][task] = row
        if out is not None:  # after every model: a long run keeps what it measured
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
