"""The ``fedguard`` command.

``fedguard simulate`` runs a local federation on Flower's simulation engine; ``fedguard bench``
measures; ``fedguard keys`` provisions key material; ``fedguard server`` / ``fedguard client``
run real SuperLink / SuperNode processes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from federation.config import FedConfig, from_flat
from federation.errors import ConfigError, FedguardError
from server.progress import RoundProgress
from simulations import options as opt
from simulations.attacks import ATTACKS
from simulations.simulate import DP_RECIPE, with_dp_recipe

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedguard: private, encrypted, poisoning-resistant federated training.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON output).")
keys_app = typer.Typer(no_args_is_help=True, help="Key material for real deployments.")
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(no_args_is_help=True, help="Run folders' tamper-evident audit logs.")
app.add_typer(audit_app, name="audit")
console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def build_config(flat: dict[str, Any]) -> FedConfig:
    """Flat CLI values (None = not given) into a validated config, or exit with the key named."""
    try:
        cfg = from_flat({k: v for k, v in flat.items() if v is not None})
        if cfg.attack.attack:  # attack names live in the registry, not in the config tree
            from simulations.adversary import check_attack

            check_attack(cfg.attack.attack)
        return cfg
    except ConfigError as exc:
        _fail(f"{opt.flag_for(exc.key)}: {str(exc).split(': ', 1)[1]}")
        raise  # unreachable


def resolve_out(out: Path | None, name: str) -> Path:
    base = out if out is not None else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return base.expanduser().resolve()


@app.command()
def simulate(
    clients: opt.Clients = 3,
    rounds: opt.Rounds = 3,
    partition: opt.Partition = "dirichlet:0.5",
    task: opt.Task = None,
    local_epochs: opt.LocalEpochs = 1,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    momentum: opt.Momentum = None,
    seed: opt.Seed = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/sim-TIME).")] = None,
    data_dir: opt.DataDir = None,
    dp_epsilon: opt.DpEpsilon = None,
    dp_noise: opt.DpNoise = None,
    dp_delta: opt.DpDelta = None,
    max_grad_norm: opt.MaxGradNorm = None,
    dp_accountant: opt.DpAccountant = None,
    secure_aggregation: opt.SecureAggregation = "none",
    defense: opt.Defense = "none",
    screen_quorum: opt.ScreenQuorum = None,
    screen_norm_bound: opt.ScreenNormBound = None,
    max_malicious: opt.MaxMalicious = None,
    malicious: Annotated[float, typer.Option("--malicious", help="Fraction of attacking clients.")] = 0.0,
    attack: Annotated[str | None, typer.Option("--attack", help=" | ".join(ATTACKS))] = None,
    min_clients: opt.MinClients = None,
) -> None:
    """Run a local multi-client simulation and write metrics, summary and plots to --out.

    With DP on (--dp-epsilon or --dp-noise), training flags that are not given take the DP
    recipe (tanh CNN, batch 512, lr 4, no momentum, clipping at 0.5) instead of the plain defaults.
    """
    out_dir = resolve_out(out, "sim")
    cfg = build_config(with_dp_recipe({**opt.flat_from_flags({
        "--clients": clients, "--rounds": rounds, "--partition": partition, "--task": task,
        "--local-epochs": local_epochs, "--batch-size": batch_size, "--lr": lr,
        "--momentum": momentum, "--seed": seed, "--data-dir": data_dir,
        "--dp-epsilon": dp_epsilon, "--dp-noise": dp_noise, "--dp-delta": dp_delta,
        "--max-grad-norm": max_grad_norm, "--dp-accountant": dp_accountant,
        "--secure-aggregation": secure_aggregation, "--defense": defense,
        "--screen-quorum": screen_quorum, "--screen-norm-bound": screen_norm_bound,
        "--max-malicious": max_malicious,
        "--malicious": malicious, "--attack": attack, "--min-clients": min_clients,
    }), "out-dir": str(out_dir)}))
    summary = run_simulation_cli(cfg)
    console.print(f"final accuracy: [bold]{_pct(summary.get('final_accuracy'))}[/]  "
                  f"rounds: {summary['rounds_completed']}  run folder: {out_dir}")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def run_simulation_cli(cfg: FedConfig, *, header: bool = True) -> dict[str, Any]:
    """Run a simulation with a header (unless ``header`` is False), a live progress line and one
    line per round; exit non-zero on failure."""
    from federation.data import load_fashion_mnist
    from federation.tasks import FASHION_MNIST, FASHION_MNIST_TANH, build_model, resolve_task
    from simulations.simulate import simulate as run_sim

    try:  # the same resolution every Ray worker will do: fail here, naming the key
        task = resolve_task(cfg.data.task)
        build_model(task, cfg.run.seed)
    except ConfigError as exc:
        _fail(f"--{exc.key}: {str(exc).split(': ', 1)[1]}")
    source = f"the task's own ({task.name})"
    try:
        if task in (FASHION_MNIST, FASHION_MNIST_TANH):
            source = load_fashion_mnist(cfg.data.data_dir or None).source
    except FedguardError as exc:
        _fail(str(exc))
    if header:
        dp = ("ε=" + str(cfg.dp.epsilon) if cfg.dp.epsilon
              else ("σ=" + str(cfg.dp.noise_multiplier) if cfg.dp.noise_multiplier else "off"))
        console.print(
            f"[bold]fedguard simulate[/]: {cfg.run.clients} clients, {cfg.run.rounds} rounds, "
            f"partition {cfg.data.partition}, data {source}, DP {dp}, "
            f"secure aggregation {cfg.secure.mode.value}, defence {','.join(cfg.defense.defenses) or 'none'}"
            + (f", attack {cfg.attack.attack} ({cfg.attack.malicious:.0%})" if cfg.attack.attack else "")
        )
        t = cfg.train
        console.print(f"training: {cfg.data.task}, {t.local_epochs} local epoch(s), batch {t.batch_size}, "
                      f"lr {t.lr:g}, momentum {t.momentum:g}"
                      + (f", clipping {cfg.dp.max_grad_norm:g}" if cfg.dp.enabled else ""))
    console.print(f"run folder: {cfg.run.out_dir}")
    try:
        with RoundProgress(cfg.run.rounds, console=console) as display:
            return run_sim(cfg, display=display)
    except Exception as exc:
        _fail(f"the federation failed: {type(exc).__name__}: {exc}", code=1)
        raise






@app.command()
def demo(
    rounds: Annotated[int | None, typer.Option("--rounds", min=1, help="Rounds per run (default: 3 on the full set, 8 on the bundled subset).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Parent folder of the three run folders (default runs/demo-TIME).")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Fashion-MNIST IDX folder, or 'subset' for the bundled subset.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the initial model, the attackers and DP noise.")] = 0,
    install_data: Annotated[bool, typer.Option("--install-data/--no-install-data", help="When the full set is missing and this runs as root with apt-get, install dataset-fashion-mnist.")] = True,
) -> None:
    """The flagship: DP + CKKS with 20 % attackers, attack-free vs unfiltered vs encrypted filter.

    Runs three federations and ends with a table (accuracy, who was rejected, ε spent, upload
    bytes per parameter, run folders); DEMO_FOLDER/report.html shows the three curves in one plot.
    """
    from simulations import demo as D

    parent = resolve_out(out, "demo")
    try:
        profile, chosen_dir = D.pick_profile(data_dir, lambda m: console.print(f"[yellow]note:[/] {m}"),
                                             allow_install=install_data)
    except FedguardError as exc:
        _fail(f"--data-dir: {exc}")
        raise
    sizes = D.PROFILES[profile]
    console.print(f"[bold]fedguard demo[/] on the {'full Fashion-MNIST set' if profile == 'full' else 'bundled subset'}: "
                  f"{sizes['num-clients']} clients ({sizes['malicious']:.0%} attacking with {D.ATTACK}), "
                  f"DP ε = {sizes['dp-epsilon']:g} per client, CKKS aggregation; three runs, seed {seed}")

    def run(label: str, cfg: FedConfig) -> dict[str, Any]:
        console.print(f"\n[bold]{label}[/]")
        return run_simulation_cli(cfg, header=False)

    runs = D.run_demo(profile, parent, seed=seed, rounds=rounds, data_dir=chosen_dir, run=run)
    console.print()
    console.print(D.render_table(runs), markup=False)
    console.print(D.verdict(runs))
    console.print(f"report: {parent / 'report.html'}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (with metrics.jsonl), e.g. runs/sim-20261201-120000.")],
) -> None:
    """(Re)write RUN_DIR/report.html: a self-contained page of the run's rounds, ε, filter decisions and costs."""
    from server.html_report import write_report

    try:
        path = write_report(run_dir.expanduser().resolve())
    except FileNotFoundError as exc:
        _fail(f"RUN_DIR: {exc}")
        raise
    console.print(f"written: {path}")


@bench_app.command("dp")
def bench_dp_cmd(
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")] = Path("runs/bench-dp.json"),
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes (seconds, for a smoke test).")] = False,
    federated: Annotated[bool, typer.Option("--federated/--no-federated", help="Also run the federated task at ε 1, 3, 8 (10 clients, Dirichlet 0.5, 40 rounds; ~7 min per ε on 2 cores).")] = False,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of each federated run.")] = 40,
) -> None:
    """DP-SGD vs non-private epoch time (side by side), accuracy at ε ∈ {1, 3, 8}."""
    from simulations.bench_dp import bench_dp
    from simulations.simulate import simulate as run_sim

    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    result = bench_dp(None if federated else out, quick=quick)  # written once, below or there
    if federated:
        runs = []
        for eps in (1.0, 3.0, 8.0):
            cfg = build_config(with_dp_recipe({
                "num-clients": 10, "num-server-rounds": rounds, "partition": "dirichlet:0.5",
                "dp-epsilon": eps, "out-dir": str(out.parent / f"{out.stem}-federated-eps{eps:g}")}))
            err.print(f"[bench dp] federated ε={eps:g}: {cfg.run.clients} clients, {rounds} rounds")
            with RoundProgress(rounds, console=err, prefix="  ") as display:
                summary = run_sim(cfg, display=display)
            runs.append({"target_epsilon": eps, "max_epsilon": summary["max_epsilon"],
                         "final_accuracy": summary["final_accuracy"],
                         "accuracy_by_round": summary["accuracy_by_round"],
                         "rounds_completed": summary["rounds_completed"], **DP_RECIPE})
        result["federated_accuracy_at_epsilon"] = {
            "setting": "10 clients, Dirichlet(0.5), per-client (ε, δ=1e-5) for the whole run",
            "runs": runs}
        out.write_text(json.dumps(result, indent=2) + "\n")
    console.print_json(json.dumps(result))
    console.print(f"written: {out}")


@bench_app.command("models")
def bench_models_cmd(
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")] = Path("runs/bench-models.json"),
    task: Annotated[list[str] | None, typer.Option("--task", help="Model size(s): resnet-1m, resnet-10m.")] = None,
    clients: Annotated[int, typer.Option("--clients")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds per simulation (resnet-10m: 1, CKKS only).")] = 3,
    local_epochs: Annotated[list[int] | None, typer.Option(
        "--local-epochs", min=1, help="Local epochs per round, one plaintext/CKKS pair each (repeatable; default 1 and 4).")] = None,
) -> None:
    """Per model size: DP/plain epoch, fused-engine coverage, encrypted/plaintext round, memory."""
    from simulations.bench_dp import bench_models

    out = out.expanduser().resolve()
    result = bench_models(out, tasks=tuple(task or ("resnet-1m", "resnet-10m")), clients=clients,
                          rounds=rounds, local_epochs=tuple(local_epochs or (1, 4)))
    console.print_json(json.dumps(result))
    console.print(f"written: {out}")


@bench_app.command("crypto")
def bench_crypto_cmd(
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")] = Path("runs/bench-crypto.json"),
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes (seconds, for a smoke test).")] = False,
    rounds: Annotated[bool, typer.Option("--rounds/--no-rounds", help="Also time plaintext vs CKKS rounds (minutes).")] = True,
) -> None:
    """CKKS bytes per parameter, encrypt/aggregate/decrypt throughput, screening cost, round time."""
    from simulations.bench_crypto import bench_crypto_all

    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    result = bench_crypto_all(quick=quick, rounds=rounds)
    out.write_text(json.dumps(result, indent=2))
    console.print_json(json.dumps(result))
    console.print(f"written: {out}")


@keys_app.command("init")
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="Directory to create.")],
    trainers: Annotated[int, typer.Option("--trainers", min=1, max=1000)],
    preset: Annotated[str, typer.Option("--preset", help="aggregation (the only preset for new keys)")] = "aggregation",
    host: Annotated[list[str] | None, typer.Option("--host", help="SuperLink host name/IP for the TLS certificate (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Provision a federation: CKKS keys (sealed per trainer), TLS material, SuperNode auth keys."""
    from crypto import Preset, SecretContext
    from crypto.keys import provision_federation, read_passphrase

    presets = {"aggregation": Preset.AGGREGATION}
    if preset == "screening":  # old key folders still load; new ones never lose the check
        _fail("--preset: 'screening' is retired: its uploads cannot be validity-checked "
              "(docs/soundness.md); use aggregation")
    if preset not in presets:
        _fail(f"--preset: got {preset!r}; allowed: {' | '.join(presets)}")
    try:
        passphrase = read_passphrase(confirm=True)
        secret = SecretContext.generate(presets[preset])
        public = secret.public()
        result = provision_federation(
            out.expanduser().resolve(), trainers, passphrase,
            ckks_secret=secret.to_bytes(), ckks_public=public.to_bytes(),
            fingerprint=secret.fingerprint,
            hosts=tuple(host) if host else ("127.0.0.1", "localhost"), overwrite=overwrite,
        )
    except FedguardError as exc:
        _fail(str(exc))
        raise
    console.print(f"provisioned {trainers} trainer bundle(s) and the server bundle in {result.out_dir}")
    console.print(f"CKKS preset {preset}, key fingerprint {secret.fingerprint}")
    for d in result.trainer_dirs:
        console.print(f"  trainer bundle: {d}")
    console.print(f"  server bundle:  {result.server_dir}")


@app.command()
def scenarios(
    matrix: Annotated[str, typer.Option("--matrix", help="small (52 runs, ~30 min) | full (the target setting, 52 runs, over 2 h)")] = "small",
    out: Annotated[Path | None, typer.Option("--out")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run scenarios whose name contains this (repeatable).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Run every scenario again instead of resuming from --out/results.json.")] = False,
) -> None:
    """Attacks x defences x (plaintext, CKKS): a markdown table and JSON of accuracy and backdoor success."""
    from simulations.scenarios import MATRICES, run_matrix

    if matrix not in MATRICES:
        _fail(f"--matrix: got {matrix!r}; allowed: {' | '.join(MATRICES)}")
    out_dir = resolve_out(out, f"scenarios-{matrix}")
    from simulations.simulate import quiet_flower

    quiet_flower()
    try:
        rows = run_matrix(matrix, out_dir, progress=lambda line: console.print(line, markup=False),
                          only=only, fresh=fresh, console=console)
    except ValueError as e:
        _fail(str(e))
    from server.html_report import write_comparison

    page = write_comparison(out_dir / "report.html",
                            [(r["scenario"], Path(r["run_folder"])) for r in rows
                             if (Path(r["run_folder"]) / "metrics.jsonl").is_file()],
                            title=f"fedguard scenarios ({matrix})",
                            table=(out_dir / "results.md").read_text())
    console.print((out_dir / "results.md").read_text(), markup=False)
    console.print(f"report: {page}")
    console.print(f"{len(rows)} scenario(s); results in {out_dir}")


@audit_app.command("verify")
def audit_verify(run_dir: Annotated[Path, typer.Argument(help="A run folder (holds audit.jsonl).")]) -> None:
    """Check the hash chain of RUN_DIR/audit.jsonl; report the first broken link (exit 1)."""
    from server.audit import verify_log

    log_path = run_dir / "audit.jsonl"
    if not log_path.is_file():
        _fail(f"RUN_DIR: no audit.jsonl in {run_dir}")
    summary_path = run_dir / "summary.json"
    expected = None
    if summary_path.is_file():
        try:
            expected = json.loads(summary_path.read_text())
        except ValueError:
            _fail(f"RUN_DIR: {summary_path} is not JSON")
    report = verify_log(log_path, expected if isinstance(expected, dict) else None)
    if report.ok:
        console.print(f"audit chain intact: {report.entries} entries, head {report.head[:16]}")
        return
    console.print(f"audit chain broken at line {report.line}: {report.reason}")
    raise typer.Exit(1)


def _register_deploy_commands() -> None:
    from simulations.cli_deploy import register

    register(app)


_register_deploy_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
