"""``fedguard server`` / ``fedguard client`` refusals that need no running Flower.

Each refusal must name its true cause and only flags that exist, fit one line when the output
is not a terminal, and come before any Flower process is started.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from crypto.keys import provision_federation
from simulations.cli import app
from simulations.cli_deploy import register
from simulations.options import FLAG_KEYS, flag_for, flat_from_flags

PASSPHRASE = "cli-test-passphrase"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crypto.ckks import Preset, SecretContext

    secret = SecretContext.generate(Preset.SCREENING)
    root = tmp_path_factory.mktemp("keys") / "fed"
    provision_federation(root, 1, PASSPHRASE, ckks_secret=secret.to_bytes(),
                         ckks_public=secret.public().to_bytes(), fingerprint=secret.fingerprint)
    return root


def _server(keys: Path, out: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["server", "--keys", str(keys / "server"), "--out", str(out),
                                   *args], env={"FEDGUARD_PASSPHRASE": PASSPHRASE})
    return res.exit_code, res.output


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_register_adds_server_and_client_commands() -> None:
    sub = typer.Typer()
    register(sub)
    assert {c.name for c in sub.registered_commands} == {"server", "client"}


def test_every_flag_maps_to_a_config_key_and_back() -> None:
    from federation.config import FLAT_KEYS

    assert set(FLAG_KEYS.values()) <= set(FLAT_KEYS)
    assert flag_for("num-server-rounds") == "--rounds"
    assert flag_for("num-clients") == "--clients"
    # One client cannot form the default quorum of two: a quorum the user did not give follows.
    assert flat_from_flags({"--clients": 1, "--screen-quorum": None})["screen-quorum"] == 1
    assert flat_from_flags({"--clients": 1, "--screen-quorum": 2})["screen-quorum"] == 2
    assert "screen-quorum" not in flat_from_flags({"--clients": 5})


def test_a_bad_data_dir_is_refused_before_the_superlink_starts(keys: Path,
                                                                tmp_path: Path) -> None:
    # One client with CKKS: the quorum the user did not give must not be what is refused.
    missing = tmp_path / ("a-data-folder-with-a-long-name-" * 3) / "nowhere"
    code, out = _server(keys, tmp_path / "run", "--clients", "1", "--secure-aggregation",
                        "ckks", "--data-dir", str(missing))
    line = _error_line(out)
    assert code == 2 and line.startswith(f"error: --data-dir {missing}"), out
    assert len(line) > 120  # one line however long: rich must not wrap it at 80 columns
    assert "--screen-quorum" not in out
    assert not (tmp_path / "run" / ".flwr" / "superlink.log").exists()


def test_refusals_name_the_flags_that_exist(keys: Path, tmp_path: Path) -> None:
    code, out = _server(keys, tmp_path / "run", "--rounds", "0")
    assert code == 2 and _error_line(out).startswith("error: --rounds: "), out
    assert "num-server-rounds" not in out
    saved = tmp_path / "old"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"flat": {"seed": 0, "num-clients": 1}}))
    code, out = _server(keys, saved, "--resume", "--seed", "3", "--clients", "1")
    assert code == 2 and "--resume cannot change --seed" in _error_line(out), out
    code, out = _server(keys, tmp_path / "fresh", "--resume")
    assert code == 2 and "--resume: " in _error_line(out), out
    # A checkpoint that cannot be read is refused before any SuperLink starts.
    (saved / "checkpoints").mkdir()
    (saved / "checkpoints" / "round-0001.npz").write_bytes(b"not a checkpoint")
    code, out = _server(keys, saved, "--resume", "--data-dir", "subset")
    assert code == 2 and "--resume: " in _error_line(out) and "cannot be read" in out, out
    assert not (saved / ".flwr" / "superlink.log").exists()


def test_a_busy_port_names_the_process_holding_it(keys: Path, tmp_path: Path) -> None:
    import os

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, out = _server(keys, tmp_path / "run", "--data-dir", "subset", "--port", str(port))
    line = _error_line(out)
    assert code == 2 and f"--port {port} on 127.0.0.1 is in use by pid {os.getpid()}" in line
