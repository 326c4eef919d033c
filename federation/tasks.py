"""The Task API: what fedguard needs to know about a model and its data, and nothing more.

A :class:`Task` bundles

* ``build_model()`` — the model (a ``torch.nn.Module``) with its *public*, seeded
  initialisation (:func:`build_model` seeds torch around the call, so every party builds the
  same initial model);
* ``load_data(request)`` — one client's :class:`ClientData` (train, optional validation,
  test) from its partition or from its own node config (a partner's local path arrives as
  ``request.data_dir`` / ``request.node_config``);
* ``loss(outputs, targets)`` — per-example losses, shape ``(B,)``; training minimises their
  mean (DP-SGD clips each example's gradient of its own loss);
* ``metrics(outputs, targets)`` — named per-example scores, each shape ``(B,)``; the reported
  value of a metric is its mean over the examples (so client values combine by sample-weighted
  means). ``primary_metric`` names the one the run reports per round; it need not be accuracy
  and need not lie in [0, 1] (regression reports e.g. ``mse``, ``higher_is_better=False``);
* ``transform(x)`` — optional, applied to every input batch before the model (normalisation,
  feature scaling); it must treat examples independently (DP-SGD relies on it).

A task is named in config by an import string, ``task = "package.module:attribute"``, where the
attribute is a :class:`Task` (or a function of no arguments returning one). The ServerApp, every
Ray worker and every SuperNode call :func:`resolve_task` on the same string, so they all build
the same task without patches; the module must be importable on each of them. Short names stand
for the bundled tasks (:data:`BUILTIN_TASKS`). A string that does not import, or an object that
does not meet the API, raises :class:`~federation.errors.ConfigError` naming the key ``task``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from federation.config import BUILTIN_TASKS
from federation.errors import ConfigError

__all__ = [
    "FASHION_MNIST",
    "FASHION_MNIST_TANH",
    "ClientData",
    "DataRequest",
    "Split",
    "Task",
    "accuracy_metrics",
    "build_model",
    "cross_entropy_loss",
    "flatten_params",
    "get_task",
    "load_flat_params",
    "mse_loss",
    "regression_metrics",
    "resolve_task",
]

TASK_KEY = "task"  # the flat config key every task error names


# --------------------------------------------------------------------------------------------
# data containers


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one split.

    Attributes
    ----------
    x:
        ``float32`` inputs, shape ``(N, ...)`` (any feature shape: images, tabular rows).
    y:
        Targets, shape ``(N,)`` or ``(N, k)``: ``int64`` class labels for classification,
        ``float32`` values for regression. ``N`` equals ``len(x)``.
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x), np.asarray(self.y)
        if x.ndim < 2 or y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ConfigError(
                TASK_KEY,
                f"load_data returned x of shape {x.shape} and y of shape {y.shape}; expected "
                "x (N, features...) and y (N, ...) with the same N",
            )
        if x.dtype != np.float32:
            raise ConfigError(TASK_KEY, f"load_data returned x of dtype {x.dtype}; expected float32")
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.float32):
            raise ConfigError(
                TASK_KEY, f"load_data returned y of dtype {y.dtype}; expected int64 or float32"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class ClientData:
    """One client's local data: train, optional validation, and test split.

    The test split evaluates each round's global model (sample-weighted across clients); the
    validation split, when present, is for the client's own checks of a new global model.
    """

    train: Split
    test: Split
    val: Split | None = None


@dataclass(frozen=True)
class DataRequest:
    """What a task's ``load_data`` is told about the client asking.

    Attributes
    ----------
    partition_id, num_partitions:
        This client's share ``0 <= partition_id < num_partitions``.
    partition:
        The run's partition spec (``iid``, ``dirichlet:ALPHA``, ``shards:K``).
    seed:
        The run's public seed (for reproducible splits, never for DP noise).
    data_dir:
        The data folder: the node's own ``data-dir`` (node config) if it has one, else the
        run's; empty for "the task's default".
    node_config:
        The node's whole Flower node config (a partner's own keys, e.g. a CSV path).
    """

    partition_id: int
    num_partitions: int
    partition: str = "iid"
    seed: int = 0
    data_dir: str = ""
    node_config: Mapping[str, Any] = field(default_factory=dict)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricsFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Task:
    """A model, its data and how to score it. See the module docstring for the contract.

    Attributes
    ----------
    name:
        A short label for logs and reports.
    build_model:
        ``() -> nn.Module``; called under a seeded torch RNG by :func:`build_model`.
    load_data:
        ``(DataRequest) -> ClientData``.
    loss:
        ``(outputs, targets) -> per-example losses (B,)``; default cross-entropy.
    metrics:
        ``(outputs, targets) -> {name: per-example scores (B,)}``; default accuracy.
    primary_metric:
        The metric reported per round (must be a key of ``metrics``'s result).
    higher_is_better:
        Direction of ``primary_metric`` (accuracy: ``True``; mse: ``False``).
    transform:
        Optional per-batch input transform applied before the model; per-example only.
    """

    name: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[DataRequest], ClientData]
    loss: LossFn = field(default=lambda out, y: cross_entropy_loss(out, y))
    metrics: MetricsFn = field(default=lambda out, y: accuracy_metrics(out, y))
    primary_metric: str = "accuracy"
    higher_is_better: bool = True
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        for attr in ("build_model", "load_data", "loss", "metrics"):
            if not callable(getattr(self, attr)):
                raise ConfigError(TASK_KEY, f"task {self.name!r}: {attr} must be callable")
        if self.transform is not None and not callable(self.transform):
            raise ConfigError(TASK_KEY, f"task {self.name!r}: transform must be callable or None")
        if not self.primary_metric:
            raise ConfigError(TASK_KEY, f"task {self.name!r}: primary_metric must be a metric name")

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs for a batch, after the task's input transform."""
        out: torch.Tensor = model(self.transform(x) if self.transform is not None else x)
        return out


# --------------------------------------------------------------------------------------------
# standard losses and metrics (per example)


def cross_entropy_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (nats) of logits ``(B, C)`` against labels ``(B,)``."""
    return F.cross_entropy(outputs, targets, reduction="none")


def accuracy_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example correctness (1.0 / 0.0) of the arg-max class: mean = accuracy in [0, 1]."""
    return {"accuracy": (outputs.argmax(1) == targets).to(torch.float32)}


def mse_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example squared error, summed over output dimensions (target units squared)."""
    diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return diff.pow(2).sum(1)


def regression_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example ``mse`` and ``mae`` (target units squared / target units)."""
    diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return {"mse": diff.pow(2).sum(1), "mae": diff.abs().sum(1)}


# --------------------------------------------------------------------------------------------
# the bundled Fashion-MNIST tasks


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


@lru_cache(maxsize=8)
def _fashion_partitions(
    data_dir: str, spec: str, num_parts: int, seed: int
) -> tuple[Any, list[Any], list[Any]]:
    from federation.data import load_fashion_mnist
    from federation.partition import parse_partition, partition, split_test_iid

    ds = load_fashion_mnist(data_dir or None)
    train_parts = partition(parse_partition(spec), ds.train_y, num_parts, seed)
    test_parts = split_test_iid(len(ds.test_y), num_parts, seed)
    return ds, train_parts, test_parts


def fashion_raw_partition(
    request: DataRequest,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """A client's uint8 Fashion-MNIST train images and labels, then its slice of the test set.

    The train set is split by the run's partitioner; the official test set is split IID, so the
    sample-weighted mean of the clients' test accuracies is the accuracy on the whole test set.
    """
    ds, train_parts, test_parts = _fashion_partitions(
        request.data_dir, request.partition, request.num_partitions, request.seed
    )
    tr, te = train_parts[request.partition_id], test_parts[request.partition_id]
    return ds.train_x[tr], ds.train_y[tr], ds.test_x[te], ds.test_y[te]


def _fashion_data(request: DataRequest) -> ClientData:
    from federation.data import normalize

    x, y, tx, ty = fashion_raw_partition(request)
    return ClientData(
        train=Split(normalize(x), np.asarray(y, np.int64)),
        test=Split(normalize(tx), np.asarray(ty, np.int64)),
    )


FASHION_MNIST = Task("fashion-mnist", FashionCNN, _fashion_data)
"""The small Fashion-MNIST CNN (39,210 parameters, ReLU), about 90 % when trained centrally."""

FASHION_MNIST_TANH = Task("fashion-mnist-tanh", lambda: FashionCNN(nn.Tanh), _fashion_data)
"""The same CNN with tanh activations (the DP recipe's model)."""


# --------------------------------------------------------------------------------------------
# resolution


def _import_object(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            TASK_KEY,
            f"got {spec!r}; expected a bundled name ({', '.join(BUILTIN_TASKS)}) or an import "
            "string 'package.module:attribute'",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            TASK_KEY, f"cannot import module {module_name!r} of {spec!r}: {exc}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                TASK_KEY, f"module {module_name!r} has no attribute {attr!r} (from {spec!r})"
            ) from None
    return obj


@lru_cache(maxsize=32)
def resolve_task(spec: str) -> Task:
    """The :class:`Task` that ``spec`` names: a bundled short name or ``package.module:attr``.

    Raises
    ------
    ConfigError
        Key ``task``: the string does not import, or the object is not a :class:`Task` (nor a
        function of no arguments returning one).
    """
    target = BUILTIN_TASKS.get(spec, spec)
    obj = _import_object(target)
    if not isinstance(obj, Task) and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's factory: report it under the key
            raise ConfigError(TASK_KEY, f"{spec!r}: the task factory raised {exc!r}") from None
    if not isinstance(obj, Task):
        raise ConfigError(
            TASK_KEY,
            f"{spec!r} is a {type(obj).__name__}, not a federation.tasks.Task (build one with "
            "Task(name, build_model, load_data, ...))",
        )
    return obj


def get_task(name: str) -> Task:
    """Alias of :func:`resolve_task` (kept for callers that say "get")."""
    return resolve_task(name)


def build_model(task: str | Task = "fashion-mnist", seed: int = 0) -> nn.Module:
    """Build the task's model with a seeded (public, reproducible) initialisation.

    Raises ``ConfigError`` (key ``task``) if the builder fails or returns no ``nn.Module``
    with trainable parameters.
    """
    t = task if isinstance(task, Task) else resolve_task(task)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = t.build_model()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's builder: report it under the key
        raise ConfigError(TASK_KEY, f"task {t.name!r}: build_model raised {exc!r}") from None
    finally:
        torch.random.set_rng_state(gen_state)
    if not isinstance(model, nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            TASK_KEY, f"task {t.name!r}: build_model must return an nn.Module with parameters"
        )
    return model


def flatten_params(model: nn.Module) -> np.ndarray:
    """All parameters as one flat float32 vector, in ``model.parameters()`` order."""
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

