"""ResNet-style CNNs with GroupNorm for 32x32x3 inputs: realistic model sizes for benchmarks.

Two tasks, both 10-class classifiers:

* :data:`RESNET_1M` — widths 64/128/256, one residual block per stage: 1.22 M parameters;
* :data:`RESNET_10M` — widths 128/256/512, two blocks per stage: 11.09 M parameters.

GroupNorm instead of BatchNorm: BatchNorm mixes the examples of a batch, which breaks
per-example clipping (Opacus refuses it). The fused per-sample-gradient engine covers every
layer here (``clients.grad_sample.fused_plan``: the 32x32 and 16x16 stages by materialised
per-sample gradients, the 8x8 stage by ghost norm); ``fedguard bench models`` measures it.

Data: a directory in the CIFAR-10 *binary* layout (``data_batch_1.bin`` ... ``data_batch_5.bin``
and ``test_batch.bin``; each record one label byte and 3072 pixel bytes, channel-major) when the
run's or the node's ``data-dir`` points at one; otherwise generated data (seeded class templates
plus noise, learnable but not natural images), so benchmarks and tests need no download.
Nothing is ever downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from federation.errors import DataError
from federation.tasks import ClientData, DataRequest, Split, Task

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "RESNET_1M", "RESNET_10M", "ResNetGN", "load_cifar10_bin"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_RECORD = 1 + 3 * 32 * 32
GENERATED_TRAIN_PER_CLIENT = 256  # examples per client when no CIFAR-10 directory is given
GENERATED_TEST_PER_CLIENT = 64


class _Block(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a (projected when the shape changes) skip."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.act = nn.ReLU()  # not in place: per-sample gradient hooks need the tensors intact
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(groups, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        out: torch.Tensor = self.act(self.norm2(self.conv2(h)) + self.skip(x))
        return out


class ResNetGN(nn.Module):
    """Stem, three stages (stride 1, 2, 2), global average pooling, linear head.

    Parameters
    ----------
    widths:
        Channels of the three stages.
    blocks:
        Residual blocks per stage.
    groups:
        GroupNorm groups (divides every width).
    num_classes:
        Output logits.
    """

    def __init__(self, widths: tuple[int, int, int], blocks: int = 1, groups: int = 16,
                 num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.GroupNorm(groups, widths[0]),
            nn.ReLU(),
        ]
        cin = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(_Block(cin, width, 2 if (stage > 0 and b == 0) else 1, groups))
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.flatten(self.pool(self.features(x)), 1))
        return out


def load_cifar10_bin(directory: str | Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64],
                                                     npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Train images, labels, test images, labels from a CIFAR-10 binary-layout directory.

    Images are ``uint8`` ``(N, 3, 32, 32)``; labels ``int64`` in 0..9. Raises
    :class:`DataError` naming the file that is missing or malformed.
    """
    root = Path(directory)

    def read(names: list[str]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        xs, ys = [], []
        for name in names:
            path = root / name
            if not path.is_file():
                raise DataError(f"data-dir {root}: missing {name} (CIFAR-10 binary layout)")
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % _RECORD:
                raise DataError(f"{path}: size {raw.size} is not a multiple of {_RECORD} bytes")
            rec = raw.reshape(-1, _RECORD)
            if int(rec[:, 0].max()) > 9:
                raise DataError(f"{path}: a label is outside 0..9")
            ys.append(rec[:, 0].astype(np.int64))
            xs.append(rec[:, 1:].reshape(-1, 3, 32, 32))
        return np.concatenate(xs), np.concatenate(ys)

    tx, ty = read([f"data_batch_{i}.bin" for i in range(1, 6)])
    vx, vy = read(["test_batch.bin"])
    return tx, ty, vx, vy


@lru_cache(maxsize=4)
def _cifar_partitions(directory: str, spec: str, num_parts: int, seed: int) -> tuple[
        tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.uint8],
              npt.NDArray[np.int64]], list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]]]:
    from federation.partition import parse_partition, partition, split_test_iid

    data = load_cifar10_bin(directory)
    train_parts = partition(parse_partition(spec), data[1], num_parts, seed)
    return data, train_parts, split_test_iid(len(data[3]), num_parts, seed)


def _normalize(x: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    out = x.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CIFAR_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR_STD, np.float32).reshape(1, 3, 1, 1)
    return ((out - mean) / std).astype(np.float32)


def _generated(request: DataRequest) -> ClientData:
    # Class templates come from the public run seed (every client shares them); each client's
    # examples from its own stream. Low-frequency templates plus strong noise: learnable,
    # not trivially separable.
    templates_rng = np.random.default_rng([request.seed, 10])
    coarse = templates_rng.normal(0.0, 1.0, (10, 3, 4, 4)).astype(np.float32)
    templates = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    rng = np.random.default_rng([request.seed, 11, request.partition_id])

    def make(n: int) -> Split:
        y = rng.integers(0, 10, n).astype(np.int64)
        x = templates[y] + rng.normal(0.0, 1.5, (n, 3, 32, 32)).astype(np.float32)
        return Split(x.astype(np.float32), y)

    return ClientData(train=make(GENERATED_TRAIN_PER_CLIENT), test=make(GENERATED_TEST_PER_CLIENT))


def _load(request: DataRequest) -> ClientData:
    directory = request.data_dir
    if directory and directory != "subset" and (Path(directory) / "data_batch_1.bin").exists():
        (tx, ty, vx, vy), train_parts, test_parts = _cifar_partitions(
            str(Path(directory).resolve()), request.partition, request.num_partitions, request.seed
        )
        tr, te = train_parts[request.partition_id], test_parts[request.partition_id]
        return ClientData(train=Split(_normalize(tx[tr]), ty[tr]),
                          test=Split(_normalize(vx[te]), vy[te]))
    if directory and directory != "subset":
        raise DataError(f"data-dir {directory}: no data_batch_1.bin (CIFAR-10 binary layout); "
                        "leave data-dir empty for generated data")
    return _generated(request)


RESNET_1M = Task("resnet-1m", lambda: ResNetGN((64, 128, 256), blocks=1), _load)
"""GroupNorm ResNet, 1.22 M parameters, 32x32x3 inputs, 10 classes."""

RESNET_10M = Task("resnet-10m", lambda: ResNetGN((128, 256, 512), blocks=2, groups=32), _load)
"""GroupNorm ResNet, 11.09 M parameters, 32x32x3 inputs, 10 classes."""
