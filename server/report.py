"""What a run leaves on disk: metrics.jsonl, audit.jsonl, checkpoints, summary.json, plots.

The round loop hands events to :class:`RunWriter` (a :class:`server.loop.RunObserver`); all
file I/O of the server role happens here. Files are written so that a crash loses at most
the line being written: JSON lines are flushed and fsynced, whole files are written to a
temporary name and renamed.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from server.audit import AuditLog
from server.loop import RoundReport, RunResult

__all__ = ["RunWriter", "atomic_write", "checkpoint_files", "format_round", "integer_rounds",
           "load_checkpoint", "plot_run", "read_rows"]

log = logging.getLogger("fedguard.server")


def format_round(row: Mapping[str, Any], total: int, *, detail: bool = False) -> str:
    """The one-line progress of a ``metrics.jsonl`` row (simulations and deployments alike).

    ``detail`` adds the clients not counted (with why) and the phase timings.
    """
    rejected = row.get("rejected") or {}
    text = (f"round {row.get('round'):>3}/{total}  acc {_fmt(row.get('accuracy'), '.4f')}  "
            f"loss {_fmt(row.get('loss'), '.4f')}  ")
    if row.get("max_epsilon") is not None:
        text += f"max ε {row['max_epsilon']:.3f}  "
    text += f"accepted {len(row.get('accepted') or [])}/{row.get('sampled')}"
    if rejected:
        text += f" (rejected {len(rejected)})"
    if row.get("eval_asr") is not None:
        text += f"  backdoor {row['eval_asr']:.3f}"
    refused = row.get("refused") or {}
    if detail and refused:
        text += "  not counted: " + "; ".join(f"node {k} ({v[:90]})" for k, v in refused.items())
    text += f"  {_fmt(row.get('seconds'), '.1f')}s"
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in (row.get("timings") or {}).items()
                       if k in ("train-phase", "screen", "aggregate") and v >= 0.05)
    return text + (f" ({phases})" if detail and phases else "")


def checkpoint_files(out_dir: Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first (empty when there are none)."""
    return sorted((out_dir / "checkpoints").glob("round-*.npz"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (all or nothing)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _append_line(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, sort_keys=True, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o).__name__)


def _fmt(v: float | None, spec: str) -> str:
    return "  n/a " if v is None else format(v, spec)


class RunWriter:
    """Writes a run folder and prints one progress line per round.

    Layout of ``out_dir``: ``config.json`` (written by the caller), ``metrics.jsonl``,
    ``audit.jsonl`` (append-only decisions and refusals), ``checkpoints/round-NNNN.npz``,
    ``summary.json``, ``accuracy.png``, with DP ``epsilon.png``, and ``report.html`` (the
    self-contained run report of :mod:`server.html_report`).
    """

    def __init__(self, out_dir: Path, total_rounds: int,
                 progress: Callable[[str], None] | None = None) -> None:
        self.out_dir = out_dir
        self.total_rounds = total_rounds
        self.progress = progress or (lambda line: print(line, flush=True))
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / "metrics.jsonl"
        self.audit_path = out_dir / "audit.jsonl"
        self.started = time.time()
        self.audit = AuditLog(self.audit_path, {"run": out_dir.name, "time": round(self.started, 3)})

    def on_round(self, report: RoundReport) -> None:
        row = report.to_json()
        row["wall_time"] = round(time.time() - self.started, 3)
        _append_line(self.metrics_path, row)
        self.progress(format_round(row, self.total_rounds))

    def on_audit(self, entry: dict[str, Any]) -> None:
        self.audit.append({"time": round(time.time(), 3), **entry})

    def on_checkpoint(self, round_: int, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {
            k: (np.frombuffer(v, dtype=np.uint8) if isinstance(v, bytes) else np.asarray(v))
            for k, v in state.items()}
        np.savez(buf, allow_pickle=False, **arrays)
        atomic_write(self.out_dir / "checkpoints" / f"round-{round_:04d}.npz", buf.getvalue())
        # Keep the two newest checkpoints: enough to resume, bounded on disk.
        olds = checkpoint_files(self.out_dir)[:-2]
        for old in olds:
            old.unlink(missing_ok=True)

    def rows(self) -> list[dict[str, Any]]:
        """Every round line of ``metrics.jsonl`` (earlier runs of a resumed run included)."""
        return read_rows(self.metrics_path)

    def finish(self, result: RunResult, extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` and the plots from every round of ``metrics.jsonl``."""
        rows = self.rows()
        acc = [r.get("accuracy") for r in rows]
        eps_by_client: dict[str, float] = {}
        for r in rows:
            eps_by_client.update(r.get("epsilon_by_client") or {})
        summary: dict[str, Any] = {
            "rounds_completed": result.rounds_completed,
            "stopped_early": result.stopped_early,
            "stop_reason": result.stop_reason,
            "final_accuracy": next((a for a in reversed(acc) if a is not None), None),
            "final_loss": next((r["loss"] for r in reversed(rows) if r.get("loss") is not None), None),
            "accuracy_by_round": acc,
            "loss_by_round": [r.get("loss") for r in rows],
            "rejected_by_round": [r.get("rejected", {}) for r in rows],
            "epsilon_by_client": eps_by_client,
            "max_epsilon": max(eps_by_client.values(), default=None),
            "attack_success_rate": next((r["eval_asr"] for r in reversed(rows) if "eval_asr" in r), None),
            "attack_success_rate_by_round": [r.get("eval_asr") for r in rows],
            "trigger_flip_rate": next((r["eval_asr-flip"] for r in reversed(rows) if "eval_asr-flip" in r),
                                      None),
            "wall_seconds": round(time.time() - self.started, 2),
            "seconds_per_round": [r.get("seconds") for r in rows],
            "rolled_back_rounds": sorted({int(r["round"]) for r in rows if r.get("rolled_back")}
                                         | set(result.rolled_back_rounds)),
            "audit_entries": self.audit.entries,
            "audit_head": self.audit.head,
            **extra,
        }
        atomic_write(self.out_dir / "summary.json",
                     json.dumps(summary, indent=2, default=_json_default).encode())
        try:
            plot_run(self.out_dir, rows)
        except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished run
            log.warning("could not draw plots: %s", exc)
        try:
            from server.html_report import write_report

            write_report(self.out_dir)
        except Exception as exc:  # noqa: BLE001 - nor may the report page
            log.warning("could not write report.html: %s", exc)
        return summary


def read_rows(metrics_path: Path) -> list[dict[str, Any]]:
    """The round lines of a ``metrics.jsonl``, one per round, in round order.

    A resumed run re-evaluates its last checkpointed round (a line with a ``note``): its
    accuracy, loss and ``eval_*`` values update that round's line instead of replacing it.
    A missing file reads as no rounds; a torn last line (a crash mid-write) is skipped.
    """
    by_round: dict[int, dict[str, Any]] = {}
    if not metrics_path.exists():
        return []
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            k = int(row["round"])
        except (ValueError, KeyError, TypeError):
            continue
        if row.get("note") and k in by_round:  # a resumed run's evaluation of round k
            by_round[k].update({key: v for key, v in row.items()
                                if key in ("accuracy", "loss") or key.startswith("eval_")})
        else:
            by_round[k] = row
    return [by_round[k] for k in sorted(by_round)]


def integer_rounds(ax: Any, rounds: list[int]) -> None:
    """A matplotlib round axis with whole-number ticks only (there is no round 1.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if rounds:
        ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    ax.set_xlabel("round")


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint of a run folder, or None."""
    files = checkpoint_files(out_dir)
    if not files:
        return None
    with np.load(files[-1], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _gap(v: Any) -> float:
    # A round without a value (no evaluation yet, a client that did not report) is a gap in the line.
    return float(v) if isinstance(v, (int, float)) else math.nan


def plot_run(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """accuracy.png (accuracy and loss per round) and, if any client reported ε, epsilon.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(rounds, [_gap(r.get("accuracy")) for r in rows], "o-", color="tab:blue", label="accuracy")
    integer_rounds(ax1, rounds)
    ax1.set_ylabel("test accuracy", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(rounds, [_gap(r.get("loss")) for r in rows], "s--", color="tab:red", label="loss")
    ax2.set_ylabel("test loss", color="tab:red")
    ax1.set_title("Global model on the clients' test splits")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=110)
    plt.close(fig)

    eps = [r.get("epsilon_by_client") or {} for r in rows]
    clients = sorted({c for e in eps for c in e})
    if clients:
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in clients:
            ax.plot(rounds, [_gap(e.get(c)) for e in eps], marker=".", label=c)
        integer_rounds(ax, rounds)
        ax.set_ylabel("ε spent (cumulative)")
        ax.set_title("Privacy spent per client")
        if len(clients) <= 12:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / "epsilon.png", dpi=110)
        plt.close(fig)
