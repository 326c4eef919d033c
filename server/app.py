"""Flower entry point of the coordinator role: ``server.app:app`` (a ServerApp).

Reads Flower's flat run config into the typed tree once, picks the scheme (plaintext or
CKKS), runs :func:`server.loop.run_federation` and writes the run folder. Paths are absolute:
the ServerApp's working directory is the SuperLink's, not the user's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.config import FedConfig, SecureAggregation, from_flat, to_flat
from federation.errors import ConfigError
from federation.tasks import build_model, flatten_params
from server.loop import RunResult, run_federation
from server.progress import FLOWER_PULL_WAIT, MAX_PULL_WAIT, PROGRESS_FILE, RoundProgress, polling
from server.report import RunWriter, atomic_write, load_checkpoint
from server.schemes import PlaintextScheme, Scheme

__all__ = ["PROJECT_DIR", "app", "default_out_dir", "fast_polling", "make_server_app",
           "resolve_for_run", "run_server"]

log = logging.getLogger("fedguard.server")


def default_out_dir() -> Path:
    """``./runs/run-YYYYmmdd-HHMMSS`` made absolute."""
    return (Path.cwd() / "runs" / time.strftime("run-%Y%m%d-%H%M%S")).resolve()


def make_scheme(cfg: FedConfig) -> Scheme[Any]:
    """The scheme for ``cfg.secure.mode`` with the public, seeded initial model.

    A ``Scheme[PlainUpdate]`` or a ``Scheme[EncryptedVector]``: which one is a run-time choice,
    and the loop that runs it is generic in the payload type either way.
    """
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
        raise ConfigError("out-dir", f"must be an absolute path here, got {out_dir} (the "
                          "ServerApp resolves a relative one against the project folder)")
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
    dim = scheme.dim
    ups = [v for r in result.reports for v in r.bytes_up.values()]
    extra = {
        "secure_aggregation": cfg.secure.mode.value,
        "defense": list(cfg.defense.defenses) or ["none"],
        "num_parameters": dim,
        "upload_bytes_per_param": (sum(ups) / len(ups) / dim) if ups else None,
        "out_dir": str(out_dir),
    }
    return writer.finish(result, extra)


GRID_POLL_ENV = "FEDGUARD_GRID_POLL_MAX"
"""Longest pause, in seconds, between two pulls of replies in a deployment (default
:data:`server.progress.MAX_PULL_WAIT`)."""


def fast_polling(grid: Grid) -> Grid:
    """``grid`` with fast reply polling if it is Flower's HTTP (deployment) grid, else ``grid``.

    The pause between pulls is at most ``$FEDGUARD_GRID_POLL_MAX`` seconds (default 0.5; 0 keeps
    Flower's fixed 3 s). Simulation grids and test fakes are returned unchanged.
    """
    from federation.flower_internals import http_grid_type

    grid_type = http_grid_type()  # None on another Flower version: keep its own polling
    if grid_type is None or not isinstance(grid, grid_type):
        return grid
    max_wait = poll_max_wait()
    if max_wait <= 0:
        return grid
    return cast(Grid, polling(grid, max_wait))


def poll_max_wait() -> float:
    """``$FEDGUARD_GRID_POLL_MAX`` clipped to [0.01, 3] s (default and for anything that is not a
    finite number: :data:`server.progress.MAX_PULL_WAIT`; 0 or less: 0, Flower's own 3 s)."""
    try:
        max_wait = float(os.environ.get(GRID_POLL_ENV, "") or MAX_PULL_WAIT)
    except ValueError:
        max_wait = MAX_PULL_WAIT
    if not math.isfinite(max_wait):
        max_wait = MAX_PULL_WAIT
    return 0.0 if max_wait <= 0 else min(max(max_wait, 0.01), FLOWER_PULL_WAIT)


PROJECT_DIR = Path(__file__).resolve().parents[1]
"""The folder of the app's ``pyproject.toml`` (a relative ``out-dir`` is resolved against it)."""


def resolve_for_run(cfg: FedConfig, grid: Any, settle: float = 2.0,
                    wait: float = 120.0) -> FedConfig:
    """``cfg`` made concrete for a ServerApp run, checked before anything is sent.

    * the task resolves and builds (every node will do the same; a bad ``task`` fails here
      with :class:`ConfigError` naming the key);
    * ``num-clients = 0`` becomes the number of nodes connected once their count has been
      stable for ``settle`` seconds (at most ``wait``);
    * a relative ``out-dir`` is resolved against :data:`PROJECT_DIR`.
    """
    from federation.tasks import resolve_task

    build_model(resolve_task(cfg.data.task), cfg.run.seed)
    flat = to_flat(cfg)
    if cfg.run.clients == 0:
        deadline, last, since = time.monotonic() + wait, -1, time.monotonic()
        while True:
            count = len(list(grid.get_node_ids()))
            now = time.monotonic()
            if count != last:
                last, since = count, now
            if (count > 0 and now - since >= settle) or now >= deadline:
                break
            time.sleep(0.2)
        if last <= 0:
            raise ConfigError("num-clients", "0 means every connected node, but none connected "
                              f"within {wait:.0f} s")
        flat["num-clients"] = last
        log.info("num-clients = 0: %d connected node(s)", last)
    if cfg.run.out_dir and not Path(cfg.run.out_dir).is_absolute():
        flat["out-dir"] = str((PROJECT_DIR / cfg.run.out_dir).resolve())
    return from_flat(flat)


def make_server_app(overrides: Mapping[str, Any] | None = None,
                    progress: Callable[[str], None] | None = None,
                    resume: bool = False,
                    grid_hook: Callable[[Grid], Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is ``context.run_config`` updated with ``overrides``.

    ``grid_hook`` wraps the Flower grid before the round loop sees it (e.g.
    :meth:`server.progress.RoundProgress.watch` for a live progress line); it replaces the
    fast reply polling of :func:`fast_polling`, so it must poll replies itself. Without one,
    a run with an ``out-dir`` writes its phase to ``progress.json`` there
    (:data:`server.progress.PROGRESS_FILE`; ``fedguard server`` draws its live line from it).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        flat = {**dict(context.run_config), **dict(overrides or {})}
        resume_flag = bool(flat.pop("resume", False)) or resume
        try:
            cfg = resolve_for_run(from_flat(flat), grid)
        except ConfigError as exc:  # one line naming the key, then a failed run
            print(f"fedguard: bad setting: {exc}", file=sys.stderr, flush=True)
            # Raised, not SystemExit: Flower marks a run whose ServerApp raises an Exception
            # `finished:failed` with the message as its details (what `flwr ls` and
            # `python -m simulations.flwr_run` report); a SystemExit slips past its handler
            # and the run reads `finished:completed`.
            raise exc from None
        if grid_hook is not None:
            watched = grid_hook(grid)
        elif cfg.run.out_dir:  # the phase for `fedguard server`'s live line and for operators
            status = Path(cfg.run.out_dir) / PROGRESS_FILE
            status.parent.mkdir(parents=True, exist_ok=True)
            watched = RoundProgress(cfg.run.rounds, live=False, status_file=status).watch(
                grid, max_wait=poll_max_wait())
        else:
            watched = fast_polling(grid)
        run_server(watched, cfg, resume=resume_flag, progress=progress)

    return server_app


app = make_server_app()
