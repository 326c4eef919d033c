"""The config tree: every bad value names its key and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest

from federation.config import (
    DEFENSES,
    FLAT_KEYS,
    Accountant,
    FedConfig,
    SecureAggregation,
    from_flat,
    parse_defenses,
    to_flat,
)
from federation.errors import ConfigError
from federation.robust import UpdateStats, screen


def test_defaults_round_trip_through_flat() -> None:
    cfg = FedConfig()
    assert from_flat(to_flat(cfg)) == cfg


def test_values_are_converted_and_placed() -> None:
    cfg = from_flat(
        {
            "num-clients": "10",
            "num-server-rounds": 20,
            "partition": "shards:2",
            "dp-epsilon": "3",
            "dp-accountant": "RDP",
            "secure-aggregation": "ckks",
            "defense": "cosine,norm",
        }
    )
    assert cfg.run.clients == 10 and cfg.run.rounds == 20
    assert cfg.data.partition == "shards:2"
    assert cfg.dp.epsilon == 3.0 and cfg.dp.enabled and cfg.dp.accountant is Accountant.RDP
    assert cfg.secure.mode is SecureAggregation.CKKS
    assert cfg.defense.defenses == ("norm", "cosine")  # canonical order


@pytest.mark.parametrize(
    ("flat", "key", "fragment"),
    [
        ({"num-clients": -1}, "num-clients", "allowed: 1..10000, or 0 for every connected node"),
        ({"num-clients": "ten"}, "num-clients", "integer"),
        ({"num-server-rounds": 2.5}, "num-server-rounds", "integer"),
        ({"partition": "dirichlet:-1"}, "partition", "dirichlet"),
        ({"partition": "random"}, "partition", "iid"),
        ({"secure-aggregation": "paillier"}, "secure-aggregation", "none | ckks"),
        ({"dp-accountant": "gdp"}, "dp-accountant", "prv | rdp"),
        ({"dp-epsilon": 1, "dp-noise": 1}, "dp-epsilon", "not both"),
        ({"dp-epsilon": "nan"}, "dp-epsilon", "finite"),
        ({"dp-delta": 1.5}, "dp-delta", "delta < 1"),
        ({"defense": "krum"}, "defense", "norm, multikrum, cosine"),
        ({"malicious": 0.2}, "attack", "needs an attack"),
        ({"lr": 0}, "lr", "0 < lr"),
        ({"screen-quorum": 9, "num-clients": 3}, "screen-quorum", "1..num-clients"),
        ({"num-rounds": 3}, "num-rounds", "did you mean 'num-server-rounds'"),
        ({"rejoin-wait": -1}, "rejoin-wait", "0..round-timeout"),
        ({"rejoin-wait": 700}, "rejoin-wait", "0..round-timeout (600.0)"),
    ],
)
def test_bad_values_name_the_key(flat: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_flat(flat)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_every_flat_key_maps_to_a_real_field() -> None:
    cfg = FedConfig()
    for section, name in FLAT_KEYS.values():
        assert hasattr(getattr(cfg, section), name)


def test_to_dict_is_jsonable() -> None:
    import json

    text = json.dumps(from_flat({"secure-aggregation": "ckks"}).to_dict())
    assert '"mode": "ckks"' in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", ()),
        ("", ()),
        ("norm", ("norm",)),
        ("norm,multikrum,cosine", DEFENSES),
        (" Cosine , norm ", ("norm", "cosine")),
    ],
)
def test_parse_defenses(text: str, expected: tuple[str, ...]) -> None:
    assert parse_defenses(text) == expected
    assert from_flat({"defense": text}).defense.defenses == expected


@pytest.mark.parametrize("text", ["krum", "norm,", "norm,norm", "none,norm", "norm;cosine"])
def test_parse_defenses_errors_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_defenses(text)
    assert info.value.key == "defense"
    assert "allowed: none, or a comma list of norm, multikrum, cosine" in str(info.value)
    with pytest.raises(ConfigError, match="defense"):
        screen(UpdateStats((0,), np.ones(1)), [1], text, f=0)  # the screen reads the same parser


def test_the_dp_recipe_is_applied_by_from_flat_for_unset_keys_only() -> None:
    from federation.config import DP_RECIPE, PLAIN_DEFAULTS

    plain = from_flat({"lr": "auto", "batch-size": "auto"})
    assert (plain.train.lr, plain.train.batch_size, plain.data.task) == (
        PLAIN_DEFAULTS["lr"], PLAIN_DEFAULTS["batch-size"], "fashion-mnist")
    dp = from_flat({"dp-epsilon": 3.0, "lr": "auto", "task": "auto"})
    assert (dp.train.lr, dp.train.batch_size, dp.train.momentum, dp.dp.max_grad_norm,
            dp.data.task) == (DP_RECIPE["lr"], DP_RECIPE["batch-size"], DP_RECIPE["momentum"],
                              DP_RECIPE["max-grad-norm"], DP_RECIPE["task"])
    mine = from_flat({"dp-noise": 1.0, "lr": 0.2, "task": "examples.breast_cancer.task:task"})
    assert mine.train.lr == 0.2 and mine.data.task == "examples.breast_cancer.task:task"
    assert mine.train.batch_size == DP_RECIPE["batch-size"]
    assert from_flat(to_flat(dp)) == dp  # the resolved tree round-trips
