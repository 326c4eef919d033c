"""A partner's task: scikit-learn's bundled breast-cancer data (569 tumours, 30 features) and a
small MLP, split across hospitals. Named in config as ``examples.breast_cancer.task:task``.

Each hospital holds a disjoint share of the 455 training records (the run's partitioner) and of
the 114 held-out test records (IID), so the sample-weighted test accuracy the server reports is
the accuracy on the whole held-out set. Features are standardised with the hospital's *own*
training statistics: no hospital shares data or statistics with another.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
from torch import nn

from federation.partition import parse_partition, partition, split_test_iid
from federation.tasks import ClientData, DataRequest, Split, Task

__all__ = ["MLP", "task"]

TEST_FRACTION = 0.2
SPLIT_SEED = 2026  # fixed: the held-out test set is the same for every run


class MLP(nn.Module):
    """30 features -> 32 tanh units -> 2 logits (benign / malignant): 1,058 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(30, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)


@lru_cache(maxsize=1)
def _dataset() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64],
                        npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    from sklearn.datasets import load_breast_cancer  # bundled with scikit-learn: no download

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = round(TEST_FRACTION * len(y))
    te, tr = order[:n_test], order[n_test:]
    return (x[tr].astype(np.float32), y[tr].astype(np.int64),
            x[te].astype(np.float32), y[te].astype(np.int64))


def load_data(request: DataRequest) -> ClientData:
    """This hospital's train and test records, standardised with its own train statistics."""
    x, y, tx, ty = _dataset()
    train_parts = partition(parse_partition(request.partition), y, request.num_partitions,
                            request.seed)
    test_parts = split_test_iid(len(ty), request.num_partitions, request.seed)
    xs, ys = x[train_parts[request.partition_id]], y[train_parts[request.partition_id]]
    txs, tys = tx[test_parts[request.partition_id]], ty[test_parts[request.partition_id]]
    mean, std = xs.mean(0), xs.std(0) + 1e-6
    return ClientData(
        train=Split(((xs - mean) / std).astype(np.float32), ys),
        test=Split(((txs - mean) / std).astype(np.float32), tys),
    )


task = Task("breast-cancer-mlp", MLP, load_data)
