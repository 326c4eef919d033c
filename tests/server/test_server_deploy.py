"""``server.deploy`` without a running Flower: app staging, progress, crash accounting."""

from __future__ import annotations

import json
from pathlib import Path

from server.deploy import annotate_summary, follow_metrics, project_dir, stage_app


def test_stage_app_copies_only_the_app_sources(tmp_path: Path) -> None:
    staged = stage_app(project_dir(), tmp_path / "fedguard")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "pyproject.toml" in files
    assert {"server/app.py", "clients/app.py", "federation/config.py", "crypto/keys.py"} <= files
    assert not any(f.startswith(("tests/", "simulations/", ".venv/")) for f in files)
    assert not any("__pycache__" in f or f.endswith((".npz", ".pyc")) for f in files)


def test_metrics_are_followed_from_the_end_and_events_are_not_rounds(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"round": 1, "accuracy": 0.5, "loss": 1.0, "sampled": 3,
                                "accepted": [1, 2, 3], "seconds": 2.0}) + "\n")
    poll = follow_metrics(path, total=2)  # starts at the end: a resumed run's old lines
    assert list(poll()) == []
    row = {"round": 2, "accuracy": 0.6, "loss": 0.9, "sampled": 3, "accepted": [1, 2],
           "refused": {"3": "lost: error-reply: code 5"}, "max_epsilon": 1.5, "seconds": 4.0,
           "timings": {"train-phase": 3.9, "screen": 0.0}}
    with path.open("a") as fh:
        fh.write(json.dumps({"round": 2, "event": "server-restart", "note": "x"}) + "\n")
        fh.write(json.dumps({"round": 1, "accuracy": 0.55, "note": "evaluation after resume"})
                 + "\n")
        fh.write(json.dumps(row) + "\n" + '{"round": 3')  # the last line is still being written
    note, line = poll()
    assert note == "round   1/2  acc 0.5500  (evaluation after resume)"
    assert line.startswith("round   2/2  acc 0.6000")
    assert "not counted: node 3 (lost: error-reply: code 5)" in line


def test_summary_counts_rounds_lost_to_crashes(tmp_path: Path) -> None:
    rows = [
        {"round": 1, "accepted": [1, 2, 3], "refused": {}},
        {"round": 2, "note": "lost to a server crash", "event": "server-restart",
         "resumed_after": 1},
        {"round": 2, "accepted": [1, 2], "refused": {"3": "lost: error-reply: Node Unavailable",
                                                     "4": "budget-exhausted"}},
        # a client that crashed in round 2 and was not back in time for round 3
        {"round": 3, "accepted": [1, 2], "refused": {
            "3": "lost: offline: not connected during the round"}},
        {"round": 4, "accepted": [1, 2, 3], "refused": {}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert annotate_summary(tmp_path) is None  # no summary yet: nothing to annotate
    (tmp_path / "summary.json").write_text(json.dumps({"rounds_completed": 2}))
    s = annotate_summary(tmp_path)
    assert s is not None and s["rounds_completed"] == 2  # what the summary said
    assert s["crash_recovery"] == {
        "server_restarts": 1, "rounds_retrained": [2],
        "rounds_missing_clients": {
            "2": {"3": "lost: error-reply: Node Unavailable"},
            "3": {"3": "lost: offline: not connected during the round"}},
        "rounds_missed_by_client": {"3": 2}}
    assert json.loads((tmp_path / "summary.json").read_text()) == s
