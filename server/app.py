"""Flower entry point of the coordinator role: ``server.app:app`` (a ServerApp).

Reads Flower's flat run config into the typed tree once, picks the scheme (plaintext or
CKKS), runs :func:`server.loop.run_federation` and writes the run folder. Paths are absolute:
the ServerApp's working directory is the SuperLink's, not the user's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.config import FedConfig, SecureAggregation, from_flat, to_flat
from federation.tasks import build_model, flatten_params
from server.loop import RunResult, run_federation
from server.report import RunWriter, atomic_write, load_checkpoint
from server.schemes import PlaintextScheme, Scheme

__all__ = ["app", "default_out_dir", "make_server_app", "run_server"]

log = logging.getLogger("fedguard.server")


def default_out_dir() -> Path:
    """``./runs/run-YYYYmmdd-HHMMSS`` made absolute."""
    return (Path.cwd() / "runs" / time.strftime("run-%Y%m%d-%H%M%S")).resolve()


def make_scheme(cfg: FedConfig) -> Scheme:
    """The scheme for ``cfg.secure.mode`` with the public, seeded initial model."""
    initial = flatten_params(build_model(cfg.data.task, cfg.run.seed))
    if cfg.secure.mode is SecureAggregation.CKKS:
        from server.encrypted import CkksScheme

        return CkksScheme(initial, cfg)
    return PlaintextScheme(initial)


def run_server(
    grid: Grid,
    cfg: FedConfig,
    *,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the federation described by ``cfg`` on ``grid`` and write its run folder.

    With ``resume``, the newest checkpoint in ``cfg.run.out_dir`` is loaded and the run goes on
    from the round after it. Returns the summary that was written to ``summary.json``.
    """
    out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir else default_out_dir()
    if not out_dir.is_absolute():
        raise ValueError(f"out-dir must be an absolute path, got {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.json", json.dumps(
        {"config": cfg.to_dict(), "flat": to_flat(cfg)}, indent=2).encode())
    scheme = make_scheme(cfg)
    start = 1
    if resume:
        state = load_checkpoint(out_dir)
        if state is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out_dir / 'checkpoints'}")
        scheme.restore(state)
        start = int(state["round"]) + 1
        log.info("resuming after round %d from %s", start - 1, out_dir)
    writer = RunWriter(out_dir, cfg.run.rounds, progress)
    result: RunResult = run_federation(grid, cfg, scheme, observer=writer, start_round=start)
    if result.stopped_early:
        (progress or print)(f"stopped early: {result.stop_reason}")
    dim = int(flatten_params(build_model(cfg.data.task, cfg.run.seed)).shape[0])
    ups = [v for r in result.reports for v in r.bytes_up.values()]
    extra = {
        "secure_aggregation": cfg.secure.mode.value,
        "defense": list(cfg.defense.defenses) or ["none"],
        "num_parameters": dim,
        "upload_bytes_per_param": (sum(ups) / len(ups) / dim) if ups else None,
        "out_dir": str(out_dir),
    }
    return writer.finish(result, extra)


def make_server_app(overrides: Mapping[str, Any] | None = None,
                    progress: Callable[[str], None] | None = None,
                    resume: bool = False) -> ServerApp:
    """A ServerApp whose run config is ``context.run_config`` updated with ``overrides``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        flat = {**dict(context.run_config), **dict(overrides or {})}
        resume_flag = bool(flat.pop("resume", False)) or resume
        cfg = from_flat(flat)
        run_server(grid, cfg, resume=resume_flag, progress=progress)

    return server_app


app = make_server_app()
