"""``fedguard demo``: the flagship comparison, sized to make its case in minutes on 2 cores.

Three federations that differ in one thing each, all with DP-SGD on every client and CKKS
aggregation:

1. **attack-free**: every client honest, no filter (the reference accuracy);
2. **attacked, unfiltered**: 20 % of the clients send sign-flipped, boosted updates
   (``sign-flip:scale=8``: eight times their trained update, pointing backwards);
3. **attacked, encrypted filter**: the same attackers against the norm / Multi-Krum / cosine
   filter computed on the ciphertexts.

Two profiles, picked by the data that is there (:data:`PROFILES`): the full Fashion-MNIST set
(Debian's ``dataset-fashion-mnist``; the demo installs it when it runs as root with ``apt-get``
and may, and says so when it cannot) or the ~1 MB subset bundled with fedguard. On the subset
every client holds few images, so the federation is smaller (5 clients, 1 attacker) and runs
more of its cheap rounds; the attack and the filter are the same. Both split the data IID.

The result is a table (accuracy, who was rejected, ε spent, upload bytes per parameter, run
folders) and ``report.html`` in the demo folder with the three accuracy curves in one plot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.config import FedConfig, from_flat
from federation.data import DEBIAN_DIR, load_fashion_mnist
from simulations.simulate import with_dp_recipe

__all__ = [
    "ARMS",
    "ATTACK",
    "DEBIAN_PACKAGE",
    "PROFILES",
    "DemoRun",
    "attackers",
    "demo_configs",
    "ensure_full_dataset",
    "pick_profile",
    "rejected_clients",
    "render_table",
    "run_demo",
    "verdict",
]

DEBIAN_PACKAGE = "dataset-fashion-mnist"
"""The Debian package that installs the full set under :data:`federation.data.DEBIAN_DIR`."""

ATTACK = "sign-flip:scale=8"
GUARD = "norm,multikrum,cosine"

# Flat settings per profile. Both keep 20 % attackers and tell the filter that bound (f).
PROFILES: dict[str, dict[str, Any]] = {
    # 2 rounds keep the three federations within 3 minutes on 2 cores; the margin after round 2
    # is already 40+ points (README has the seeds). IID: under Dirichlet(0.5) a seed whose two
    # attackers hold most of a class ends 6 points below attack-free after 2 rounds, because the
    # filter (rightly) drops their data too; the comparison is about the attack, not the split.
    "full": {"num-clients": 10, "num-server-rounds": 2, "partition": "iid",
             "dp-epsilon": 8.0, "secure-aggregation": "ckks", "malicious": 0.2,
             "max-malicious": 2, "attack": ATTACK},
    "subset": {"num-clients": 5, "num-server-rounds": 8, "partition": "iid",
               "dp-epsilon": 8.0, "secure-aggregation": "ckks", "malicious": 0.2,
               "max-malicious": 1, "attack": ATTACK, "data-dir": "subset"},
}

# (folder, label, changes to the profile)
ARMS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("attack-free", "attack-free", {"malicious": 0.0, "attack": None, "defense": "none"}),
    ("unfiltered", "attacked, no filter", {"defense": "none"}),
    ("filtered", "attacked + encrypted filter", {"defense": GUARD}),
)


@dataclass
class DemoRun:
    """One federation of the demo and what it produced."""

    folder: str
    label: str
    cfg: FedConfig
    summary: dict[str, Any]

    @property
    def accuracy(self) -> float | None:
        acc = self.summary.get("final_accuracy")
        return float(acc) if isinstance(acc, (int, float)) else None


def ensure_full_dataset(say: Callable[[str], None], *, allow_install: bool = True) -> bool:
    """True when the full set is at :data:`DEBIAN_DIR`; tries ``apt-get install`` if allowed.

    Installs only when running as root with ``apt-get`` on the PATH (the registry must be
    reachable); otherwise, or when the install fails, says why and returns False.
    """
    if DEBIAN_DIR.is_dir():
        return True
    if not allow_install:
        say(f"full data set not installed ({DEBIAN_DIR}); --no-install-data given")
        return False
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        say(f"full data set not installed; installing it needs root and apt-get "
            f"(sudo apt-get install {DEBIAN_PACKAGE}): using the bundled subset")
        return False
    say(f"installing the full data set: apt-get install {DEBIAN_PACKAGE} (about 30 MB) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", DEBIAN_PACKAGE]):
            subprocess.run(args, check=True, env=env, timeout=300, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"could not install {DEBIAN_PACKAGE} ({type(exc).__name__}; is the package registry "
            "reachable?): using the bundled subset")
        return False
    return DEBIAN_DIR.is_dir()


def demo_configs(profile: str, parent: Path, *, seed: int = 0, rounds: int | None = None,
                 data_dir: str | None = None) -> list[tuple[str, str, FedConfig]]:
    """``(folder, label, config)`` of the three runs of ``profile`` under ``parent``."""
    if profile not in PROFILES:
        raise ValueError(f"profile: got {profile!r}; allowed: {' | '.join(PROFILES)}")
    out = []
    for folder, label, change in ARMS:
        flat = {**PROFILES[profile], "seed": seed, **change, "out-dir": str(parent / folder)}
        if rounds is not None:
            flat["num-server-rounds"] = rounds
        if data_dir is not None:
            flat["data-dir"] = data_dir
        flat = with_dp_recipe(flat)
        out.append((folder, label, from_flat({k: v for k, v in flat.items() if v is not None})))
    return out


def run_demo(profile: str, parent: Path, *, seed: int = 0, rounds: int | None = None,
             data_dir: str | None = None, run: Callable[[str, FedConfig], dict[str, Any]]) -> list[DemoRun]:
    """Run the three federations of ``profile`` with ``run(label, cfg) -> summary``.

    Writes ``parent/report.html`` comparing them (and each run's own report).
    """
    from server.html_report import write_comparison

    parent.mkdir(parents=True, exist_ok=True)
    runs = [DemoRun(folder, label, cfg, run(label, cfg))
            for folder, label, cfg in demo_configs(profile, parent, seed=seed, rounds=rounds,
                                                      data_dir=data_dir)]
    write_comparison(parent / "report.html", [(r.label, parent / r.folder) for r in runs],
                     title=f"fedguard demo ({profile} data set, seed {seed})",
                     table=render_table(runs))
    return runs


def attackers(cfg: FedConfig) -> list[str]:
    """The labels of the clients that attack under ``cfg`` (empty without an attack)."""
    from simulations.attacks import select_malicious

    if not cfg.attack.attack:
        return []
    return [f"client-{i}" for i in
            sorted(select_malicious(cfg.run.clients, cfg.attack.malicious, cfg.run.seed))]


def rejected_clients(summary: dict[str, Any], folder: Path) -> Counter[str]:
    """How many rounds each client was rejected in, by client label."""
    from server.report import read_rows

    counts: Counter[str] = Counter()
    for row in read_rows(folder / "metrics.jsonl"):
        labels = row.get("clients") or {}
        for node in row.get("rejected") or {}:
            counts[str(labels.get(node, f"node {node}"))] += 1
    return counts


def render_table(runs: list[DemoRun]) -> str:
    """The demo's closing table, plain text (no terminal codes)."""
    head = ("run", "accuracy", "attackers", "rejected (rounds)", "max ε", "upload B/param",
            "run folder")
    lines = []
    for r in runs:
        folder = Path(r.cfg.run.out_dir)
        rej = rejected_clients(r.summary, folder)
        rounds = r.summary.get("rounds_completed", "?")
        rej_s = ", ".join(f"{c} ({n}/{rounds})" for c, n in sorted(rej.items())) or "none"
        eps = r.summary.get("max_epsilon")
        bpp = r.summary.get("upload_bytes_per_param")
        lines.append((
            r.label,
            "n/a" if r.accuracy is None else f"{100 * r.accuracy:.1f} %",
            ", ".join(attackers(r.cfg)) or "none",
            rej_s,
            f"{eps:.2f}" if isinstance(eps, (int, float)) else "n/a",
            f"{bpp:.1f}" if isinstance(bpp, (int, float)) else "n/a",
            str(folder),
        ))
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)]) + "\n"


def verdict(runs: list[DemoRun]) -> str:
    """One sentence: by how many points the filter beats no filter, and how far from attack-free."""
    by = {r.folder: r.accuracy for r in runs}
    free, unf, filt = by.get("attack-free"), by.get("unfiltered"), by.get("filtered")
    if free is None or unf is None or filt is None:
        return "a run reported no accuracy; see the run folders"
    return (f"the encrypted filter beats no filter by {100 * (filt - unf):+.1f} points and is "
            f"{100 * (filt - free):+.1f} points from the attack-free run")


def pick_profile(data_dir: str | None, say: Callable[[str], None], *,
                 allow_install: bool = True) -> tuple[str, str | None]:
    """``(profile, data_dir)`` for the demo: ``full`` when the full set is (or can be) there."""
    if data_dir == "subset":
        return "subset", "subset"
    if data_dir is not None:  # a folder the user named: the full-set profile on it
        load_fashion_mnist(data_dir)  # fails early, naming the folder, when it is not usable
        return "full", data_dir
    if os.environ.get("FEDGUARD_DATA_DIR"):
        return "full", None
    return ("full", None) if ensure_full_dataset(say, allow_install=allow_install) else ("subset", "subset")
