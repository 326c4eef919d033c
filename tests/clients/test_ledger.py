"""Ledger persistence: Flower node state and the node-local file survive restarts; damage is
reported, never papered over with an empty ledger."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from clients.ledger import (
    LedgerFile,
    ledger_from_state,
    ledger_to_state,
    load_ledger,
    record_event,
)
from federation.errors import PrivacyBudgetExceeded
from federation.privacy import LedgerError, PrivacyBudget, PrivacyEvent, PrivacyLedger

KEY = "privacy-ledger"


def _ev(i: int, sigma: float = 1.0) -> PrivacyEvent:
    return PrivacyEvent(sigma, 0.02, 50, f"run1/round{i}")


def _record_alone(path: Path, event: PrivacyEvent) -> PrivacyLedger:
    """What a freshly started process does: an empty node state, the node's file."""
    return record_event(RecordDict(), KEY, event, LedgerFile(path))


def test_state_round_trip_survives_a_new_client_object() -> None:
    state = RecordDict()
    assert ledger_from_state(state, KEY) == PrivacyLedger()
    ledger = PrivacyLedger((_ev(1), _ev(2)))
    ledger_to_state(state, KEY, ledger)
    # Simulation re-creates the client every round; only the node's RecordDict persists.
    restored = ledger_from_state(RecordDict(dict(state.items())), KEY)
    assert restored == ledger
    assert restored.epsilon(1e-5) == ledger.epsilon(1e-5)


def test_state_only_grows() -> None:
    state = RecordDict()
    ledger_to_state(state, KEY, PrivacyLedger((_ev(1), _ev(2))))
    with pytest.raises(LedgerError, match="refusing to drop"):
        ledger_to_state(state, KEY, PrivacyLedger((_ev(1),)))
    with pytest.raises(LedgerError, match="refusing to drop"):
        ledger_to_state(state, KEY, PrivacyLedger((_ev(1), _ev(2, sigma=9.0))))
    ledger_to_state(state, KEY, PrivacyLedger((_ev(1), _ev(2), _ev(3))))
    assert len(ledger_from_state(state, KEY)) == 3


@pytest.mark.parametrize(
    "record",
    [
        MetricRecord({"json": 1.0}),
        ConfigRecord({"other": "x"}),
        ConfigRecord({"json": 3}),
        ConfigRecord({"json": "{not json"}),
    ],
)
def test_state_with_something_else_under_the_key_is_an_error(record: object) -> None:
    state = RecordDict({KEY: record})  # type: ignore[dict-item]
    with pytest.raises(LedgerError, match=KEY):
        ledger_from_state(state, KEY)


def test_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    assert LedgerFile(path).load() == PrivacyLedger()  # a new node
    _record_alone(path, _ev(1))
    on_disk = _record_alone(path, _ev(2))
    # A fresh process: new objects, same path.
    again = LedgerFile(path).load()
    assert again == on_disk and again.labels == ("run1/round1", "run1/round2")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "fedguard.privacy-ledger-log", "version": 1}
    assert len(lines) == 3
    with pytest.raises(LedgerError, match="already"):
        _record_alone(path, _ev(2))
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left behind
    assert (path.stat().st_mode & 0o077) == 0  # private to the node's user


def test_unwritable_location_is_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "ledger.jsonl"
    assert LedgerFile(path).load() == PrivacyLedger()
    with pytest.raises(LedgerError, match="privacy ledger"):
        _record_alone(path, _ev(1))


def _valid_file(path: Path) -> str:
    _record_alone(path, _ev(1))
    return path.read_text()


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: "",  # emptied
        lambda t: t[:-5],  # truncated mid-line
        lambda t: t[:-1],  # lost the final newline
        lambda t: t + "garbage\n",
        lambda t: t + "\n",  # blank line
        lambda t: t.replace('"steps": 50', '"steps": -50'),
        lambda t: t.replace('"steps": 50', '"steps": NaN'),
        lambda t: t.replace("privacy-ledger-log", "something-else"),
        lambda t: t + t.splitlines()[1] + "\n",  # the same event twice
        lambda t: "\xff\xfe" + t,
    ],
)
def test_corrupt_file_is_a_clear_error_never_an_empty_ledger(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ledger.jsonl"
    text = _valid_file(path)
    path.write_bytes(damage(text).encode("utf-8", "surrogateescape"))
    with pytest.raises(LedgerError, match=str(path.name)):
        LedgerFile(path).load()
    with pytest.raises(LedgerError):
        _record_alone(path, _ev(2))  # and nothing is appended on top of damage


def test_record_event_keeps_state_and_file_in_step(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    state = RecordDict()
    f = LedgerFile(path)
    record_event(state, KEY, _ev(1), f)
    record_event(state, KEY, _ev(2), f)
    assert ledger_from_state(state, KEY) == f.load() == load_ledger(state, KEY, f)

    # The process restarts with an empty node state: the file brings the history back.
    fresh_state = RecordDict()
    restored = load_ledger(fresh_state, KEY, LedgerFile(path))
    assert restored.labels == ("run1/round1", "run1/round2")

    # State that knows an event the file lacks (file configured later): the union is kept.
    state2 = RecordDict()
    ledger_to_state(state2, KEY, PrivacyLedger((_ev(7),)))
    merged = record_event(state2, KEY, _ev(3), LedgerFile(path))
    assert set(merged.labels) == {"run1/round1", "run1/round2", "run1/round3", "run1/round7"}
    assert LedgerFile(path).load() == merged == ledger_from_state(state2, KEY)

    with pytest.raises(LedgerError, match="conflicting"):
        ledger_to_state(state3 := RecordDict(), KEY, PrivacyLedger((_ev(1, sigma=5.0),)))
        load_ledger(state3, KEY, LedgerFile(path))


def test_events_held_only_in_node_state_reach_the_file(tmp_path: Path) -> None:
    # The measured bug: the node state held 3 events, the file 1 (it was configured later), and
    # each round appended only its own event to the file; after a restart the client counted
    # the file's ε (4.55 instead of 7.77) and would train past its budget.
    path = tmp_path / "ledger.jsonl"
    state = RecordDict()
    ledger_to_state(state, KEY, PrivacyLedger((_ev(1), _ev(2), _ev(3))))
    _record_alone(path, _ev(3))
    assert len(LedgerFile(path).load()) == 1
    full = record_event(state, KEY, _ev(4), LedgerFile(path))
    assert full.labels == ("run1/round1", "run1/round2", "run1/round3", "run1/round4")
    restarted = load_ledger(RecordDict(), KEY, LedgerFile(path))
    assert restarted == full == ledger_from_state(state, KEY)
    assert restarted.epsilon(1e-5) == full.epsilon(1e-5) > PrivacyLedger((_ev(3), _ev(4))).epsilon(1e-5)


def _fill(budget: PrivacyBudget, record: object) -> int:
    """Record events until the budget refuses one; returns how many were recorded."""
    i = 0
    while True:
        try:
            record(_ev(i))  # type: ignore[operator]
        except PrivacyBudgetExceeded:
            return i
        i += 1


def test_a_restarted_client_still_refuses_at_its_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    budget = PrivacyBudget(3.0, 1e-5, "rdp")
    state = RecordDict()
    recorded = _fill(budget, lambda ev: record_event(state, KEY, ev, LedgerFile(path), budget=budget))
    assert recorded >= 1
    # "Restart": all in-memory state is gone, only the file remains.
    reloaded = load_ledger(RecordDict(), KEY, LedgerFile(path))
    assert len(reloaded) == recorded and reloaded.epsilon(1e-5, "rdp") <= budget.epsilon
    with pytest.raises(PrivacyBudgetExceeded):
        record_event(RecordDict(), KEY, _ev(recorded), LedgerFile(path), budget=budget)
    assert LedgerFile(path).load() == reloaded  # a refused event is not written


def test_the_budget_is_checked_against_the_file_not_a_stale_view(tmp_path: Path) -> None:
    # Two runs on one node, each with its own node state: run A read the ledger before run B
    # spent; A's release must still be checked against what B wrote.
    path = tmp_path / "ledger.jsonl"
    budget = PrivacyBudget(3.0, 1e-5, "rdp")
    state_a, state_b = RecordDict(), RecordDict()
    record_event(state_a, KEY, PrivacyEvent(1.0, 0.02, 50, "a/round0"), LedgerFile(path), budget=budget)
    recorded_b = _fill(budget, lambda ev: record_event(state_b, KEY, PrivacyEvent(
        1.0, 0.02, 50, f"b/{ev.label}"), LedgerFile(path), budget=budget))
    assert recorded_b >= 1
    assert budget.check(ledger_from_state(state_a, KEY), PrivacyEvent(1.0, 0.02, 50, "a/round1")) <= 3.0
    with pytest.raises(PrivacyBudgetExceeded):
        record_event(state_a, KEY, PrivacyEvent(1.0, 0.02, 50, "a/round1"), LedgerFile(path), budget=budget)
    assert LedgerFile(path).load().epsilon(1e-5, "rdp") <= budget.epsilon


def test_two_concurrent_runs_on_one_node_never_exceed_the_budget(tmp_path: Path) -> None:
    # Two runs, each with its own node state and its own open file; flock excludes separate
    # open files exactly as it excludes separate processes. fsync releases the GIL, so the
    # two writers interleave between each other's read, check and write.
    path = tmp_path / "ledger.jsonl"
    budget = PrivacyBudget(3.0, 1e-5, "rdp")
    budget.check(PrivacyLedger(), _ev(0))  # warm the accountant so both start together
    go = threading.Barrier(2)
    errors: list[BaseException] = []
    recorded: list[str] = []

    def run(name: str) -> None:
        state = RecordDict()
        go.wait()
        for i in range(30):
            try:
                record_event(state, KEY, PrivacyEvent(1.0, 0.02, 50, f"{name}/round{i}"),
                             LedgerFile(path), budget=budget)
                recorded.append(f"{name}/round{i}")
            except PrivacyBudgetExceeded:
                pass
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    ledger = LedgerFile(path).load()
    assert ledger.epsilon(budget.delta, "rdp") <= budget.epsilon
    # The file holds exactly the events either run was told were recorded (which run got
    # the room first is the scheduler's choice), and no room is left.
    assert sorted(ledger.labels) == sorted(recorded) and recorded
    with pytest.raises(PrivacyBudgetExceeded):
        budget.check(ledger, PrivacyEvent(1.0, 0.02, 50, "run-c/round0"))


# --------------------------------------------------------------------------------------------
# through the real ClientApp and round loop


def _fed(**flat: object):  # type: ignore[no-untyped-def]
    from federation.config import from_flat

    return from_flat({"num-clients": 2, "num-server-rounds": 1, "partition": "iid",
                      "data-dir": "subset", "batch-size": 32, "dp-accountant": "rdp", **flat})


def _run(grid, cfg, rec) -> None:  # type: ignore[no-untyped-def]
    from server.app import make_scheme
    from server.loop import run_federation

    run_federation(grid, cfg, make_scheme(cfg), observer=rec)


def test_a_trainer_writes_its_whole_history_to_a_file_configured_later(
        fake_grid, recorder, tmp_path: Path) -> None:
    from clients.app import app as client_app

    grid = fake_grid(client_app, 2, run_id=1)
    _run(grid, _fed(**{"dp-noise": 1.0}), recorder())  # node state only: no ledger file yet
    for i, ctx in enumerate(grid.nodes.values()):
        ctx.node_config["ledger-file"] = str(tmp_path / f"l{i}.jsonl")
        ctx.run_id = 2
    _run(grid, _fed(**{"dp-noise": 1.0}), recorder())
    for i, ctx in enumerate(grid.nodes.values()):
        in_state = ledger_from_state(ctx.state, KEY)
        assert in_state.labels == ("run1/round1", "run2/round1")
        assert LedgerFile(tmp_path / f"l{i}.jsonl").load() == in_state


def test_calibration_after_a_restart_pays_for_the_recorded_history(
        fake_grid, recorder, tmp_path: Path) -> None:
    from clients.app import app as client_app

    # The node spent part of its budget in an earlier run; it now joins a two-round run with
    # the same budget. Planning both rounds as if fresh would refuse round 2; planning what is
    # left trains both rounds and ends within, and close to, the budget.
    budget = 3.0
    prior = PrivacyEvent(1.2, 32 / 900, 29, "run1/round1")
    spent = PrivacyLedger((prior,)).epsilon(1e-5, "rdp")
    assert 0.3 * budget < spent < 0.7 * budget
    for i in range(2):
        _record_alone(tmp_path / f"l{i}.jsonl", prior)
    grid = fake_grid(client_app, 2, run_id=2, node_config=lambda i: {
        "partition-id": i, "num-partitions": 2, "ledger-file": str(tmp_path / f"l{i}.jsonl")})
    rec = recorder()
    _run(grid, _fed(**{"dp-epsilon": budget, "num-server-rounds": 2}), rec)
    assert [len(r.accepted) for r in rec.rounds] == [2, 2]
    assert all(not r.refused for r in rec.rounds)
    final = rec.rounds[-1].epsilon_by_client
    assert len(final) == 2
    for i in range(2):
        on_disk = LedgerFile(tmp_path / f"l{i}.jsonl").load()
        assert on_disk.labels == ("run1/round1", "run2/round1", "run2/round2")
        assert 0.95 * budget <= on_disk.epsilon(1e-5, "rdp") <= budget
