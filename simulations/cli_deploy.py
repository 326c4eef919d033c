"""``fedguard server`` and ``fedguard client``: the command-line wiring of a real deployment.

Only the wiring lives here (flags, validation of flag combinations, messages, exit codes):
the launchers are the roles' own, :mod:`server.deploy` (SuperLink side) and
:mod:`clients.deploy` (SuperNode side); the options shared with ``fedguard simulate`` come
from :mod:`simulations.options`. :func:`register` adds both commands to the ``fedguard`` Typer
app; ``python -m simulations.cli_deploy`` runs the two commands alone.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from server.progress import MAX_PULL_WAIT
from simulations import options as opt

if TYPE_CHECKING:
    from server.deploy import ServerOptions

__all__ = ["register"]

console = opt.console()
err = opt.console(stderr=True)

# Flat run-config keys a resumed run may not change (they shape the model or the split).
_FIXED_ON_RESUME = ("num-clients", "seed", "task", "partition", "secure-aggregation", "dp-epsilon",
                    "dp-noise", "dp-delta", "max-grad-norm", "dp-accountant", "local-epochs",
                    "batch-size")


def _say(line: str) -> None:
    console.print(line, markup=False)


def _serve_with_progress(opts: ServerOptions, rounds: int) -> int:
    """``serve(opts)`` with the live phase line the ServerApp reports in the run folder.

    The round loop runs in Flower's ``flwr-serverapp`` process; it writes its phase to
    ``progress.json`` (:mod:`server.progress`) and a thread here draws it under the printed
    lines, four times a second (nothing is drawn when the console is not a terminal).
    """
    from server.deploy import serve
    from server.progress import PROGRESS_FILE, RoundProgress

    status = opts.out_dir / PROGRESS_FILE
    status.unlink(missing_ok=True)  # a previous incarnation's phase is not this run's
    display = RoundProgress(max(rounds, 1), console=console)
    done = threading.Event()

    def follow() -> None:
        while not done.wait(0.25):
            display.follow(status)

    with display:
        watcher = threading.Thread(target=follow, name="fedguard-progress", daemon=True)
        watcher.start()
        try:
            return serve(opts, display.line)
        finally:
            done.set()
            watcher.join()


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False)
    raise typer.Exit(code)


def _interrupt_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _trainers(keys: Path) -> int:
    """How many trainers the server bundle provisions (the default of --clients)."""
    from crypto.keys import load_server_bundle
    from federation.errors import FedguardError

    try:
        return int(load_server_bundle(keys.expanduser()).trainers)
    except FedguardError as exc:
        _fail(f"--keys {keys}: {exc}")


def _server_flat(keys: Path, out_dir: Path, resume: bool, given: dict[str, Any]) -> dict[str, Any]:
    """The run's flat config from the flags given (and, with ``--resume``, the saved run)."""
    base: dict[str, Any] = {}
    if resume:
        saved = out_dir / "config.json"
        if not saved.exists():
            _fail(f"--resume: {saved} not found; is --out the folder of an earlier run?")
        try:
            base = dict(json.loads(saved.read_text(encoding="utf-8"))["flat"])
        except (ValueError, KeyError, TypeError):
            _fail(f"--resume: {saved} is not a fedguard run config")
        changed = [k for k in _FIXED_ON_RESUME if k in given and given[k] != base.get(k)]
        if changed:
            _fail("--resume cannot change " + ", ".join(opt.flag_for(k) for k in changed)
                  + " (the checkpoint was made with the saved values)")
    flat = opt.fit_quorum({**base, **given, "out-dir": str(out_dir)})
    if not resume:  # on resume the saved settings are already complete
        from simulations.simulate import with_dp_recipe

        flat = with_dp_recipe(flat)
    if str(flat.get("secure-aggregation", "none")) == "ckks":
        flat["key-dir"] = str(keys.expanduser().resolve())
    return flat


def server(
    keys: opt.KeysDir = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run folder: metrics, checkpoints, summary, Flower state.")] = None,
    rounds: opt.Rounds = None,
    clients: opt.Clients = None,
    min_clients: opt.MinClients = None,
    partition: opt.Partition = None,
    data_dir: opt.DataDir = None,
    local_epochs: opt.LocalEpochs = None,
    task: opt.Task = None,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    momentum: opt.Momentum = None,
    seed: opt.Seed = None,
    dp_epsilon: opt.DpEpsilon = None,
    dp_noise: opt.DpNoise = None,
    dp_delta: opt.DpDelta = None,
    max_grad_norm: opt.MaxGradNorm = None,
    dp_accountant: opt.DpAccountant = None,
    secure_aggregation: opt.SecureAggregation = None,
    defense: opt.Defense = None,
    screen_quorum: opt.ScreenQuorum = None,
    max_malicious: opt.MaxMalicious = None,
    round_timeout: opt.RoundTimeout = None,
    rejoin_wait: opt.RejoinWait = None,
    client_wait: Annotated[float, typer.Option(
        "--client-wait", min=1.0,
        help="Seconds to wait for the clients before the run starts: it starts when all are "
        "connected, or after this wait with those that are; none: exit code 4.")] = 300.0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its newest checkpoint.")] = False,
    host: Annotated[str, typer.Option("--host", help="Address the SuperLink binds to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", min=1, max=65535,
        help="The SuperLink's HTTPS port (Fleet, Control, Runtime APIs).")] = 9092,
    grid_poll: Annotated[float, typer.Option(
        "--grid-poll", min=0.0, max=3.0,
        help="Longest pause (s) between the ServerApp's pulls for replies (0: Flower's 3 s).")] = MAX_PULL_WAIT,
) -> None:
    """Start a SuperLink (TLS, SuperNode authentication) and run one federation on it.

    Exit codes: 0 completed, 1 ServerApp failed or stopped early, 2 usage or configuration
    error, 3 SuperLink failed, 4 no client connected (--client-wait), 130 interrupted.
    """
    from federation.config import from_flat, to_flat
    from federation.errors import ConfigError
    from federation.processes import DeployError
    from server.deploy import ServerOptions

    if keys is None:
        _fail("--keys is required (the server bundle: DIR/server from `fedguard keys init`)")
    if out is None:
        _fail("--out is required (the run folder; with --resume, the folder of the earlier run)")
    out_dir = out.expanduser().resolve()
    if clients is None and not resume:
        clients = _trainers(keys)
    given = opt.flat_from_flags({
        "--rounds": rounds, "--clients": clients, "--min-clients": min_clients,
        "--partition": partition, "--data-dir": data_dir, "--local-epochs": local_epochs,
        "--task": task, "--batch-size": batch_size, "--lr": lr, "--momentum": momentum,
        "--seed": seed, "--dp-epsilon": dp_epsilon, "--dp-noise": dp_noise,
        "--dp-delta": dp_delta, "--max-grad-norm": max_grad_norm,
        "--dp-accountant": dp_accountant, "--secure-aggregation": secure_aggregation,
        "--defense": defense, "--screen-quorum": screen_quorum,
        "--max-malicious": max_malicious, "--round-timeout": round_timeout,
        "--rejoin-wait": rejoin_wait,
    })
    flat = _server_flat(keys, out_dir, resume, given)
    try:
        cfg = from_flat(flat)
    except ConfigError as exc:
        _fail(f"{opt.flag_for(exc.key)}: {str(exc).split(': ', 1)[-1]}")
    dp = ("ε=" + str(cfg.dp.epsilon) if cfg.dp.epsilon
          else ("σ=" + str(cfg.dp.noise_multiplier)
                if cfg.dp.noise_multiplier else "off"))
    _say(f"fedguard server: {cfg.run.clients} clients (min {cfg.run.min_clients or 1}), "
         f"{cfg.run.rounds} rounds, DP {dp}, secure aggregation {cfg.secure.mode.value}, "
         f"defence {','.join(cfg.defense.defenses) or 'none'}, "
         f"data {cfg.data.data_dir or 'each client decides'}"
         + (", resuming" if resume else ""))
    _interrupt_on_sigterm()
    opts = ServerOptions(keys=keys.expanduser().resolve(), out_dir=out_dir, flat=to_flat(cfg),
                         host=host, port=port, resume=resume, grid_poll=grid_poll,
                         client_wait=client_wait)
    try:
        code = _serve_with_progress(opts, cfg.run.rounds)
    except DeployError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted: SuperLink stopped" + (
            f"; continue later with --resume --out {out_dir}"
            if (out_dir / "checkpoints").exists() else ""), markup=False)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def client(
    keys: opt.KeysDir = None,
    superlink: Annotated[str | None, typer.Option(
        "--superlink", help="HOST:PORT of the SuperLink.")] = None,
    partition_id: Annotated[int | None, typer.Option(
        "--partition-id", help="Local trials: which share of the run's data set to use.")] = None,
    num_partitions: Annotated[int | None, typer.Option(
        "--num-partitions", help="Local trials: into how many shares it is split.")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="This client's own Fashion-MNIST IDX folder.")] = None,
    ledger: Annotated[Path | None, typer.Option(
        "--ledger", help="Privacy ledger file (default STATE_DIR/privacy-ledger.jsonl).")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help=("This client's Flower state and logs (default "
                             "~/.fedguard/clients/<federation>-<trainer>).")
    )] = None,
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535,
        help="Local port for the SuperNode's ClientApp I/O (0: any free port).")] = 0,
    max_wait_time: Annotated[float | None, typer.Option(
        "--max-wait-time",
        help="Give up after this many seconds without reaching the SuperLink (default: never).",
    )] = None,
    refused_retries: Annotated[int, typer.Option(
        "--refused-retries", min=0,
        help="How often to retry when the SuperLink refuses this node (5, 10, 20, 30 s apart).",
    )] = 3,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Torch threads for local training (default 1).")] = None,
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
    """Start a SuperNode for one trainer: TLS, its authentication key, data and privacy ledger.

    Exit codes: 0 stopped (SIGTERM), 2 usage or bundle error (wrong passphrase included),
    3 refused by the SuperLink, 4 TLS failure, 5 SuperLink unreachable (--max-wait-time),
    130 interrupted.
    """
    from clients.deploy import ClientOptions, run_client
    from federation.processes import DeployError

    if keys is None:
        _fail("--keys is required (this trainer's bundle: DIR/trainer-<i>)")
    if superlink is None:
        _fail("--superlink HOST:PORT is required (the server's address)")
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
        err.print("interrupted: SuperNode stopped", markup=False)
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
