"""The audit log's hash chain: every edit, deletion or reordering is reported at its line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.audit import AuditLog, verify_log

ROOT = Path(__file__).resolve().parents[2]


def _log(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, {"run": "test"})
    for i in range(n):
        log.append({"round": i + 1, "node": 100 + i, "event": "accepted", "weight": 1000 + i})
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_an_untouched_log_verifies_and_a_resumed_log_continues_the_chain(tmp_path: Path) -> None:
    path = _log(tmp_path)
    report = verify_log(path)
    assert report.ok and report.entries == 6
    again = AuditLog(path, {"run": "ignored"})  # a resumed run
    again.append({"round": 6, "event": "accepted"})
    assert verify_log(path).ok and verify_log(path).entries == 7
    first = json.loads(_lines(path)[0])
    assert all(json.loads(line)["start"] == first["hash"] for line in _lines(path)[1:])


def _edit(lines: list[str]) -> list[str]:
    entry = json.loads(lines[3])
    entry["weight"] = 4096  # a larger weight than the one used
    return [*lines[:3], json.dumps(entry, sort_keys=True), *lines[4:]]


@pytest.mark.parametrize(
    ("tamper", "line", "words"),
    [
        (_edit, 4, "edited"),
        (lambda ls: [*ls[:2], *ls[3:]], 3, "deleted"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "moved"),
        (lambda ls: [*ls[:1], *ls[2:]], 2, "deleted"),
        (lambda ls: ["{not json", *ls[1:]], 1, "not a JSON"),
    ],
    ids=["edited", "deleted", "reordered", "second-deleted", "garbled"],
)
def test_tampering_is_reported_at_the_first_broken_link(tmp_path: Path, tamper, line: int,
                                                        words: str) -> None:
    path = _log(tmp_path)
    _write(path, tamper(_lines(path)))
    report = verify_log(path)
    assert not report.ok
    assert report.line == line and words in report.reason, report


def test_a_cut_off_tail_is_caught_against_the_summary(tmp_path: Path) -> None:
    path = _log(tmp_path)
    head = verify_log(path)
    summary = {"audit_entries": head.entries, "audit_head": head.head}
    _write(path, _lines(path)[:-1])
    assert verify_log(path).ok  # a shorter chain is still a chain...
    report = verify_log(path, summary)  # ...but not the one the run summary recorded
    assert not report.ok and "truncated" in report.reason


def test_the_command_reports_the_first_broken_link(tmp_path: Path) -> None:
    path = _log(tmp_path)
    cmd = [sys.executable, "-m", "simulations.cli", "audit", "verify", str(tmp_path)]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0 and "intact: 6 entries" in ok.stdout, ok.stdout + ok.stderr
    _write(path, _edit(_lines(path)))
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 1 and "broken at line 4" in bad.stdout, bad.stdout + bad.stderr
