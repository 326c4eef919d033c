"""`fedguard keys init`: provisioned CKKS keys, TLS material and auth keys, usable as a bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crypto import PublicContext, SecretContext
from crypto.keys import load_server_bundle, load_trainer_bundle

ROOT = Path(__file__).resolve().parents[2]


def _keys_init(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.cli", "keys", "init", "--out", str(out),
                           "--trainers", "2"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_keys_init_writes_loadable_bundles(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    proc = _keys_init(out, {"FEDGUARD_PASSPHRASE": "correct horse battery"})
    assert proc.returncode == 0, proc.stderr
    assert "correct horse" not in proc.stdout + proc.stderr
    server = load_server_bundle(out / "server")
    public = PublicContext.from_bytes(server.ckks_public)
    assert public.fingerprint == server.ckks_fingerprint
    for i in range(2):
        trainer = load_trainer_bundle(out / f"trainer-{i}", "correct horse battery")
        secret = SecretContext.from_bytes(trainer.ckks_secret)
        assert secret.fingerprint == public.fingerprint
    assert len(server.supernode_public_keys) == 2


def test_keys_init_without_a_passphrase_fails_clearly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FEDGUARD_PASSPHRASE"}
    proc = subprocess.run([sys.executable, "-m", "simulations.cli", "keys", "init", "--out",
                           str(tmp_path / "k"), "--trainers", "1"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "FEDGUARD_PASSPHRASE" in proc.stderr
    assert not (tmp_path / "k").exists()


def test_new_keys_never_use_the_retired_screening_preset(tmp_path: Path) -> None:
    # its uploads cannot be validity-checked: a new federation must not start without the check
    from typer.testing import CliRunner

    from simulations.cli import app

    res = CliRunner().invoke(app, ["keys", "init", "--out", str(tmp_path / "k"), "--trainers", "1",
                                   "--preset", "screening"], env={"FEDGUARD_PASSPHRASE": "x" * 12})
    assert res.exit_code != 0
    assert "'screening' is retired" in res.output and "use aggregation" in res.output
    assert not (tmp_path / "k").exists()
