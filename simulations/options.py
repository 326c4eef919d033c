"""The command-line options of ``fedguard simulate``, ``fedguard server`` and ``fedguard client``.

Declared once, here: each option's flag, help text and the flat config key it sets
(:data:`FLAG_KEYS`, read into :func:`federation.config.from_flat`). The commands give their own
defaults (``simulate`` has values; ``server`` leaves a flag it was not given at ``None`` so that
``--resume`` keeps the saved setting) but never their own spelling or meaning of an option.

Error messages name flags through :func:`flag_for`: a config key the user can only reach
through a flag is reported as that flag (``--rounds``, never ``--num-server-rounds``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = [
    "FLAG_KEYS",
    "BatchSize",
    "Clients",
    "DataDir",
    "Defense",
    "DpAccountant",
    "DpDelta",
    "DpEpsilon",
    "DpNoise",
    "KeysDir",
    "LocalEpochs",
    "Lr",
    "MaxGradNorm",
    "MaxMalicious",
    "MinClients",
    "Momentum",
    "Partition",
    "RejoinWait",
    "RoundTimeout",
    "Rounds",
    "ScreenNormBound",
    "ScreenQuorum",
    "SecureAggregation",
    "Seed",
    "Task",
    "console",
    "fit_quorum",
    "flag_for",
    "flat_from_flags",
]

FLAG_KEYS: dict[str, str] = {
    "--rounds": "num-server-rounds",
    "--clients": "num-clients",
    "--min-clients": "min-clients",
    "--partition": "partition",
    "--task": "task",
    "--local-epochs": "local-epochs",
    "--batch-size": "batch-size",
    "--lr": "lr",
    "--momentum": "momentum",
    "--seed": "seed",
    "--data-dir": "data-dir",
    "--dp-epsilon": "dp-epsilon",
    "--dp-noise": "dp-noise",
    "--dp-delta": "dp-delta",
    "--max-grad-norm": "max-grad-norm",
    "--dp-accountant": "dp-accountant",
    "--secure-aggregation": "secure-aggregation",
    "--defense": "defense",
    "--screen-quorum": "screen-quorum",
    "--screen-norm-bound": "screen-norm-bound",
    "--max-malicious": "max-malicious",
    "--round-timeout": "round-timeout",
    "--rejoin-wait": "rejoin-wait",
    "--malicious": "malicious",
    "--attack": "attack",
    "--out": "out-dir",
    "--keys": "key-dir",
}
"""Flag -> flat config key (:data:`federation.config.FLAT_KEYS`), for every flag that sets one."""

_KEY_FLAGS = {key: flag for flag, key in FLAG_KEYS.items()}


def flag_for(key: str) -> str:
    """The flag that sets flat config ``key`` (``num-server-rounds`` -> ``--rounds``)."""
    return _KEY_FLAGS.get(key, "--" + key)


def flat_from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """``{"--rounds": 3, ...}`` (None = not given) -> the flat config keys of the given flags.

    A CKKS screening quorum the user did not give is lowered to the number of clients when
    there are fewer than its default (one client cannot form a quorum of two, and refusing a
    flag the user never typed helps no one).
    """
    return fit_quorum({FLAG_KEYS[flag]: v for flag, v in values.items() if v is not None})


def fit_quorum(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with ``screen-quorum`` lowered to ``num-clients`` when it was not given and the
    clients are fewer than its default (see :func:`flat_from_flags`)."""
    from federation.config import DefenseConfig

    clients = flat.get("num-clients")
    default_quorum = DefenseConfig().screen_quorum
    if "screen-quorum" not in flat and isinstance(clients, int) and 1 <= clients < default_quorum:
        return {**flat, "screen-quorum": clients}
    return flat


def console(stderr: bool = False) -> Console:
    """A rich console that never wraps a line when its output is not a terminal.

    Logs and pipes get one line per message (rich would otherwise wrap at 80 columns).
    """
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, highlight=False, soft_wrap=not tty,
                   width=None if tty else 10_000)


# Every alias is Optional: None means "not given" (the server keeps a resumed run's setting).
Rounds = Annotated[int | None, typer.Option("--rounds", help="Federated rounds.")]
Clients = Annotated[int | None, typer.Option(
    "--clients", help="Clients per round (server: default every provisioned trainer).")]
MinClients = Annotated[int | None, typer.Option(
    "--min-clients", help="Fewest accepted updates for a round to count (default 1).")]
Partition = Annotated[str | None, typer.Option(
    "--partition", help="iid | dirichlet:ALPHA | shards:K")]
Task = Annotated[str | None, typer.Option(
    "--task", help="fashion-mnist | fashion-mnist-tanh (default fashion-mnist; with DP "
    "fashion-mnist-tanh)")]
LocalEpochs = Annotated[int | None, typer.Option("--local-epochs", help="Local epochs per round.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Default 64; with DP 512.")]
Lr = Annotated[float | None, typer.Option("--lr", help="Default 0.05; with DP 4.0.")]
Momentum = Annotated[float | None, typer.Option("--momentum", help="Default 0.9; with DP 0.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed of the model and the data split.")]
DataDir = Annotated[str | None, typer.Option(
    "--data-dir", help="Fashion-MNIST IDX folder, or 'subset' (the vendored subset); server: "
    "the data set every client loads (unset: each client's own).")]
DpEpsilon = Annotated[float | None, typer.Option(
    "--dp-epsilon", help="ε budget of each client's whole privacy ledger (all runs; noise is "
    "calibrated for the rounds left).")]
DpNoise = Annotated[float | None, typer.Option(
    "--dp-noise", help="Noise multiplier (instead of --dp-epsilon).")]
DpDelta = Annotated[float | None, typer.Option("--dp-delta", help="δ (default min(1e-5, 1/n)).")]
MaxGradNorm = Annotated[float | None, typer.Option(
    "--max-grad-norm", help="DP per-sample clipping bound (default 0.5).")]
DpAccountant = Annotated[str | None, typer.Option("--dp-accountant", help="prv | rdp")]
SecureAggregation = Annotated[str | None, typer.Option("--secure-aggregation", help="none | ckks")]
Defense = Annotated[str | None, typer.Option(
    "--defense", help="none or a comma list of norm, multikrum, cosine")]
ScreenQuorum = Annotated[int | None, typer.Option(
    "--screen-quorum", help="Key holders asked to decrypt each encrypted statistic (default 2, "
    "at most --clients).")]
ScreenNormBound = Annotated[float | None, typer.Option(
    "--screen-norm-bound", help="Honest update L2 bound the encrypted screen certifies (default 50; "
    "docs/soundness.md).")]
MaxMalicious = Annotated[int | None, typer.Option(
    "--max-malicious", help="Multi-Krum's f (default: the most Krum tolerates).")]
RoundTimeout = Annotated[float | None, typer.Option(
    "--round-timeout", help="Seconds to wait for one phase's replies (default 600).")]
RejoinWait = Annotated[float | None, typer.Option(
    "--rejoin-wait", help="Seconds a client lost in the previous round may take to come back "
    "and train in this one, once (default 30).")]
KeysDir = Annotated[Path | None, typer.Option(
    "--keys", help="A bundle from `fedguard keys init`: DIR/server for the server, "
    "DIR/trainer-<i> for a client.")]
