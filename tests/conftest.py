"""Shared fixtures: an in-memory fake of Flower's Grid that drives the real ClientApp."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Error, Message, RecordDict

from federation.flower_internals import deliver_in_process, set_task_identity

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FEDGUARD_TORCH_THREADS", "1")


# -- the suite on several workers (pytest-xdist, ``-n`` in pyproject's addopts) ----------------
# Each worker is its own process. Whatever a test starts without naming its own Ray temp dir or
# Flower home (a child inherits this environment) gets the worker's, so two workers' Ray
# sessions and Flower configs never share a folder. Ports are always picked free (port 0).
# Fresh folders, not "<name>-gw0": another checkout's suite may run at the same time.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    for _var, _prefix in (("RAY_TMPDIR", "fgray"), ("FLWR_HOME", "fgflwr")):
        # under /tmp, short: Ray's socket paths must stay below ~107 characters
        os.environ[_var] = _dir = tempfile.mkdtemp(prefix=f"{_prefix}-{_WORKER}-", dir="/tmp")
        atexit.register(shutil.rmtree, _dir, True)

# The long files, longest first (measured: pytest --durations, per-file sums). ``--dist loadfile
# --no-loadscope-reorder`` hands whole files to workers in collection order, so these start at
# once on the free workers instead of arriving last behind hundreds of fast tests; a file (and
# its module-scoped deployment or simulation) stays on one worker. The suite is CPU-bound on 2
# cores, so what matters is that no long file starts late: a file is split where its tests
# need no common set-up (test_processes / test_processes_server, test_simulation /
# test_scenarios_command, test_examples / test_quickstart). Every file marked ``integration``
# must be named here (tests/test_suite_schedule.py checks it).
LONG_FILES = (
    "tests/integration/test_processes.py",
    "tests/integration/test_poisoning.py",
    "tests/integration/test_recovery.py",
    "tests/integration/test_processes_server.py",  # mostly waiting: overlaps the others
    "tests/integration/test_encoding_attacks.py",
    "tests/examples/test_quickstart.py",
    "tests/examples/test_examples.py",
    "tests/integration/test_simulation.py",
    "tests/integration/test_scenarios_command.py",
    "tests/examples/test_flwr_run.py",
    # not a simulation: real mypy on a snippet, ~30 s when its cache is cold (a fresh clone)
    "tests/server/test_scheme_types.py",
)
_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}

    def key(item: pytest.Item) -> int:
        try:
            name = item.path.resolve().relative_to(_ROOT).as_posix()
        except ValueError:
            return len(LONG_FILES)
        return rank.get(name, len(LONG_FILES))

    items.sort(key=key)  # stable: the order within a file and among the others is kept


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # ``-n auto``: one worker more than cores, at most 4 (each holds torch, Flower, TenSEAL).
    # The extra one because the real-process tests mostly wait (SuperLink/SuperNode polling,
    # heartbeats, client waits): their worker leaves a core nearly idle for minutes.
    return max(2, min(4, len(os.sched_getaffinity(0)) + 1))


ReplyTamper = Callable[[int, Message], Message | Error | None]


class FakeGrid:
    """Delivers each message to a ClientApp in this process, synchronously.

    ``tamper(node_id, reply)`` may replace a reply (a malicious or broken client), return an
    :class:`~flwr.app.Error` (sent back as the error reply to the delivered message), or return
    ``None`` (the node died: an error reply comes back, as from a real SuperLink).
    """

    def __init__(self, client_app: Any, num_nodes: int, *, run_id: int = 7,
                 tamper: ReplyTamper | None = None,
                 node_config: Callable[[int], dict[str, Any]] | None = None) -> None:
        set_task_identity(run_id)
        self.client_app = client_app
        self.tamper = tamper
        self.nodes = {100 + i: Context(
            run_id=run_id, node_id=100 + i,
            node_config=(node_config(i) if node_config else {"partition-id": i, "num-partitions": num_nodes}),
            state=RecordDict(), run_config={}) for i in range(num_nodes)}
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            delivered = deliver_in_process(msg)  # msg gets its id; the node gets a copy
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            reply = self.client_app(delivered, self.nodes[node])
            if self.tamper is not None:
                tampered = self.tamper(node, reply)
                if tampered is None:
                    tampered = Error(code=5, reason="node unavailable")
                reply = tampered if isinstance(tampered, Message) else Message(tampered, reply_to=delivered)
            replies.append(reply)
        return replies


@pytest.fixture
def fake_grid() -> type[FakeGrid]:
    return FakeGrid


class Recorder:
    """A RunObserver that keeps everything the round loop reports, in memory."""

    def __init__(self) -> None:
        self.rounds: list[Any] = []
        self.audit: list[dict[str, object]] = []
        self.checkpoints: list[int] = []
        self.states: list[dict[str, object]] = []

    def on_round(self, report: Any) -> None:
        self.rounds.append(report)

    def on_audit(self, entry: dict[str, object]) -> None:
        self.audit.append(entry)

    def on_checkpoint(self, round_: int, state: dict[str, object]) -> None:
        self.checkpoints.append(round_)
        self.states.append(state)


@pytest.fixture
def recorder() -> type[Recorder]:
    return Recorder
