"""quickstart: the model, the data, train and test — the usual Flower app layout.

Data: scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes;
nothing is downloaded), split IID across the simulated nodes; 25 % of each share is its test set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """64 pixels -> 64 tanh units -> 10 logits (4,810 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.tanh(self.fc1(x)))
        return out


def load_data(node_config: Mapping[str, Any], batch_size: int = 32
              ) -> tuple[DataLoader[tuple[torch.Tensor, ...]], DataLoader[tuple[torch.Tensor, ...]]]:
    """This node's train and test loaders (its share from ``partition-id``/``num-partitions``)."""
    from sklearn.datasets import load_digits

    partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    share = np.array_split(order, num_partitions)[partition_id]
    cut = int(0.75 * len(share))
    xt = torch.tensor(x / 16.0, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.int64)
    train = TensorDataset(xt[share[:cut]], yt[share[:cut]])
    test = TensorDataset(xt[share[cut:]], yt[share[cut:]])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=256)


def num_examples(loader: DataLoader[tuple[torch.Tensor, ...]]) -> int:
    """Examples in a loader's dataset."""
    return len(cast(TensorDataset, loader.dataset))


def train(net: nn.Module, loader: DataLoader[tuple[torch.Tensor, ...]], epochs: int,
          lr: float) -> float:
    """Plain SGD; returns the mean training loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xb), yb)
            torch.autograd.backward(loss)
            opt.step()
            total += float(loss.item()) * len(yb)
            seen += len(yb)
    return total / max(seen, 1)


@torch.no_grad()
def test(net: nn.Module, loader: DataLoader[tuple[torch.Tensor, ...]]) -> tuple[float, float]:
    """Mean loss and accuracy."""
    net.eval()
    loss, correct, n = 0.0, 0, 0
    for xb, yb in loader:
        out = net(xb)
        loss += float(nn.functional.cross_entropy(out, yb, reduction="sum").item())
        correct += int((out.argmax(1) == yb).sum().item())
        n += len(yb)
    return loss / n, correct / n
