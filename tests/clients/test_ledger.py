"""Ledger persistence: Flower node state and the node-local file survive restarts; damage is
reported, never papered over with an empty ledger."""

from __future__ import annotations

import json
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
from federation.privacy import LedgerError, PrivacyEvent, PrivacyLedger, check_budget

KEY = "privacy-ledger"


def _ev(i: int, sigma: float = 1.0) -> PrivacyEvent:
    return PrivacyEvent(sigma, 0.02, 50, f"run1/round{i}")


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
    f = LedgerFile(path)
    f.append(_ev(1))
    on_disk = f.append(_ev(2))
    # A fresh process: new objects, same path.
    again = LedgerFile(path).load()
    assert again == on_disk and again.labels == ("run1/round1", "run1/round2")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "fedguard.privacy-ledger-log", "version": 1}
    assert len(lines) == 3
    with pytest.raises(LedgerError, match="already"):
        LedgerFile(path).append(_ev(2))
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left behind
    assert (path.stat().st_mode & 0o077) == 0  # private to the node's user


def test_unwritable_location_is_a_ledger_error(tmp_path: Path) -> None:
    f = LedgerFile(tmp_path / "missing-dir" / "ledger.jsonl")
    assert f.load() == PrivacyLedger()
    with pytest.raises(LedgerError, match="privacy ledger"):
        f.append(_ev(1))


def _valid_file(path: Path) -> str:
    LedgerFile(path).append(_ev(1))
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
        LedgerFile(path).append(_ev(2))  # and nothing is appended on top of damage


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


def test_a_restarted_client_still_refuses_at_its_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    budget = 3.0
    spent = PrivacyLedger()
    i = 0
    while True:
        nxt = _ev(i)
        try:
            check_budget(spent, nxt, budget, 1e-5)
        except PrivacyBudgetExceeded:
            break
        spent = LedgerFile(path).append(nxt)
        i += 1
    assert i >= 1
    # "Restart": all in-memory state is gone, only the file remains.
    reloaded = LedgerFile(path).load()
    assert reloaded.epsilon(1e-5) <= budget
    with pytest.raises(PrivacyBudgetExceeded):
        check_budget(reloaded, _ev(i), budget, 1e-5)
