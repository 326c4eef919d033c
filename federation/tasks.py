"""The task registry: a model builder and a dataset per task name.

Only one task ships today, ``fashion-mnist``: a small CNN (39,210 parameters) that reaches
about 90 % test accuracy when trained centrally. It has no BatchNorm, so Opacus accepts it as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["TASKS", "Task", "build_model", "flatten_params", "get_task", "load_flat_params"]


class FashionCNN(nn.Module):
    """Two conv layers and a small classifier head, for 1x28x28 inputs and 10 classes.

    ``activation`` is ``nn.ReLU`` or ``nn.Tanh``; bounded activations suit DP-SGD better
    (clipped gradients carry more signal; Papernot et al., "Tempered sigmoid activations").
    """

    def __init__(self, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),
            activation(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5),
            activation(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 32),
            activation(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Task:
    """A named task: how to build its model and the shape of one input."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int


TASKS: dict[str, Task] = {
    "fashion-mnist": Task("fashion-mnist", FashionCNN, (1, 28, 28), 10),
    "fashion-mnist-tanh": Task("fashion-mnist-tanh", lambda: FashionCNN(nn.Tanh), (1, 28, 28), 10),
}


def get_task(name: str) -> Task:
    """Return the task called ``name`` or raise ``KeyError`` naming the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def build_model(task: str = "fashion-mnist", seed: int = 0) -> nn.Module:
    """Build the task's model with a seeded (public, reproducible) initialisation."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return get_task(task).build()
    finally:
        torch.random.set_rng_state(gen_state)


def flatten_params(model: nn.Module) -> np.ndarray:
    """All trainable parameters as one flat float32 vector, in ``state_dict`` order."""
    return np.concatenate(
        [p.detach().cpu().numpy().ravel() for p in model.parameters()]
    ).astype(np.float32, copy=False)


def load_flat_params(model: nn.Module, flat: np.ndarray) -> None:
    """Copy a flat float32 vector (as made by :func:`flatten_params`) into ``model``.

    Raises ``ValueError`` if the length does not match the model.
    """
    total = sum(p.numel() for p in model.parameters())
    if flat.ndim != 1 or flat.shape[0] != total:
        raise ValueError(f"expected a flat vector of {total} values, got shape {flat.shape}")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(torch.from_numpy(np.ascontiguousarray(flat[offset : offset + n])).view_as(p))
            offset += n
