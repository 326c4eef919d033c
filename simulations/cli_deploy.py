"""``fedguard server`` and ``fedguard client``: a real deployment from a provisioned key directory.

:func:`register` adds both commands to the ``fedguard`` Typer app; the work is done in
:mod:`simulations.deploy`. ``python -m simulations.cli_deploy`` runs the two commands alone.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["register"]

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# Flat run-config keys a resumed run may not change (they shape the model or the split).
_FIXED_ON_RESUME = ("num-clients", "seed", "task", "partition", "secure-aggregation", "dp-epsilon",
                    "dp-noise", "dp-delta", "max-grad-norm", "dp-accountant", "local-epochs",
                    "batch-size")


def _say(line: str) -> None:
    console.print(line, markup=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _interrupt_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def server(
    keys: Annotated[Path, typer.Option(
        "--keys",
        help="The server bundle (DIR/server from `fedguard keys init`).",
    )],
    out: Annotated[Path, typer.Option(
        "--out",
        help="Run folder: metrics, checkpoints, summary, Flower state.",
    )],
    rounds: Annotated[int | None, typer.Option("--rounds", help="Federated rounds.")] = None,
    clients: Annotated[int | None, typer.Option(
        "--clients",
        help="Clients per round (default: every provisioned trainer).",
    )] = None,
    min_clients: Annotated[int | None, typer.Option(
        "--min-clients",
        help="Fewest accepted updates for a round to count.",
    )] = None,
    partition: Annotated[str | None, typer.Option(
        help="iid | dirichlet:ALPHA | shards:K (local trials with --partition-id clients).",
    )] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir",
        help="Data set every client loads ('subset': the vendored subset); unset: each client's own.",
    )] = None,
    local_epochs: Annotated[int | None, typer.Option("--local-epochs")] = None,
    task: Annotated[str | None, typer.Option("--task", help="fashion-mnist | fashion-mnist-tanh")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    momentum: Annotated[float | None, typer.Option("--momentum")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    dp_epsilon: Annotated[float | None, typer.Option(
        "--dp-epsilon",
        help="ε budget of the whole run, per client.",
    )] = None,
    dp_noise: Annotated[float | None, typer.Option(
        "--dp-noise",
        help="Noise multiplier (instead of --dp-epsilon).",
    )] = None,
    dp_delta: Annotated[float | None, typer.Option("--dp-delta")] = None,
    max_grad_norm: Annotated[float | None, typer.Option("--max-grad-norm")] = None,
    dp_accountant: Annotated[str | None, typer.Option("--dp-accountant", help="prv | rdp")] = None,
    secure_aggregation: Annotated[str | None, typer.Option(
        "--secure-aggregation",
        help="none | ckks",
    )] = None,
    defense: Annotated[str | None, typer.Option(
        "--defense",
        help="none or a comma list of norm, multikrum, cosine",
    )] = None,
    screen_quorum: Annotated[int | None, typer.Option("--screen-quorum")] = None,
    max_malicious: Annotated[int | None, typer.Option("--max-malicious")] = None,
    round_timeout: Annotated[float | None, typer.Option(
        "--round-timeout",
        help="Seconds to wait for one phase's replies.",
    )] = None,
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Continue the run in --out from its newest checkpoint.",
    )] = False,
    host: Annotated[str, typer.Option(
        "--host",
        help="Address the SuperLink binds to.",
    )] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port",
        help="The SuperLink's HTTPS port (Fleet, Control, Runtime APIs).",
    )] = 9092,
    grid_poll: Annotated[float, typer.Option(
        "--grid-poll",
        help="Longest pause (s) between the ServerApp's pulls for replies.",
    )] = 0.5,
) -> None:
    """Start a SuperLink (TLS, SuperNode authentication) and run one federation on it."""
    from federation.config import from_flat, to_flat
    from federation.errors import ConfigError
    from simulations.deploy import DeployError, ServerOptions, serve

    out_dir = out.expanduser().resolve()
    given: dict[str, Any] = {
        "num-server-rounds": rounds, "num-clients": clients, "min-clients": min_clients,
        "partition": partition, "data-dir": data_dir, "local-epochs": local_epochs,
        "task": task, "batch-size": batch_size, "lr": lr, "momentum": momentum, "seed": seed,
        "dp-epsilon": dp_epsilon,
        "dp-noise": dp_noise, "dp-delta": dp_delta, "max-grad-norm": max_grad_norm,
        "dp-accountant": dp_accountant, "secure-aggregation": secure_aggregation,
        "defense": defense, "screen-quorum": screen_quorum, "max-malicious": max_malicious,
        "round-timeout": round_timeout,
    }
    given = {k: v for k, v in given.items() if v is not None}
    base: dict[str, Any] = {}
    if resume:
        saved = out_dir / "config.json"
        if not saved.exists():
            _fail(f"--resume: {saved} not found; is --out the folder of an earlier run?")
        base = dict(json.loads(saved.read_text(encoding="utf-8"))["flat"])
        changed = [k for k in _FIXED_ON_RESUME if k in given and given[k] != base.get(k)]
        if changed:
            _fail("--resume cannot change " + ", ".join(f"--{k}" for k in changed)
                  + " (the checkpoint was made with the saved values)")
    elif clients is None:
        from crypto.keys import load_server_bundle
        from federation.errors import FedguardError

        try:
            given["num-clients"] = load_server_bundle(keys.expanduser()).trainers
        except FedguardError as exc:
            _fail(f"--keys {keys}: {exc}")
    flat = {**base, **given, "out-dir": str(out_dir)}
    if not resume:  # on resume the saved settings are already complete
        from simulations.simulate import with_dp_recipe

        flat = with_dp_recipe(flat)
    if str(flat.get("secure-aggregation", "none")) == "ckks":
        flat["key-dir"] = str(keys.expanduser().resolve())
    try:
        cfg = from_flat(flat)
    except ConfigError as exc:
        _fail(f"--{exc.key}: {str(exc).split(': ', 1)[-1]}")
        raise
    dp = ("ε=" + str(cfg.dp.epsilon) if cfg.dp.epsilon
          else ("σ=" + str(cfg.dp.noise_multiplier)
                if cfg.dp.noise_multiplier else "off"))
    _say(f"fedguard server: {cfg.run.clients} clients (min {cfg.run.min_clients or 'all'}), "
         f"{cfg.run.rounds} rounds, DP {dp}, secure aggregation {cfg.secure.mode.value}, "
         f"defence {','.join(cfg.defense.defenses) or 'none'}, "
         f"data {cfg.data.data_dir or 'each client decides'}"
         + (", resuming" if resume else ""))
    _interrupt_on_sigterm()
    opts = ServerOptions(keys=keys.expanduser().resolve(), out_dir=out_dir, flat=to_flat(cfg),
                         host=host, port=port, resume=resume, grid_poll=grid_poll)
    try:
        code = serve(opts, _say)
    except DeployError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted: SuperLink stopped" + (
            f"; continue later with --resume --out {out_dir}"
            if (out_dir / "checkpoints").exists() else ""))
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def client(
    keys: Annotated[Path, typer.Option(
        "--keys",
        help="This trainer's bundle (DIR/trainer-i from `fedguard keys init`).",
    )],
    superlink: Annotated[str, typer.Option("--superlink", help="HOST:PORT of the SuperLink.")],
    partition_id: Annotated[int | None, typer.Option(
        "--partition-id",
        help="Local trials: which share of the run's data set to use.",
    )] = None,
    num_partitions: Annotated[int | None, typer.Option(
        "--num-partitions",
        help="Local trials: into how many shares it is split.",
    )] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir",
        help="This client's own Fashion-MNIST IDX folder.",
    )] = None,
    ledger: Annotated[Path | None, typer.Option(
        "--ledger",
        help="Privacy ledger file (default STATE_DIR/privacy-ledger.jsonl).",
    )] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir",
        help=("This client's Flower state and logs (default "
              "~/.fedguard/clients/<federation>-<trainer>)."),
    )] = None,
    port: Annotated[int, typer.Option(
        "--port",
        help="Local port for the SuperNode's ClientApp I/O (0: any free port).",
    )] = 0,
    max_wait_time: Annotated[float | None, typer.Option(
        "--max-wait-time",
        help="Give up after this many seconds without reaching the SuperLink (default: never).",
    )] = None,
    refused_retries: Annotated[int, typer.Option(
        "--refused-retries",
        help="How often to retry when the SuperLink refuses this node's key.",
    )] = 3,
    threads: Annotated[int | None, typer.Option(
        "--threads",
        help="Torch threads for local training (default 1).",
    )] = None,
    stock_supernode: Annotated[bool, typer.Option(
        "--stock-supernode",
        help="Run Flower's SuperNode as is (3 s idle polling, 30 s heartbeat).",
    )] = False,
    cold_start: Annotated[bool, typer.Option(
        "--cold-start",
        help=("Start every ClientApp as a fresh process (Flower's SuperExec) instead of forking "
              "a warm launcher."),
    )] = False,
) -> None:
    """Start a SuperNode for one trainer: TLS, its authentication key, data and privacy ledger."""
    from simulations.deploy import ClientOptions, DeployError, run_client

    keys = keys.expanduser().resolve()
    if state_dir is None:
        try:
            manifest = json.loads((keys / "manifest.json").read_text(encoding="utf-8"))
            label = f"{manifest.get('federation', 'fedguard')}-{manifest.get('name', keys.name)}"
        except (OSError, ValueError):
            label = keys.name
        state_dir = Path.home() / ".fedguard" / "clients" / label
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    opts = ClientOptions(
        keys=keys, superlink=superlink, state_dir=state_dir.expanduser().resolve(),
        partition_id=partition_id, num_partitions=num_partitions,
        data_dir=str(data_dir) if data_dir else None,
        ledger=ledger.expanduser().resolve() if ledger else None, port=port,
        max_wait_time=max_wait_time, refused_retries=refused_retries,
        fast_polling=not stock_supernode, warm_start=not cold_start, torch_threads=threads,
    )
    _say(f"fedguard client: state in {opts.state_dir}")
    try:
        code = run_client(opts, _say, stop)
    except DeployError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        stop.set()
        err.print("interrupted: SuperNode stopped")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the ``server`` and ``client`` commands to ``app`` (the ``fedguard`` command)."""
    app.command("server")(server)
    app.command("client")(client)


def _main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="fedguard real deployment: server and client processes.")
    register(app)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    _main()
