"""The scenario matrix: which runs it makes, with which settings, and how the table reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.adversary import probes_trigger
from simulations.scenarios import (
    ALL_ATTACKS,
    GUARD,
    MATRICES,
    catches,
    markdown_table,
    run_matrix,
    scenario_config,
    scenarios,
    select,
)
from simulations.simulate import DP_RECIPE


def test_full_matrix_is_the_target_setting_with_one_unfiltered_and_one_encrypted_arm() -> None:
    runs = scenarios("full")
    assert len(runs) == len(ALL_ATTACKS) * 2 * 2 == len({s.name for s in runs})
    assert {(s.defense, s.mode) for s in runs} == {("none", "none"), (GUARD, "ckks")}
    assert {s.attack for s in runs} == set(ALL_ATTACKS) and {s.dp for s in runs} == {False, True}
    cfg = scenario_config(next(s for s in runs if s.attack == "alie" and s.dp and s.mode == "ckks"),
                  MATRICES["full"]["flat"], Path("/tmp/x"), 8.0)
    assert (cfg.run.clients, cfg.attack.malicious, cfg.data.partition) == (20, 0.2, "dirichlet:0.5")
    assert cfg.defense.max_malicious == 4
    assert cfg.dp.epsilon == 8.0 and cfg.train.batch_size == DP_RECIPE["batch-size"]
    assert cfg.data.task == DP_RECIPE["task"] == "fashion-mnist-tanh"
    assert cfg.defense.defenses == ("norm", "multikrum", "cosine") and cfg.secure.mode == "ckks"


def test_attack_free_runs_have_no_attackers() -> None:
    s = next(s for s in scenarios("small") if s.attack == "none")
    cfg = scenario_config(s, MATRICES["small"]["flat"], Path("/tmp/x"), 8.0)
    assert cfg.attack.malicious == 0.0 and cfg.dp.epsilon == 0.0
    # ... but every client runs the backdoor's probe: the row reports the trigger's base rate
    assert probes_trigger(cfg) and not probes_trigger(scenario_config(
        next(s for s in scenarios("small") if s.attack == "scaling"), MATRICES["small"]["flat"],
        Path("/tmp/x"), 8.0))


def _row(attack: str, defense: str, mode: str, acc: float | None, dp: bool = False) -> dict[str, object]:
    return {"scenario": f"{attack}-{defense}-{mode}", "attack": attack, "defense": defense, "mode": mode,
            "dp": dp, "final_accuracy": acc, "attack_success_rate": 0.04 if attack == "backdoor" else None,
            "trigger_flip_rate": 0.01 if attack == "backdoor" else None,
            "rejected_last_round": {"3": "norm"} if defense != "none" else {}}


def test_table_reports_the_difference_to_attack_free_fedavg_with_the_same_dp_setting() -> None:
    rows = [_row("none", "none", "none", 0.80), _row("scaling", GUARD, "ckks", 0.785),
            _row("backdoor", "none", "none", None), _row("none", "none", "none", 0.70, dp=True),
            _row("ipm", GUARD, "ckks", 0.72, dp=True), _row("alie", GUARD, "ckks", 0.7999)]
    lines = markdown_table(rows).splitlines()
    assert "| +0.0 |" in lines[2] and "| -1.5 |" in lines[3]
    assert "| n/a |  | 4.0 % | 1.0 % | 0 |" in lines[4]
    assert "| -1.5 |  |  | 1 |" in lines[3]  # no probe: both backdoor columns empty
    assert "| +2.0 |" in lines[6]
    assert "| +0.0 |" in lines[7]  # never "-0.0"


def test_a_damaged_results_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    # `only` names one scenario that the good file already holds: run_matrix reads the results
    # file and runs nothing (a fragment matching no scenario is refused, see below)
    nothing = ["none__none__none__nodp"]
    with pytest.raises(ValueError, match="--only: 'no-such-scenario' matches no scenario"):
        run_matrix("small", tmp_path / "fresh", only=["no-such-scenario"], progress=print)
    bad = tmp_path / "results.json"
    for text in ("{not json", '{"a": 1}', '[{"no": "scenario"}]'):
        bad.write_text(text)
        with pytest.raises(ValueError, match="not a results file"):
            run_matrix("small", tmp_path, only=nothing)
        assert bad.read_text() == text
    good = [{"scenario": "none__none__none__nodp", "final_accuracy": 0.5}]
    bad.write_text(json.dumps(good))
    assert run_matrix("small", tmp_path, only=nothing) == good  # an earlier run's rows are kept


def test_small_matrix_has_the_in_spread_and_encoding_attacks() -> None:
    attacks = {s.attack for s in scenarios("small")}
    assert {"min-max", "min-sum", "wrap", "shift", "garbage"} <= attacks


def test_only_takes_many_values_and_their_union_and_refuses_a_fragment_that_matches_nothing() -> None:
    # six fragments, one of them spelled with the defence's commas as on the command line
    only = ["none__none__none", "none__norm,multikrum,cosine__ckks", "min-max__none__none",
            "min-max__norm+multikrum+cosine__ckks", "wrap__norm+multikrum+cosine__ckks",
            "shift__norm+multikrum+cosine__ckks"]
    chosen = [s.name for s in select("small", only)]
    assert chosen == [s.name for s in scenarios("small")
                      if any(o.replace(",", "+") in s.name for o in only)]
    assert len(chosen) == 6
    assert len(select("small", ["min-max", "min-sum"])) == 8
    assert [s.name for s in select("small", "min-sum__none__none")] == ["min-sum__none__none__nodp"]
    assert select("small", None) == select("small", []) == scenarios("small")
    with pytest.raises(ValueError, match="--only: 'minmax' matches no scenario"):
        select("small", ["min-max", "minmax"])


def test_catches_counts_attackers_and_honest_clients_left_out_per_round() -> None:
    rows = [{"clients": {"7": "client-3", "8": "client-4", "9": "client-0"},
             "rejected": {"7": "collusion:near-duplicate", "8": "collusion:near-duplicate"}},
            {"clients": {"7": "client-3", "8": "client-4", "9": "client-0"},
             "rejected": {"8": "statistic:wraparound", "9": "cosine<0.0"}},
            {"clients": {"7": "client-3"}, "rejected": {}}]
    assert catches(rows, {3, 4}) == ([2, 1, 0], [0, 1, 0])
    table = markdown_table([{**_row("min-max", GUARD, "ckks", 0.6), "attackers": 2,
                             "caught_per_round": [2, 1, 0], "honest_rejected_per_round": [0, 1, 0]}])
    assert table.splitlines()[2].endswith("| 2/2 1/2 0/2 | 0 1 0 |")
