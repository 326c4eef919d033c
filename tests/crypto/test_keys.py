"""Properties of crypto.keys: wrapping, keys at rest, provisioning."""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import at_rest, keys, tls
from crypto.keys import (
    WrapKeyPair,
    load_server_bundle,
    load_trainer_bundle,
    open_at_rest,
    provision_federation,
    read_passphrase,
    seal_at_rest,
    unwrap_secret,
    wrap_key_fingerprint,
    wrap_secret,
)
from federation.errors import CryptoError, DecryptionFailed

SECRET = b"TOP-SECRET-CKKS-CONTEXT\x00\x01\x02" * 3
PUBLIC = b"public-ckks-context-bytes" * 4
PASSPHRASE = "hunter2-correct-horse"
FINGERPRINT = "sha256:0123456789abcdef"
RUN, TO = "run-42", "node-7"


@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seal with the cheapest accepted scrypt cost so that tests stay fast."""
    monkeypatch.setattr(at_rest, "_SCRYPT_LOG2_N", 14)


def _no_leak(exc: BaseException, *secrets: bytes | str) -> None:
    """The error text and repr carry nothing secret, and nothing is chained."""
    for text in (str(exc), repr(exc), str(exc.args)):
        for s in secrets:
            needle = s if isinstance(s, str) else s.decode("latin-1")
            assert needle not in text
            if isinstance(s, bytes):
                assert s.hex() not in text
                assert repr(s)[2:-1] not in text
    if isinstance(exc, DecryptionFailed):
        assert exc.__cause__ is None and exc.__context__ is None
        assert str(exc) == "decryption failed"


def _flips(blob: bytes) -> Iterator[bytes]:
    for i in range(len(blob)):
        for mask in (0x01, 0x80):
            changed = bytearray(blob)
            changed[i] ^= mask
            yield bytes(changed)


# ----------------------------------------------------------------------------- wrapping


def test_wrap_round_trip() -> None:
    kp = WrapKeyPair.generate()
    for secret in (b"x", SECRET, os.urandom(100_000)):
        blob = wrap_secret(secret, kp.public_bytes, run_id=RUN, recipient_id=TO)
        if len(secret) >= 16:
            assert secret not in blob
        assert unwrap_secret(blob, kp, run_id=RUN, recipient_id=TO) == secret
    # bytes-like inputs are accepted; two wraps of one secret differ (ephemeral keys)
    blob2 = wrap_secret(bytearray(SECRET), kp.public_bytes, run_id=RUN, recipient_id=TO)  # type: ignore[arg-type]
    assert unwrap_secret(memoryview(blob2), kp, run_id=RUN, recipient_id=TO) == SECRET  # type: ignore[arg-type]
    assert blob2 != wrap_secret(SECRET, kp.public_bytes, run_id=RUN, recipient_id=TO)


def test_every_byte_flip_truncation_and_extension_fails() -> None:
    kp = WrapKeyPair.generate()
    blob = wrap_secret(SECRET, kp.public_bytes, run_id=RUN, recipient_id=TO)
    candidates = [*_flips(blob), *(blob[:n] for n in range(len(blob))), blob + b"\x00"]
    for bad in candidates:
        with pytest.raises(DecryptionFailed) as info:
            unwrap_secret(bad, kp, run_id=RUN, recipient_id=TO)
        _no_leak(info.value, SECRET, kp.private_bytes())


def test_wrong_key_run_or_recipient_fails() -> None:
    kp, other = WrapKeyPair.generate(), WrapKeyPair.generate()
    blob = wrap_secret(SECRET, kp.public_bytes, run_id=RUN, recipient_id=TO)
    attempts: list[Callable[[], bytes]] = [
        lambda: unwrap_secret(blob, other, run_id=RUN, recipient_id=TO),
        lambda: unwrap_secret(blob, kp, run_id="run-43", recipient_id=TO),
        lambda: unwrap_secret(blob, kp, run_id=RUN, recipient_id="node-8"),
        lambda: unwrap_secret(blob, kp, run_id=TO, recipient_id=RUN),
    ]
    for attempt in attempts:
        with pytest.raises(DecryptionFailed) as info:
            attempt()
        _no_leak(info.value, SECRET)


def test_ids_are_bound_without_ambiguity() -> None:
    kp = WrapKeyPair.generate()
    blob = wrap_secret(SECRET, kp.public_bytes, run_id="ab", recipient_id="c")
    with pytest.raises(DecryptionFailed):
        unwrap_secret(blob, kp, run_id="a", recipient_id="bc")
    blob = wrap_secret(SECRET, kp.public_bytes, run_id="r|to=x", recipient_id="y")
    with pytest.raises(DecryptionFailed):
        unwrap_secret(blob, kp, run_id="r", recipient_id="x|to=y")


def test_bad_version_degenerate_ephemeral_and_junk_fail() -> None:
    kp = WrapKeyPair.generate()
    blob = wrap_secret(SECRET, kp.public_bytes, run_id=RUN, recipient_id=TO)
    for bad in (
        b"FGW\x02" + blob[4:],
        b"FGW\x00" + blob[4:],
        blob[:4] + bytes(32) + blob[36:],  # low-order ephemeral key
        b"",
        os.urandom(len(blob)),
    ):
        with pytest.raises(DecryptionFailed):
            unwrap_secret(bad, kp, run_id=RUN, recipient_id=TO)
    with pytest.raises(DecryptionFailed):
        unwrap_secret("not bytes", kp, run_id=RUN, recipient_id=TO)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_peer_public_key_size_is_checked(size: int) -> None:
    with pytest.raises(CryptoError, match="32 bytes") as info:
        wrap_secret(SECRET, b"\x05" * size, run_id=RUN, recipient_id=TO)
    assert not isinstance(info.value, DecryptionFailed)
    _no_leak(info.value, SECRET)


def test_degenerate_peer_public_key_is_refused() -> None:
    with pytest.raises(CryptoError, match="not a usable X25519 key") as info:
        wrap_secret(SECRET, bytes(32), run_id=RUN, recipient_id=TO)
    _no_leak(info.value, SECRET)


def test_wrap_argument_checks() -> None:
    pub = WrapKeyPair.generate().public_bytes
    with pytest.raises(CryptoError, match="secret must be"):
        wrap_secret(b"", pub, run_id=RUN, recipient_id=TO)
    with pytest.raises(CryptoError, match="run_id"):
        wrap_secret(SECRET, pub, run_id="", recipient_id=TO)
    with pytest.raises(CryptoError, match="recipient_id"):
        wrap_secret(SECRET, pub, run_id=RUN, recipient_id="x" * 1025)
    with pytest.raises(CryptoError, match="must be bytes"):
        wrap_secret("text", pub, run_id=RUN, recipient_id=TO)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="WrapKeyPair"):
        unwrap_secret(b"x" * 80, pub, run_id=RUN, recipient_id=TO)  # type: ignore[arg-type]


def test_keypair_hides_its_private_half() -> None:
    kp = WrapKeyPair.generate()
    private = kp.private_bytes()
    assert len(private) == 32 and len(kp.public_bytes) == 32
    assert private.hex() not in repr(kp) and repr(private) not in repr(kp)
    assert kp.fingerprint in repr(kp)
    assert kp.fingerprint == wrap_key_fingerprint(kp.public_bytes)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(kp)
    again = WrapKeyPair.from_private_bytes(private)
    assert again.public_bytes == kp.public_bytes
    blob = wrap_secret(SECRET, kp.public_bytes, run_id=RUN, recipient_id=TO)
    assert unwrap_secret(blob, again, run_id=RUN, recipient_id=TO) == SECRET
    with pytest.raises(CryptoError, match="32 bytes"):
        WrapKeyPair.from_private_bytes(private[:31])


# ------------------------------------------------------------------------- keys at rest


def test_seal_uses_the_default_cost_and_round_trips() -> None:
    blob = seal_at_rest(SECRET, PASSPHRASE)
    assert blob[:4] == b"FGS\x01"
    assert tuple(blob[4:8]) == (1, 16, 8, 1)  # scrypt, n = 2**16, r = 8, p = 1
    assert SECRET not in blob
    assert open_at_rest(blob, PASSPHRASE) == SECRET
    with pytest.raises(DecryptionFailed) as info:
        open_at_rest(blob, PASSPHRASE + "x")
    _no_leak(info.value, SECRET, PASSPHRASE)


def test_passphrase_is_normalised(fast_kdf: None) -> None:
    composed, decomposed = "caf\u00e9-passphrase", "cafe\u0301-passphrase"
    assert open_at_rest(seal_at_rest(SECRET, composed), decomposed) == SECRET


def test_passphrase_rules(fast_kdf: None) -> None:
    with pytest.raises(CryptoError, match="at least 8") as info:
        seal_at_rest(SECRET, "short")
    _no_leak(info.value, SECRET, "short")
    with pytest.raises(CryptoError, match="non-empty"):
        seal_at_rest(SECRET, "")
    with pytest.raises(CryptoError, match="non-empty"):
        open_at_rest(seal_at_rest(SECRET, PASSPHRASE), "")
    with pytest.raises(CryptoError, match="secret must be"):
        seal_at_rest(b"", PASSPHRASE)


def test_every_byte_flip_of_a_sealed_blob_fails(
    fast_kdf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = seal_at_rest(b"sealed-payload", PASSPHRASE)
    costs: list[tuple[int, int, int]] = []
    real = at_rest.Scrypt  # the cryptography KDF at_rest derives with

    def spy(*, salt: bytes, length: int, n: int, r: int, p: int) -> object:
        costs.append((n.bit_length() - 1, r, p))
        return real(salt=salt, length=length, n=n, r=r, p=p)

    monkeypatch.setattr(at_rest, "Scrypt", spy)
    # Every header byte (magic, KDF id and parameters, salt, nonce) and every
    # ciphertext/tag byte; each attempt runs scrypt, so one bit per byte.
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(DecryptionFailed) as info:
            open_at_rest(bytes(bad), PASSPHRASE)
        _no_leak(info.value, b"sealed-payload", PASSPHRASE)
    for other in (blob[:-1], blob[:36], blob + b"\x00", b"FGS\x02" + blob[4:]):
        with pytest.raises(DecryptionFailed):
            open_at_rest(other, PASSPHRASE)
    assert costs and max(c[0] for c in costs) <= 17
    assert {c[1] for c in costs} == {8} and max(c[2] for c in costs) <= 2


def test_tampered_kdf_params_are_refused_before_scrypt(
    fast_kdf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = seal_at_rest(SECRET, PASSPHRASE)
    calls: list[tuple[int, int, int]] = []

    class Spy:  # never run a real, possibly huge, scrypt here
        def __init__(self, *, salt: bytes, length: int, n: int, r: int, p: int) -> None:
            calls.append((n.bit_length() - 1, r, p))

        def derive(self, key_material: bytes) -> bytes:
            return b"\x00" * 32

    monkeypatch.setattr(at_rest, "Scrypt", Spy)
    for offset in (5, 6, 7):  # log2(n), r, p
        for value in range(256):
            bad = bytearray(blob)
            bad[offset] = value
            with pytest.raises(DecryptionFailed):
                open_at_rest(bytes(bad), PASSPHRASE)
    # Only parameters inside the caps (<= 128 MiB) ever reached scrypt.
    assert all(14 <= n <= 17 and r == 8 and 1 <= p <= 2 for n, r, p in calls)
    assert 128 * 8 * 2 ** max(n for n, _, _ in calls) <= 128 * 2**20
    monkeypatch.undo()
    huge = bytearray(blob)
    huge[5] = 40  # n = 2**40 would need 1 PiB
    start = time.perf_counter()
    with pytest.raises(DecryptionFailed):
        open_at_rest(bytes(huge), PASSPHRASE)
    assert time.perf_counter() - start < 0.05


def test_read_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_PASSPHRASE", PASSPHRASE)
    assert read_passphrase() == PASSPHRASE
    monkeypatch.delenv("FEDGUARD_PASSPHRASE")
    monkeypatch.setenv("OTHER_VAR", "other-value-123")
    assert read_passphrase("OTHER_VAR", prompt=False) == "other-value-123"

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    with pytest.raises(CryptoError, match="FEDGUARD_PASSPHRASE"):
        read_passphrase()
    with pytest.raises(CryptoError, match="FEDGUARD_PASSPHRASE"):
        read_passphrase(prompt=False)

    answers = iter([PASSPHRASE, PASSPHRASE, PASSPHRASE, PASSPHRASE, "different-one", ""])
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal(""))
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    assert read_passphrase() == PASSPHRASE
    assert read_passphrase(confirm=True) == PASSPHRASE
    with pytest.raises(CryptoError, match="differ") as info:
        read_passphrase(confirm=True)
    _no_leak(info.value, PASSPHRASE, "different-one")
    with pytest.raises(CryptoError, match="empty"):
        read_passphrase()


# ------------------------------------------------------------------------- provisioning


def _provision(out: Path, trainers: int = 2, **kw: object) -> keys.ProvisionResult:
    return provision_federation(
        out,
        trainers,
        PASSPHRASE,
        ckks_secret=SECRET,
        ckks_public=PUBLIC,
        fingerprint=FINGERPRINT,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(at_rest, "_SCRYPT_LOG2_N", 14)
        out = tmp_path_factory.mktemp("prov") / "fed"
        _provision(out, 2, hosts=("superlink.example.org", "10.1.2.3"), federation="demo")
    return out


@pytest.fixture
def copy(provisioned: Path, tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    shutil.copytree(provisioned, out)
    return out


EXPECTED = {
    "manifest.json": 0o644,
    "server/manifest.json": 0o644,
    "server/ckks-public.bin": 0o644,
    "server/ca.pem": 0o644,
    "server/server.pem": 0o644,
    "server/server.key": 0o600,
    "server/supernode-keys/trainer-0.pub": 0o644,
    "server/supernode-keys/trainer-1.pub": 0o644,
    **{
        f"trainer-{i}/{name}": mode
        for i in range(2)
        for name, mode in {
            "manifest.json": 0o644,
            "ckks-secret.sealed": 0o600,
            "supernode-auth": 0o600,
            "supernode-auth.pub": 0o644,
            "ca.pem": 0o644,
        }.items()
    },
}


def test_provision_layout_and_modes(provisioned: Path) -> None:
    found = {
        p.relative_to(provisioned).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in provisioned.rglob("*")
        if p.is_file()
    }
    assert found == EXPECTED
    for d in (provisioned, provisioned / "server", provisioned / "trainer-0"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not [p for p in provisioned.parent.iterdir() if p.name.startswith(".")]


def test_manifests_hash_public_files_and_hold_no_secret(provisioned: Path) -> None:
    secret_files = [p for p, mode in EXPECTED.items() if mode == 0o600]
    secret_blobs = [(provisioned / p).read_bytes() for p in secret_files]
    secret_hashes = {hashlib.sha256(b).hexdigest() for b in secret_blobs}
    for rel, mode in EXPECTED.items():
        if mode == 0o600:
            continue
        data = (provisioned / rel).read_bytes()
        assert SECRET not in data and PASSPHRASE.encode() not in data
        assert not any(h.encode() in data for h in secret_hashes)
        assert not any(b[40:80] in data for b in secret_blobs)

    top = json.loads((provisioned / "manifest.json").read_text())
    assert top["format"] == "fedguard-keys" and top["version"] == 1
    assert top["federation"] == "demo" and top["trainers"] == 2
    assert top["ckks_fingerprint"] == FINGERPRINT and top["created"].endswith("+00:00")
    public = {p for p, mode in EXPECTED.items() if mode == 0o644 and p != "manifest.json"}
    assert set(top["files"]) == public
    assert set(top["secret_files"]) == set(secret_files)
    for rel, entry in top["files"].items():
        assert entry["sha256"] == hashlib.sha256((provisioned / rel).read_bytes()).hexdigest()
    assert (provisioned / "server/ckks-public.bin").read_bytes() == PUBLIC


def test_load_bundles(provisioned: Path) -> None:
    trainer = load_trainer_bundle(provisioned / "trainer-1", PASSPHRASE)
    assert trainer.ckks_secret == SECRET
    assert (trainer.name, trainer.federation, trainer.ckks_fingerprint) == (
        "trainer-1",
        "demo",
        FINGERPRINT,
    )
    assert trainer.ca_cert_path.read_bytes() == (provisioned / "server/ca.pem").read_bytes()
    priv = serialization.load_ssh_private_key(trainer.auth_private_key_path.read_bytes(), None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert isinstance(priv.curve, ec.SECP384R1)
    assert SECRET.hex() not in repr(trainer) and repr(SECRET)[2:-1] not in repr(trainer)

    server = load_server_bundle(provisioned / "server")
    assert server.ckks_public == PUBLIC and server.trainers == 2
    assert server.ckks_fingerprint == FINGERPRINT
    for i, line in enumerate(server.supernode_public_keys):
        mine = (provisioned / f"trainer-{i}/supernode-auth.pub").read_bytes()
        assert line == mine and line.count(b"\n") == 1
        pub = serialization.load_ssh_public_key(line)
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert isinstance(pub.curve, ec.SECP384R1)
    assert [p.name for p in server.supernode_public_key_paths] == ["trainer-0.pub", "trainer-1.pub"]


def test_wrong_passphrase_for_bundle(provisioned: Path) -> None:
    with pytest.raises(DecryptionFailed) as info:
        load_trainer_bundle(provisioned / "trainer-0", "not-the-passphrase")
    _no_leak(info.value, SECRET, PASSPHRASE, "not-the-passphrase")


@pytest.mark.parametrize(
    "rel", ["trainer-0/ca.pem", "trainer-0/supernode-auth.pub", "server/ckks-public.bin",
            "server/server.pem", "server/ca.pem", "server/supernode-keys/trainer-1.pub"]
)  # fmt: skip
def test_tampered_public_file_is_named(copy: Path, rel: str) -> None:
    path = copy / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    name = rel.split("/", 1)[1]
    with pytest.raises(CryptoError, match=f"bundle file {name} does not match the manifest"):
        if rel.startswith("trainer"):
            load_trainer_bundle(copy / "trainer-0", PASSPHRASE)
        else:
            load_server_bundle(copy / "server")


def test_tampered_secret_or_bound_manifest_field_is_opaque(copy: Path) -> None:
    sealed = copy / "trainer-0/ckks-secret.sealed"
    original = sealed.read_bytes()
    for i in (0, 5, 10, 30, len(original) - 1):
        bad = bytearray(original)
        bad[i] ^= 0x01
        sealed.write_bytes(bytes(bad))
        with pytest.raises(DecryptionFailed) as info:
            load_trainer_bundle(copy / "trainer-0", PASSPHRASE)
        _no_leak(info.value, SECRET, PASSPHRASE)
    sealed.write_bytes(original)

    # Another trainer's sealed file (same passphrase, same secret) does not open here.
    shutil.copy(copy / "trainer-1/ckks-secret.sealed", sealed)
    with pytest.raises(DecryptionFailed):
        load_trainer_bundle(copy / "trainer-0", PASSPHRASE)
    sealed.write_bytes(original)

    # The CKKS fingerprint in the manifest is bound to the sealed secret.
    manifest = copy / "trainer-0/manifest.json"
    doc = json.loads(manifest.read_text())
    doc["ckks_fingerprint"] = "sha256:forged"
    manifest.write_text(json.dumps(doc))
    with pytest.raises(DecryptionFailed):
        load_trainer_bundle(copy / "trainer-0", PASSPHRASE)


def test_server_cert_must_come_from_the_bundled_ca(copy: Path) -> None:
    # Even with a consistent manifest, a CA that did not sign server.pem is refused.
    other_ca, _ = tls.make_ca("someone else")
    (copy / "server/ca.pem").write_bytes(other_ca)
    manifest = copy / "server/manifest.json"
    doc = json.loads(manifest.read_text())
    doc["files"]["ca.pem"]["sha256"] = hashlib.sha256(other_ca).hexdigest()
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CryptoError, match=r"server\.pem is not signed by ca\.pem"):
        load_server_bundle(copy / "server")


def test_server_key_must_match_the_certificate(copy: Path) -> None:
    ca_pem, ca_key = tls.make_ca("someone else")
    (copy / "server/server.key").write_bytes(tls.make_server_cert(ca_pem, ca_key, ["x.org"])[1])
    with pytest.raises(CryptoError, match=r"server\.key does not match server\.pem"):
        load_server_bundle(copy / "server")


def test_mismatched_auth_key_is_detected(copy: Path) -> None:
    shutil.copy(copy / "trainer-1/supernode-auth", copy / "trainer-0/supernode-auth")
    with pytest.raises(CryptoError, match="supernode-auth does not match"):
        load_trainer_bundle(copy / "trainer-0", PASSPHRASE)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(role="server"),
        lambda d: d["files"].update({"../../etc/passwd": {"sha256": "00"}}),
        lambda d: d["files"].update({"/etc/passwd": {"sha256": "00"}}),
        lambda d: d["files"].pop("ca.pem"),
        lambda d: d["secret_files"].remove("ckks-secret.sealed"),
        lambda d: d.update(trainers="2"),
    ],
)
def test_malformed_manifest_is_refused(
    copy: Path, edit: Callable[[dict[str, object]], object]
) -> None:
    manifest = copy / "trainer-0/manifest.json"
    doc = json.loads(manifest.read_text())
    edit(doc)
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CryptoError) as info:
        load_trainer_bundle(copy / "trainer-0", PASSPHRASE)
    assert not isinstance(info.value, DecryptionFailed)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match=r"manifest\.json"):
        load_server_bundle(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"{not json")
    with pytest.raises(CryptoError, match="malformed"):
        load_server_bundle(tmp_path)


def test_refuses_to_overwrite(fast_kdf: None, tmp_path: Path) -> None:
    out = tmp_path / "fed"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CryptoError, match="not empty; refusing to overwrite"):
        _provision(out, 1)
    with pytest.raises(CryptoError, match="not a fedguard key directory"):
        _provision(out, 1, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"

    (out / "notes.txt").unlink()  # an empty directory is fine
    first = _provision(out, 1)
    with pytest.raises(CryptoError, match="refusing to overwrite"):
        _provision(out, 1)
    second = _provision(out, 2, overwrite=True)
    assert second.ca_fingerprint != first.ca_fingerprint
    assert load_server_bundle(out / "server").trainers == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed"]  # no staging leftovers

    file_target = tmp_path / "file"
    file_target.write_text("x")
    with pytest.raises(CryptoError, match="not a directory"):
        _provision(file_target, 1, overwrite=True)


def test_failure_leaves_nothing_behind(
    fast_kdf: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> tuple[bytes, bytes]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tls, "make_server_cert", boom)
    with pytest.raises(RuntimeError):
        _provision(tmp_path / "fed", 2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"trainers": 0}, "trainers"),
        ({"trainers": True}, "trainers"),
        ({"trainers": 1001}, "trainers"),
        ({"federation": "bad name"}, "federation name"),
        ({"fingerprint": "has space"}, "fingerprint"),
        ({"ckks_public": SECRET}, "public context"),
        ({"ckks_secret": b""}, "must not be empty"),
        ({"hosts": "localhost"}, "single string"),
        ({"hosts": ["*.example.org"]}, "invalid host"),
        ({"passphrase": "short"}, "at least 8"),
    ],
)
def test_provision_argument_checks(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "out_dir": tmp_path / "fed",
        "trainers": 1,
        "passphrase": PASSPHRASE,
        "ckks_secret": SECRET,
        "ckks_public": PUBLIC,
        "fingerprint": FINGERPRINT,
    }
    args.update(kwargs)
    with pytest.raises(CryptoError, match=match) as info:
        provision_federation(**args)  # type: ignore[arg-type]
    _no_leak(info.value, SECRET, PASSPHRASE)
    assert list(tmp_path.iterdir()) == []
