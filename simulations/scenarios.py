"""The evidence: a matrix of attacks x defences x modes, each a real Flower simulation.

Writes ``results.json`` (one object per scenario) and ``results.md`` (a table of clean accuracy
and backdoor success) into the output folder. Every scenario has its own run folder with the
usual metrics, summary and audit log, so each number in the table can be traced to its rounds.

``small`` (default): 6 clients, 3 rounds, the vendored subset; every attack of the registry and
the attack-free run x defences {none, norm,multikrum,cosine} x {plaintext, ckks}: 52 runs, about
half an hour on 2 cores.

Besides accuracy, every row says how often the attackers were caught: ``caught_per_round``
(attackers whose update was not aggregated, per round, out of ``attackers``) and
``honest_rejected_per_round`` (honest clients not aggregated: the filter's cost).
``full``: the issue's target setting, 20 clients (20 % attackers), Dirichlet(0.5), full
Fashion-MNIST, 10 rounds, every attack, DP off and on; each attack runs unfiltered in plaintext
(the damage) and with the encrypted filter (the defence): about 80 minutes on 2 cores with
the 7 original attacks; about 2 hours 15 minutes with all 12 (52 runs, estimated).

A matrix run is resumable: scenarios already in the folder's ``results.json`` are kept and not
run again (``fresh=True`` starts over).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.config import FedConfig, from_flat
from server.report import read_rows
from simulations.attacks import ATTACKS, select_malicious
from simulations.simulate import with_dp_recipe

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["MATRICES", "Scenario", "catches", "markdown_table", "run_matrix", "scenario_config",
           "scenarios", "select"]

# every attack of the registry; the encoding attacks (wrap, shift) only differ from an honest
# or boosted update under CKKS, where they tamper with the ciphertext itself
ALL_ATTACKS = ("none", *ATTACKS)  # "none": the attack-free reference run
GUARD = "norm,multikrum,cosine"


@dataclass(frozen=True)
class Scenario:
    attack: str
    defense: str
    mode: str
    dp: bool

    @property
    def name(self) -> str:
        return f"{self.attack}__{self.defense.replace(',', '+')}__{self.mode}__{'dp' if self.dp else 'nodp'}"


# "arms" are (defence, aggregation) pairs run for every attack
MATRICES: dict[str, dict[str, Any]] = {
    "small": {
        "attacks": ALL_ATTACKS,
        "arms": (("none", "none"), ("none", "ckks"), (GUARD, "none"), (GUARD, "ckks")),
        "dp": (False,),
        "flat": {"num-clients": 6, "num-server-rounds": 3, "partition": "iid",
                 "data-dir": "subset", "malicious": 0.34, "batch-size": 32},
    },
    "full": {
        "attacks": ALL_ATTACKS,
        "arms": (("none", "none"), (GUARD, "ckks")),
        "dp": (False, True),
        # the defence is told the bound on attackers (f = 4 = 20 % of 20), as in the demo
        "flat": {"num-clients": 20, "num-server-rounds": 10, "partition": "dirichlet:0.5",
                 "malicious": 0.2, "max-malicious": 4},
    },
}


def scenarios(matrix: str) -> list[Scenario]:
    """Every scenario of ``matrix``, DP-off block first, attack-free runs first in each block."""
    m = MATRICES[matrix]
    return [Scenario(attack, defense, mode, dp)
            for dp in m["dp"] for attack in m["attacks"] for defense, mode in m["arms"]]


def select(matrix: str, only: Iterable[str] | None = None) -> list[Scenario]:
    """The scenarios of ``matrix`` whose name contains one of ``only`` (all when empty).

    Each value is a name fragment (``min-max``, ``none__none__none``, ``ckks__dp``); a
    defence may be spelled as on the command line (``norm,multikrum,cosine``: names write
    ``+`` for ``,``). The result is the union, in matrix order.

    Raises
    ------
    ValueError
        A value that matches no scenario (naming ``--only``): a typo never silently runs
        fewer scenarios than asked for.
    """
    if isinstance(only, str):  # one fragment, not its characters
        only = [only]
    wanted = [o.strip().replace(",", "+") for o in only or () if o.strip()]
    runs = scenarios(matrix)
    unmatched = [o for o in wanted if not any(o in s.name for s in runs)]
    if unmatched:
        raise ValueError(f"--only: {', '.join(map(repr, unmatched))} matches no scenario of the "
                         f"{matrix!r} matrix (names look like {runs[0].name!r})")
    return [s for s in runs if not wanted or any(o in s.name for o in wanted)]


def catches(rows: Iterable[dict[str, Any]], malicious: Iterable[int]) -> tuple[list[int], list[int]]:
    """Per round: attackers not aggregated, honest clients not aggregated.

    ``rows`` are a run's ``metrics.jsonl`` lines; ``malicious`` the attackers' partition ids
    (:func:`simulations.attacks.select_malicious`). A client counts as not aggregated when its
    node is in the round's ``rejected`` (filtered, invalid, or excluded by attribution).
    """
    bad = {f"client-{int(p)}" for p in malicious}
    caught, honest = [], []
    for row in rows:
        labels = row.get("clients") or {}
        rejected = [labels.get(str(n), f"node-{n}") for n in row.get("rejected") or {}]
        caught.append(sum(1 for lab in rejected if lab in bad))
        honest.append(sum(1 for lab in rejected if lab not in bad))
    return caught, honest


def scenario_config(sc: Scenario, base: dict[str, Any], out_dir: Path, dp_epsilon: float) -> FedConfig:
    """The validated config a scenario runs with.

    ``base`` is the matrix's flat settings (``MATRICES[name]["flat"]``); the scenario adds its
    attack (none: no attackers at all), defence and aggregation, and with ``sc.dp`` the DP
    recipe at ``dp_epsilon``. The run folder is ``out_dir / sc.name``.
    """
    flat = dict(base)
    if sc.attack == "none":  # no attacker; the backdoor's probe gives the trigger's base rate
        flat.pop("malicious", None)
        flat["attack"] = "backdoor"
    else:
        flat["attack"] = sc.attack
    flat.update({"defense": sc.defense, "secure-aggregation": sc.mode,
                 "out-dir": str(out_dir / sc.name)})
    if sc.dp:
        flat = with_dp_recipe({**flat, "dp-epsilon": dp_epsilon})
    return from_flat(flat)


def _load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an earlier, interrupted run of the matrix (empty when there is none)."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a results file ({e}); move it away or pass fresh") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "scenario" in r for r in rows):
        raise ValueError(f"{path} is not a results file; move it away or pass fresh")
    return rows


def run_matrix(
    matrix: str,
    out_dir: Path,
    *,
    progress: Callable[[str], None] = print,
    dp_epsilon: float = 8.0,
    only: Iterable[str] | None = None,
    fresh: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run every scenario of ``matrix`` (or those whose name contains one of ``only``).

    Scenarios already recorded in ``out_dir/results.json`` are skipped unless ``fresh``.
    With ``console``, each scenario's rounds print there under a live progress line
    (:class:`server.progress.RoundProgress`) instead of through ``progress``.
    """
    from simulations.simulate import simulate

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [] if fresh else _load_rows(out_dir / "results.json")
    done = {r["scenario"] for r in rows}
    chosen = select(matrix, only)
    for i, sc in enumerate(chosen, 1):
        if sc.name in done:
            progress(f"[{i}/{len(chosen)}] {sc.name}: already in results.json, skipped")
            continue
        progress(f"[{i}/{len(chosen)}] {sc.name}")
        t = time.time()
        cfg = scenario_config(sc, MATRICES[matrix]["flat"], out_dir, dp_epsilon)
        if console is not None:
            from server.progress import RoundProgress

            with RoundProgress(cfg.run.rounds, console=console, prefix="    ") as display:
                summary = simulate(cfg, display=display)
        else:
            summary = simulate(cfg, progress=lambda line: progress("    " + line))
        malicious = (select_malicious(cfg.run.clients, cfg.attack.malicious, cfg.run.seed)
                     if sc.attack != "none" else frozenset())
        caught, honest = catches(read_rows(Path(cfg.run.out_dir) / "metrics.jsonl"), malicious)
        rows.append({
            "scenario": sc.name, "attack": sc.attack, "defense": sc.defense, "mode": sc.mode,
            "dp": sc.dp, "final_accuracy": summary.get("final_accuracy"),
            "attack_success_rate": summary.get("attack_success_rate"),
            "trigger_flip_rate": summary.get("trigger_flip_rate"),
            "max_epsilon": summary.get("max_epsilon"),
            "rejected_last_round": (summary.get("rejected_by_round") or [{}])[-1],
            "rejected_per_round": [len(r) for r in summary.get("rejected_by_round") or []],
            "rejection_reasons": sorted({str(v).split(";")[0] for r in summary.get("rejected_by_round")
                                         or [] for v in r.values()}),
            "attackers": len(malicious), "caught_per_round": caught,
            "honest_rejected_per_round": honest,
            "wall_seconds": round(time.time() - t, 1), "run_folder": str(cfg.run.out_dir),
        })
        (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "results.md").write_text(markdown_table(rows))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Clean accuracy and backdoor success per scenario, grouped by attack.

    The "vs attack-free" column is the accuracy difference, in points, to the attack-free,
    unfiltered, plaintext run with the same DP setting (plain FedAvg), when the matrix has it.
    An attack-free row's "backdoor success" is the trigger's base rate: triggered images an
    unpoisoned model already assigns to the target class (the floor a backdoor row is read
    against). "trigger flips" has no such floor: of the test images a model classifies
    correctly without the trigger (target class excluded), the share the trigger sends to the
    target (:func:`simulations.attacks.trigger_rates`).
    """
    ref = {r["dp"]: r["final_accuracy"] for r in rows
           if (r["attack"], r["defense"], r["mode"]) == ("none", "none", "none")}
    lines = ["| attack | defence | aggregation | DP | accuracy | vs attack-free | backdoor success "
             "| trigger flips | rejected (last round) | attackers caught per round "
             "| honest rejected per round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r["final_accuracy"]
        base = ref.get(r["dp"])
        delta = "" if acc is None or base is None else f"{round(100 * (acc - base), 1) + 0.0:+.1f}"
        acc_s = "n/a" if acc is None else f"{100 * acc:.1f} %"
        asr = "" if r["attack_success_rate"] is None else f"{100 * r['attack_success_rate']:.1f} %"
        flip = "" if r.get("trigger_flip_rate") is None else f"{100 * r['trigger_flip_rate']:.1f} %"
        caught = _per_round(r.get("caught_per_round"), r["attackers"]) if r.get("attackers") else ""
        lines.append(f"| {r['attack']} | {r['defense']} | {r['mode']} | {'on' if r['dp'] else 'off'} "
                     f"| {acc_s} | {delta} | {asr} | {flip} | {len(r['rejected_last_round'])} "
                     f"| {caught} "
                     f"| {_per_round(r.get('honest_rejected_per_round'))} |")
    return "\n".join(lines) + "\n"


def _per_round(counts: list[int] | None, of: int | None = None) -> str:
    """``"2/2 2/2 1/2"`` (or ``"0 1 0"`` without a total); empty for rows of older runs."""
    if counts is None:
        return ""
    return " ".join(f"{c}/{of}" if of is not None else str(c) for c in counts)
