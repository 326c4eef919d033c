"""The task registry: names the config accepts, models that build, seeded and DP-ready."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from federation.config import TASK_NAMES, from_flat
from federation.errors import ConfigError
from federation.tasks import TASKS, build_model, flatten_params, get_task


def test_the_config_accepts_exactly_the_registered_tasks() -> None:
    assert set(TASK_NAMES) == set(TASKS)
    for name in TASK_NAMES:
        assert from_flat({"task": name}).data.task == name
    with pytest.raises(ConfigError, match="fashion-mnist-tanh"):
        from_flat({"task": "cifar10"})
    with pytest.raises(KeyError, match="known"):
        get_task("cifar10")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_a_seeded_model_without_batchnorm(name: str) -> None:
    task = get_task(name)
    a, b, c = build_model(name, 0), build_model(name, 0), build_model(name, 1)
    assert np.array_equal(flatten_params(a), flatten_params(b))
    assert not np.array_equal(flatten_params(a), flatten_params(c))
    assert flatten_params(a).size == 39_210
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in a.modules())
    out = a(torch.zeros(3, *task.input_shape))
    assert out.shape == (3, task.num_classes)


def test_the_tanh_variant_differs_only_in_its_activations() -> None:
    relu, tanh = build_model("fashion-mnist", 0), build_model("fashion-mnist-tanh", 0)
    assert np.array_equal(flatten_params(relu), flatten_params(tanh))  # same seeded weights
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(relu(x), tanh(x))
