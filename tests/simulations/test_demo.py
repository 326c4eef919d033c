"""The demo's three federations and its closing table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from federation.config import FedConfig
from server.app import run_server
from simulations import demo as D
from simulations.adversary import make_adversarial_client_app


@pytest.mark.parametrize("profile", sorted(D.PROFILES))
def test_the_three_runs_differ_in_one_thing_each(profile: str, tmp_path: Path) -> None:
    runs = D.demo_configs(profile, tmp_path, seed=3)
    assert [folder for folder, _l, _c in runs] == ["attack-free", "unfiltered", "filtered"]
    free, unf, filt = (cfg for _f, _l, cfg in runs)
    assert not free.attack.attack and free.attack.malicious == 0 and not free.defense.defenses
    assert unf.attack.attack == filt.attack.attack == D.ATTACK and unf.attack.malicious == 0.2
    assert not unf.defense.defenses and filt.defense.defenses == ("norm", "multikrum", "cosine")
    for cfg in (free, unf, filt):  # everything else is shared: DP, CKKS, size, seed, data
        assert cfg.dp.epsilon == 8.0 and cfg.secure.mode.value == "ckks" and cfg.run.seed == 3
        assert (cfg.run.clients, cfg.run.rounds, cfg.data.partition, cfg.data.data_dir) == (
            free.run.clients, free.run.rounds, free.data.partition, free.data.data_dir)
        assert Path(cfg.run.out_dir).parent == tmp_path
    assert (free.data.data_dir == "subset") == (profile == "subset")


def test_asking_for_the_subset_never_installs(tmp_path: Path) -> None:
    said: list[str] = []
    assert D.pick_profile("subset", said.append) == ("subset", "subset")
    assert said == []
    with pytest.raises(ValueError, match="profile"):
        D.demo_configs("tiny", tmp_path)


def test_table_names_attackers_rejections_epsilon_and_bytes(fake_grid: Any, tmp_path: Path) -> None:
    # the subset profile's filtered run, shortened to 1 round, through the real ClientApp
    _f, label, cfg = D.demo_configs("subset", tmp_path, rounds=1)[2]
    cfg_run: FedConfig = cfg
    summary = run_server(fake_grid(make_adversarial_client_app(cfg_run), cfg_run.run.clients), cfg_run,
                         progress=lambda _l: None)
    run = D.DemoRun("filtered", label, cfg_run, summary)
    table = D.render_table([run])
    header, _rule, row = table.splitlines()
    assert header.split()[:2] == ["run", "accuracy"]
    attackers = D.attackers(cfg_run)
    assert len(attackers) == 1
    assert f"{attackers[0]} (1/1)" in row  # the sign-flipper, rejected
    assert f"{summary['max_epsilon']:.2f}" in row and str(tmp_path / "filtered") in row
    assert f"{summary['upload_bytes_per_param']:.1f}" in row
    assert "\x1b[" not in table
