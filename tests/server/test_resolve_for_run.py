"""What the ServerApp settles before round 1: the task (a bad one fails naming the key),
``num-clients = 0`` as every connected node, a relative ``out-dir`` against the project."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from federation.config import from_flat
from federation.errors import ConfigError
from server.app import PROJECT_DIR, resolve_for_run


class Nodes:
    """Answers get_node_ids like a grid whose nodes connect one per call up to ``total``."""

    def __init__(self, total: int) -> None:
        self.total, self.calls = total, 0

    def get_node_ids(self) -> Iterable[int]:
        self.calls += 1
        return range(min(self.calls, self.total))


def test_zero_clients_means_every_connected_node_and_out_dir_is_made_absolute() -> None:
    cfg = from_flat({"num-clients": 0, "out-dir": "runs/x", "screen-quorum": 2})
    resolved = resolve_for_run(cfg, Nodes(3), settle=0.3, wait=10)
    assert resolved.run.clients == 3
    assert resolved.run.out_dir == str((PROJECT_DIR / "runs/x").resolve())
    assert resolve_for_run(from_flat({"num-clients": 2}), Nodes(0)).run.clients == 2  # as given


def test_no_node_or_a_bad_task_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_for_run(from_flat({"num-clients": 0}), Nodes(0), settle=0.1, wait=0.3)
    assert info.value.key == "num-clients"
    with pytest.raises(ConfigError, match="cannot import module") as info:
        resolve_for_run(from_flat({"task": "no_such_pkg_fg.mod:task"}), Nodes(1))
    assert info.value.key == "task"
    with pytest.raises(ConfigError) as info:  # a quorum larger than the nodes that came
        resolve_for_run(from_flat({"num-clients": 0, "screen-quorum": 3}), Nodes(2), settle=0.2)
    assert info.value.key == "screen-quorum"
