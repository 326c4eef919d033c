"""Plaintext and ciphertext payloads cannot be mixed: mypy --strict refuses it (issue 13).

The round loop is generic in the scheme's payload type (``Scheme[U]``, ``ClientResult[U]``;
``federation.updates``), and a trainer encodes only a plaintext update. This test type-checks a snippet that mixes them, with the real
mypy and the project's settings, and expects an error on exactly the mixing lines.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = '''
from __future__ import annotations

import numpy as np

from clients.schemes import TrainerScheme
from crypto import EncryptedVector
from federation.updates import NoisedUpdate, PlainUpdate
from server.encrypted import CkksScheme
from server.loop import ClientResult
from server.schemes import PlaintextScheme, Scheme, U


def ciphertext_into_plaintext(enc: EncryptedVector, plain: PlaintextScheme) -> None:
    plain.aggregate([enc], [1])  # MIXED


def plaintext_into_ckks(update: PlainUpdate, ckks: CkksScheme) -> None:
    ckks.aggregate([update], [1])  # MIXED


def raw_array_into_a_generic_loop(scheme: Scheme[U], result: ClientResult[U]) -> None:
    scheme.aggregate([np.zeros(3, np.float32)], [1])  # MIXED


def results_of_another_scheme(result: ClientResult[EncryptedVector], plain: PlaintextScheme) -> None:
    if result.payload is not None:
        plain.statistics(None, {1: result.payload}, 1)  # MIXED


def a_ciphertext_is_not_a_trainers_update(enc: EncryptedVector, scheme: TrainerScheme) -> None:
    scheme.encode_update(enc, {})  # MIXED


def noise_is_not_a_claim(update: PlainUpdate) -> NoisedUpdate:
    return update  # MIXED


def a_noised_update_is_a_plaintext_one(update: NoisedUpdate, plain: PlaintextScheme) -> None:
    plain.aggregate([update], [1])


def the_same_scheme_round_trips(scheme: Scheme[U], result: ClientResult[U]) -> None:
    if result.payload is not None:
        scheme.aggregate([result.payload], [1])
'''


def test_mypy_refuses_exactly_the_mixing_lines(tmp_path: Path) -> None:
    src = tmp_path / "mixing.py"
    src.write_text(SNIPPET)
    # run from the project root: its mypy settings and (after `make test`'s mypy) warm cache
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(src)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    errors = {int(m.group(1)) for m in re.finditer(r"mixing\.py:(\d+): error", proc.stdout)}
    expected = {i for i, line in enumerate(SNIPPET.splitlines(), 1) if line.endswith("# MIXED")}
    assert len(expected) == 6
    assert errors == expected, proc.stdout + proc.stderr
