"""The Task API: bundled names and import strings resolve to tasks; bad ones are config errors
naming the key ``task``; models build seeded and DP-ready."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from federation.config import BUILTIN_TASKS, from_flat
from federation.errors import ConfigError
from federation.tasks import (
    FASHION_MNIST,
    DataRequest,
    Task,
    build_model,
    flatten_params,
    resolve_task,
)


def test_every_bundled_name_resolves_to_a_task_and_the_config_accepts_it() -> None:
    for name, target in BUILTIN_TASKS.items():
        assert from_flat({"task": name}).data.task == name
        assert resolve_task(name) is resolve_task(target)
        assert isinstance(resolve_task(name), Task)


@pytest.mark.parametrize("bad", ["cifar10", "no colon", "pkg.mod:", ":attr", "a-b:c"])
def test_the_config_refuses_a_malformed_task_name(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^task: .*import string") as info:
        from_flat({"task": bad})
    assert info.value.key == "task"


def _fake_module(name: str, **attrs: object) -> None:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod


def test_import_strings_that_do_not_resolve_to_a_task_are_errors_naming_the_key() -> None:
    _fake_module("fg_test_tasks_bad", not_a_task=42, factory_fails=lambda: 1 / 0)
    cases = {
        "fg_no_such_module_xyz:task": "cannot import module",
        "fg_test_tasks_bad:missing": "has no attribute",
        "fg_test_tasks_bad:not_a_task": "is a int, not a federation.tasks.Task",
        "fg_test_tasks_bad:factory_fails": "ZeroDivisionError",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            resolve_task(spec)
        assert info.value.key == "task"


def test_a_task_factory_and_a_broken_model_builder() -> None:
    def load(_r: DataRequest) -> object:
        raise AssertionError("not called")

    good = Task("lin", lambda: nn.Linear(3, 1), load)  # type: ignore[arg-type]
    _fake_module("fg_test_tasks_ok", make=lambda: good,
                 broken=Task("broken", lambda: "not a module", load))  # type: ignore[arg-type]
    assert resolve_task("fg_test_tasks_ok:make") is good
    with pytest.raises(ConfigError, match=r"must return an nn\.Module"):
        build_model("fg_test_tasks_ok:broken")
    with pytest.raises(ConfigError, match="callable"):
        Task("x", 3, load)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_every_bundled_task_builds_a_seeded_model_without_batchnorm(name: str) -> None:
    a, b = build_model(name, 0), build_model(name, 0)
    assert np.array_equal(flatten_params(a), flatten_params(b))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in a.modules())


def test_model_sizes() -> None:
    sizes = {n: flatten_params(build_model(n, 0)).size for n in BUILTIN_TASKS}
    assert sizes["fashion-mnist"] == sizes["fashion-mnist-tanh"] == 39_210
    assert 1_000_000 <= sizes["resnet-1m"] < 1_500_000
    assert sizes["resnet-10m"] >= 10_000_000
    assert not np.array_equal(flatten_params(build_model("resnet-1m", 0)),
                              flatten_params(build_model("resnet-1m", 1)))


def test_resnet_generated_data_has_the_cifar_layout_and_the_model_takes_it() -> None:
    task = resolve_task("resnet-1m")
    data = task.load_data(DataRequest(1, 3, "iid", 0))
    assert data.train.x.shape[1:] == (3, 32, 32) and data.train.x.dtype == np.float32
    assert set(np.unique(data.train.y)) <= set(range(10))
    out = build_model(task, 0)(torch.from_numpy(data.test.x[:2]))
    assert out.shape == (2, 10)
    again = task.load_data(DataRequest(1, 3, "iid", 0))
    assert np.array_equal(again.train.x, data.train.x)  # reproducible from the public seed


def test_a_cifar_directory_that_is_incomplete_is_a_data_error(tmp_path: object) -> None:
    from federation.errors import DataError

    with pytest.raises(DataError, match=r"data_batch_1\.bin"):
        resolve_task("resnet-1m").load_data(DataRequest(0, 2, "iid", 0, str(tmp_path)))


def test_the_tanh_variant_differs_only_in_its_activations() -> None:
    relu, tanh = build_model(FASHION_MNIST, 0), build_model("fashion-mnist-tanh", 0)
    assert np.array_equal(flatten_params(relu), flatten_params(tanh))  # same seeded weights
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(relu(x), tanh(x))
