"""`fedguard simulate` with DP on: training flags not given come from the DP recipe."""

from __future__ import annotations

from simulations.cli import build_config
from simulations.simulate import DP_RECIPE, with_dp_recipe


def test_without_dp_the_plain_defaults_stay() -> None:
    cfg = build_config(with_dp_recipe({"batch-size": None, "lr": None, "task": None, "dp-epsilon": None}))
    assert (cfg.data.task, cfg.train.batch_size, cfg.train.lr, cfg.train.momentum) == ("fashion-mnist", 64, 0.05, 0.9)
    assert not cfg.dp.enabled


def test_with_dp_the_recipe_fills_what_was_not_given_and_explicit_flags_win() -> None:
    cfg = build_config(with_dp_recipe({"dp-epsilon": 3.0, "batch-size": None, "lr": None, "momentum": None}))
    assert cfg.data.task == DP_RECIPE["task"] == "fashion-mnist-tanh"
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.momentum, cfg.dp.max_grad_norm) == (512, 4.0, 0.0, 0.5)

    cfg = build_config(with_dp_recipe({"dp-noise": 1.0, "batch-size": 128, "lr": 0.5, "task": "fashion-mnist",
                                        "max-grad-norm": 2.0}))
    assert (cfg.data.task, cfg.train.batch_size, cfg.train.lr, cfg.dp.max_grad_norm) == ("fashion-mnist", 128, 0.5, 2.0)
    assert cfg.train.momentum == 0.0 and cfg.dp.noise_multiplier == 1.0
