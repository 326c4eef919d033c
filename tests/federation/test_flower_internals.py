"""The one module that touches Flower internals: version gate, log patterns, exit record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from federation import flower_internals as fi


def test_the_installed_flower_is_the_gated_series_and_nothing_is_off() -> None:
    assert fi.flower_version().startswith(fi.FLOWER_SERIES)
    assert fi.supported() and fi.features_off() == []
    from flwr.superlink.grid.http_grid import HttpGrid

    assert fi.http_grid_type() is HttpGrid


def test_every_log_pattern_matches_its_flower_line_and_no_other() -> None:
    for table in (fi.SUPERNODE_PATTERNS, fi.SUPERLINK_PATTERNS):
        for name, (pattern, example) in table.items():
            assert pattern.search(example), f"{name} does not match its own example"
            others = [n for n, (_p, ex) in table.items() if n != name and pattern.search(ex)]
            assert others == [], f"{name} also matches the lines of {others}"


def test_the_log_patterns_exist_in_the_installed_flower_source() -> None:
    # The fixed parts of each pattern are what Flower 1.42 logs; if Flower rewords a line,
    # this test names it (the feature that reads it would silently go blind otherwise).
    import flwr

    root = Path(flwr.__file__).parent
    source = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                       for p in root.rglob("*.py") if "test" not in p.name)
    for fragment in ("SuperNode ID: %s", "Connection attempt failed, retrying in %.2f seconds",
                     "Receiving: %s message", "Sending: %s message", "Sent successfully",
                     "SSL/TLS handshake error", "Giving up reconnection",
                     "Failed to activate SuperNode.", "Activated node_id=%s",
                     "Deactivated node_id=%s", "Connection successful after", "][ApiError:",
                     "No SuperNode found with the given public key.", "could not be activated."):
        assert fragment in source, fragment


def test_a_supernode_refusal_is_recorded_with_flowers_codes(tmp_path: Path) -> None:
    # A real SuperNode (in a child process, with the record installed) against a SuperLink
    # that does not exist would retry forever; Flower's exit path is driven directly instead:
    # the recorded exit is the one the SuperNode takes when the SuperLink refuses activation.
    record = tmp_path / "exit.json"
    script = (
        "import sys; from pathlib import Path; from federation import flower_internals as fi\n"
        "assert fi.install_exit_record(Path(sys.argv[1]))\n"
        "from flwr.supernode import fleet_http_connection as f\n"
        "f.flwr_exit(305, 'Failed to initialize the connection to the SuperLink.\\n'"
        " '[code: 2004] Failed to activate SuperNode.')\n")
    res = subprocess.run([sys.executable, "-c", script, str(record)], capture_output=True,
                         text=True, timeout=60, env={**os.environ,
                                                     "PYTHONPATH": str(Path.cwd())})
    assert res.returncode == 1  # Flower's status for every error exit
    rec = fi.read_exit_record(record)
    assert rec is not None and rec.code == 305
    assert rec.api_code == fi.API_CODE_ACTIVATION_FAILED and not rec.tls
    record.write_text(json.dumps({"code": "305"}))  # not Flower's shape: no record
    assert fi.read_exit_record(record) is None


def test_in_process_delivery_ids_the_sent_message_and_hands_over_a_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.app import ConfigRecord, Message, RecordDict

    fi.set_task_identity(run_id=3)
    content = RecordDict({"cfg": ConfigRecord({"round": 2})})
    sent = Message(content, dst_node_id=101, message_type="train", group_id="2")
    got = fi.deliver_in_process(sent)
    assert sent.metadata.message_id and got.metadata.message_id == sent.metadata.message_id
    assert (got.metadata.run_id, got.metadata.dst_node_id) == (3, 101)
    assert (got.metadata.message_type, got.metadata.group_id) == ("train", "2")
    assert got.content is not sent.content and got.content["cfg"]["round"] == 2
    reply = Message(RecordDict(), reply_to=got)  # what a ClientApp does: it answers the sent id
    assert reply.metadata.reply_to_message_id == sent.metadata.message_id
    assert fi.deliver_in_process(sent).metadata.message_id != got.metadata.message_id  # fresh
    # another Flower: refused with the versions named, not a silent private write
    monkeypatch.setattr(fi, "flower_version", lambda: "1.43.0")
    with pytest.raises(RuntimeError, match=r"1\.42\.x internals; Flower 1\.43\.0"):
        fi.deliver_in_process(sent)
    with pytest.raises(RuntimeError, match=r"Flower 1\.43\.0"):
        fi.set_task_identity(run_id=3)
