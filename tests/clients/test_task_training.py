"""Training and evaluation follow the task: a regression task (MSE loss, ``mse`` primary
metric, an input transform) trains with and without DP-SGD; a task that breaks the API is a
config error naming ``task``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clients.training import DPPlan, evaluate, train_local
from federation.errors import ConfigError
from federation.tasks import ClientData, DataRequest, Split, Task, mse_loss, regression_metrics

W_TRUE = np.array([1.5, -2.0, 0.5, 3.0], np.float32)


def _data(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 4)).astype(np.float32) * 10.0  # the transform undoes the scale
    y = (x / 10.0 @ W_TRUE + rng.normal(0, 0.05, n)).astype(np.float32)
    return Split(x, y[:, None])


def _load(_r: DataRequest) -> ClientData:
    return ClientData(train=_data(512, 0), test=_data(256, 1))


REGRESSION = Task("linreg", lambda: nn.Linear(4, 1), _load, loss=mse_loss,
                  metrics=regression_metrics, primary_metric="mse", higher_is_better=False,
                  transform=lambda x: x / 10.0)


@pytest.mark.parametrize("dp", [None, DPPlan(0.5, 5.0, "auto", secure_rng=False)])
def test_a_regression_task_trains_and_reports_its_own_primary_metric(dp: DPPlan | None) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    data = _load(DataRequest(0, 1))
    before = evaluate(model, data.test.x, data.test.y, task=REGRESSION)
    result = train_local(model, data.train.x, data.train.y, epochs=5, batch_size=64, lr=0.1,
                         momentum=0.0, seed=0, dp=dp, task=REGRESSION)
    after = evaluate(model, data.test.x, data.test.y, task=REGRESSION)
    assert after.primary_metric == "mse" and "accuracy" not in after.metrics
    assert after.primary < 0.2 * before.primary and after.primary > 0  # not in [0, 1] by design
    assert after.metrics["mae"] > 0 and after.loss == pytest.approx(after.primary, rel=1e-5)
    if dp is not None:
        assert result.grad_sample_mode == "fused" and result.noise_multiplier == 0.5


def test_a_task_whose_loss_or_metrics_break_the_api_is_a_config_error() -> None:
    data = _load(DataRequest(0, 1))
    model = nn.Linear(4, 1)
    mean_loss = Task("bad", lambda: nn.Linear(4, 1), _load,
                     loss=lambda out, y: mse_loss(out, y).mean(), metrics=regression_metrics,
                     primary_metric="mse")
    with pytest.raises(ConfigError, match="one value per example") as info:
        train_local(model, data.train.x, data.train.y, epochs=1, batch_size=64, lr=0.1,
                    momentum=0.0, seed=0, task=mean_loss)
    assert info.value.key == "task"
    no_primary = Task("bad2", lambda: nn.Linear(4, 1), _load, loss=mse_loss,
                      metrics=regression_metrics, primary_metric="r2")
    with pytest.raises(ConfigError, match="primary_metric 'r2'"):
        evaluate(model, data.test.x, data.test.y, task=no_primary)
