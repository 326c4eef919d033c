"""Run a federation locally on Flower's simulation engine (Ray backend), in this process.

The ServerApp runs in a thread of this process and the ClientApps in Ray workers, exactly the
apps that real deployments run (``server.app`` / ``clients.app``); simulated attackers are
composed into the ClientApp through hooks. A ServerApp failure is re-raised here, so the
command fails instead of reporting success.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.config import DP_RECIPE, FedConfig, to_flat
from federation.errors import ConfigError

if TYPE_CHECKING:
    from server.progress import RoundProgress


def with_dp_recipe(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings with the training keys not given (absent or None) taken from DP_RECIPE
    when DP is on (``dp-epsilon`` or ``dp-noise`` given); unchanged otherwise.

    :func:`federation.config.from_flat` applies the same rule itself; this stays for callers
    that want the filled flat mapping.
    """
    if flat.get("dp-epsilon") is None and flat.get("dp-noise") is None:
        return dict(flat)
    return {**flat, **{k: v for k, v in DP_RECIPE.items() if flat.get(k) is None}}

__all__ = ["DP_RECIPE", "SIM_CPUS_ENV", "quiet_flower", "simulate", "with_dp_recipe"]

SIM_CPUS_ENV = "FEDGUARD_SIM_CPUS"
"""A test-only knob: the Ray CPUs (= ClientApp actors) of a simulation whose caller gives no
``cpus``; unset, every core. The test suite sets 1 (tests/conftest.py): its pytest-xdist workers
already fill the cores, and each extra actor only repeats the torch / TenSEAL / Flower imports
(measured: 4 clients, 2 CKKS rounds, 32.8 CPU-s with two actors, 26.4 with one)."""


def _cpus_from_env() -> int | None:
    raw = os.environ.get(SIM_CPUS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(SIM_CPUS_ENV, f"got {raw!r}; allowed: a whole number >= 1")
    return int(raw)


def quiet_flower() -> None:
    """No telemetry, no runtime dependency installation, no Ray dashboard; quieter logs."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TMPDIR", str(Path(tempfile.gettempdir()) / "fedguard-ray"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("flwr").setLevel(logging.ERROR)


def simulate(
    cfg: FedConfig,
    *,
    progress: Callable[[str], None] | None = None,
    cpus: int | None = None,
    client_app: Any = None,
    display: RoundProgress | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` with ``cfg.run.clients`` simulated SuperNodes and return the run summary.

    ``cfg.run.out_dir`` must be absolute. ``cpus`` caps the Ray workers (default:
    ``$FEDGUARD_SIM_CPUS`` if set, else all cores; one client per core, one torch thread per
    client). With ``display``, every message phase
    shows on its live line and the round lines go through :meth:`RoundProgress.line`
    (``progress`` is then ignored); the caller starts and stops the display.
    """
    if cfg.run.clients < 1:  # 0 ("every connected node") has no meaning when we create them
        raise ConfigError("num-clients", "a simulation needs a number of clients (>= 1)")
    ncpu = cpus or _cpus_from_env() or os.cpu_count() or 1
    quiet_flower()
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)  # after import: Flower sets its own level

    from server.app import make_server_app

    if client_app is None:
        client_app = _client_app_for(cfg)
    if display is not None:
        server_app = make_server_app(to_flat(cfg), progress=display.line, grid_hook=display.watch)
    else:
        server_app = make_server_app(to_flat(cfg), progress=progress)
    backend: Mapping[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": ncpu, "num_gpus": 0, "include_dashboard": False,
                      # Worker output stays in Ray's log files ($RAY_TMPDIR/session_latest/logs):
                      # forwarded, every ClientAppActor adds a coloured "Manually terminating"
                      # warning at shutdown (Flower logs it, Opacus' root handler prints it).
                      # A failing client is still seen: its error reply is recorded with a reason.
                      "log_to_driver": False, "logging_level": logging.ERROR},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server_app, client_app=client_app,
                       num_supernodes=cfg.run.clients, backend_config=dict(backend))
    summary_path = Path(cfg.run.out_dir) / "summary.json"
    if not summary_path.exists():
        raise RuntimeError("the simulation ended without writing summary.json")
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary


def _client_app_for(cfg: FedConfig) -> Any:
    if cfg.attack.attack:
        from simulations.adversary import check_attack, make_adversarial_client_app, probes_trigger

        check_attack(cfg.attack.attack)  # the registry is the one list of attack names
        # attackers, or none but the backdoor's probe (the trigger's base rate without attack)
        if cfg.attack.malicious > 0 or probes_trigger(cfg):
            return make_adversarial_client_app(cfg)
    from clients.app import app

    return app
