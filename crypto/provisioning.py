"""Provisioning a federation's key material once (``fedguard keys init``) and loading it back.

:func:`provision_federation` writes one directory per trainer (sealed CKKS
secret context, SuperNode authentication key pair, CA certificate) and one
for the server (public CKKS context, TLS certificate and key, the
trainers' authentication public keys), each with a ``manifest.json`` that
lists the SHA-256 of every public file and only the names of secret files.
:func:`load_trainer_bundle` and :func:`load_server_bundle` read them back
and check the manifest. The CA private key is discarded after signing: to
renew the server certificate, provision again.

The CKKS secret context is sealed at rest (:mod:`crypto.at_rest`) under the trainers'
passphrase. Malformed bundles raise :class:`~federation.errors.CryptoError` with a message that
names the problem but never contains key material or a passphrase; a wrong passphrase raises
:class:`~federation.errors.DecryptionFailed`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import tls
from crypto._keybytes import as_bytes, fields
from crypto.at_rest import new_passphrase_bytes, open_with_label, seal_with_label
from federation.errors import CryptoError

__all__ = ["ProvisionResult", "ServerBundle", "TrainerBundle", "load_server_bundle",
           "load_trainer_bundle", "provision_federation"]

_BUNDLE_FORMAT: Final = "fedguard-keys"
_BUNDLE_VERSION: Final = 1
_MANIFEST: Final = "manifest.json"
_MAX_MANIFEST_BYTES: Final = 1 << 20
_MAX_TRAINERS: Final = 1000
_FEDERATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FINGERPRINT = re.compile(r"^[\x21-\x7e]{1,256}$")
_MANIFEST_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*){0,2}$")

_SERVER_DIR: Final = "server"
_CKKS_SECRET: Final = "ckks-secret.sealed"
_CKKS_PUBLIC: Final = "ckks-public.bin"
_CA_CERT: Final = "ca.pem"
_SERVER_CERT: Final = "server.pem"
_SERVER_KEY: Final = "server.key"
_AUTH_KEY: Final = "supernode-auth"
_AUTH_PUB: Final = "supernode-auth.pub"
_SUPERNODE_KEYS: Final = "supernode-keys"
_ALWAYS_HOSTS: Final = ("127.0.0.1", "localhost")


@dataclasses.dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision_federation` wrote.

    Attributes
    ----------
    out_dir:
        The federation directory (absolute).
    server_dir:
        ``out_dir/server``: copy it to the SuperLink host.
    trainer_dirs:
        ``out_dir/trainer-<i>`` for ``i = 0 .. trainers-1``: copy each to its
        trainer's host; tell the trainer the passphrase out of band.
    manifest_path:
        ``out_dir/manifest.json``.
    ca_fingerprint:
        SHA-256 fingerprint of the CA certificate, for checking copies.
    created:
        Creation time, ISO 8601 UTC.
    """

    out_dir: Path
    server_dir: Path
    trainer_dirs: tuple[Path, ...]
    manifest_path: Path
    ca_fingerprint: str
    created: str


@dataclasses.dataclass(frozen=True, eq=False)
class TrainerBundle:
    """One trainer's provisioned material, as loaded by :func:`load_trainer_bundle`.

    Attributes
    ----------
    directory:
        The trainer directory.
    name:
        ``"trainer-<i>"``.
    federation:
        Federation name.
    ckks_fingerprint:
        Fingerprint of the CKKS key set; compare it with the server's.
    ckks_secret:
        The unsealed CKKS secret context. Secret: hidden from ``repr``.
    auth_private_key_path:
        SuperNode authentication private key (``--auth-supernode-private-key``).
    auth_public_key_path:
        The matching OpenSSH public key.
    ca_cert_path:
        CA certificate for ``flower-supernode --root-certificates``.
    """

    directory: Path
    name: str
    federation: str
    ckks_fingerprint: str
    ckks_secret: bytes = dataclasses.field(repr=False)
    auth_private_key_path: Path
    auth_public_key_path: Path
    ca_cert_path: Path


@dataclasses.dataclass(frozen=True, eq=False)
class ServerBundle:
    """The server's provisioned material, as loaded by :func:`load_server_bundle`.

    Attributes
    ----------
    directory:
        The server directory.
    federation:
        Federation name.
    trainers:
        Number of provisioned trainers.
    ckks_fingerprint:
        Fingerprint of the CKKS key set, as recorded at provisioning.
    ckks_public:
        The public CKKS context (cannot decrypt; hidden from ``repr`` for size).
    ca_cert_path, server_cert_path, server_key_path:
        For ``flower-superlink --ssl-ca-certfile --ssl-certfile --ssl-keyfile``.
    supernode_public_keys:
        The trainers' SuperNode authentication public keys (OpenSSH lines),
        in trainer order.
    supernode_public_key_paths:
        The same keys as files, for ``flwr supernode register``.
    """

    directory: Path
    federation: str
    trainers: int
    ckks_fingerprint: str
    ckks_public: bytes = dataclasses.field(repr=False)
    ca_cert_path: Path
    server_cert_path: Path
    server_key_path: Path
    supernode_public_keys: tuple[bytes, ...]
    supernode_public_key_paths: tuple[Path, ...]


def provision_federation(
    out_dir: Path,
    trainers: int,
    passphrase: str,
    *,
    ckks_secret: bytes,
    ckks_public: bytes,
    fingerprint: str,
    hosts: Sequence[str] = _ALWAYS_HOSTS,
    federation: str = "fedguard",
    overwrite: bool = False,
) -> ProvisionResult:
    """Create all key material of one federation under ``out_dir``.

    Parameters
    ----------
    out_dir:
        Directory to create. It must not exist or be empty, unless
        ``overwrite`` is set *and* it holds an earlier fedguard key directory.
        Its parent is created if needed.
    trainers:
        Number of trainers (1-1000); directories ``trainer-0`` ... are made.
    passphrase:
        Seals each trainer's copy of the CKKS secret context (at least 8
        characters). Give it to the trainers out of band.
    ckks_secret:
        Serialized CKKS secret context; only trainers get it, sealed.
    ckks_public:
        Serialized public CKKS context (cannot decrypt); goes to the server.
    fingerprint:
        Fingerprint of the CKKS key set (printable ASCII, no spaces, at most
        256 characters); recorded in the manifests and bound to each sealed
        secret.
    hosts:
        Names the SuperNodes use to reach the SuperLink; ``127.0.0.1`` and
        ``localhost`` are always added to the certificate.
    federation:
        Name of the federation: letters, digits, ``_.-``, at most 64.
    overwrite:
        Replace an existing fedguard key directory at ``out_dir``.

    Returns
    -------
    ProvisionResult
        Paths of what was written.

    Raises
    ------
    CryptoError
        Invalid argument, ``out_dir`` not empty (without ``overwrite``) or not
        a fedguard key directory (with it).

    Notes
    -----
    Layout (private files mode ``0600``, directories ``0700``)::

        out_dir/
          manifest.json                federation-wide: hashes of all public files
          server/
            manifest.json
            ckks-public.bin            public CKKS context
            ca.pem                     CA certificate
            server.pem                 SuperLink TLS certificate
            server.key                 SuperLink TLS key                 (0600)
            supernode-keys/trainer-<i>.pub
          trainer-<i>/
            manifest.json
            ckks-secret.sealed         CKKS secret context, sealed       (0600)
            supernode-auth             SuperNode auth key, OpenSSH       (0600)
            supernode-auth.pub
            ca.pem

    Everything is written to a temporary sibling directory first and moved
    into place at the end, so a failure leaves no half-written federation.
    The CA private key is never written.
    """
    target = Path(out_dir).expanduser().absolute()
    count = _check_trainers(trainers)
    name = _check_federation(federation)
    fp = _check_fingerprint(fingerprint)
    secret = as_bytes(ckks_secret, "ckks_secret")
    public = as_bytes(ckks_public, "ckks_public")
    if not secret or not public:
        raise CryptoError("ckks_secret and ckks_public must not be empty")
    if secrets.compare_digest(secret, public):
        raise CryptoError("ckks_public equals ckks_secret: the server must get the public context")
    all_hosts = tls.normalise_hosts([*_ALWAYS_HOSTS, *_host_list(hosts)])
    # Check the passphrase (and the target) before any expensive work.
    new_passphrase_bytes(passphrase)
    _check_target(target, overwrite)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        created = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
        ca_pem, ca_key = tls.make_ca(f"{name} federation CA")
        server_pem, server_key = tls.make_server_cert(ca_pem, ca_key, all_hosts)
        del ca_key  # never written: provisioning again is how certificates are renewed
        ca_fp = tls.certificate_fingerprint(ca_pem)
        common = {
            "federation": name,
            "trainers": count,
            "ckks_fingerprint": fp,
            "ca_fingerprint": ca_fp,
            "created": created,
        }
        top_files: dict[str, str] = {}
        top_secrets: list[str] = []

        trainer_names = [f"trainer-{i}" for i in range(count)]
        auth_publics: list[bytes] = []
        for trainer in trainer_names:
            tdir = staging / trainer
            tdir.mkdir(mode=0o700)
            auth_private, auth_public = tls.make_supernode_auth_keypair()
            auth_public += b" " + f"{name}/{trainer}".encode() + b"\n"
            auth_publics.append(auth_public)
            sealed = seal_with_label(secret, passphrase, label=_secret_label(name, trainer, fp))
            files = {_CA_CERT: ca_pem, _AUTH_PUB: auth_public}
            private = {_CKKS_SECRET: sealed, _AUTH_KEY: auth_private}
            _write_bundle(tdir, "trainer", trainer, common, files, private)
            top_files |= {f"{trainer}/{k}": _sha256(v) for k, v in files.items()}
            top_files[f"{trainer}/{_MANIFEST}"] = _sha256((tdir / _MANIFEST).read_bytes())
            top_secrets += [f"{trainer}/{k}" for k in sorted(private)]

        sdir = staging / _SERVER_DIR
        sdir.mkdir(mode=0o700)
        (sdir / _SUPERNODE_KEYS).mkdir(mode=0o755)
        files = {_CKKS_PUBLIC: public, _CA_CERT: ca_pem, _SERVER_CERT: server_pem}
        files |= {
            f"{_SUPERNODE_KEYS}/{t}.pub": k
            for t, k in zip(trainer_names, auth_publics, strict=True)
        }
        private = {_SERVER_KEY: server_key}
        _write_bundle(sdir, "server", _SERVER_DIR, common, files, private)
        top_files |= {f"{_SERVER_DIR}/{k}": _sha256(v) for k, v in files.items()}
        top_files[f"{_SERVER_DIR}/{_MANIFEST}"] = _sha256((sdir / _MANIFEST).read_bytes())
        top_secrets.append(f"{_SERVER_DIR}/{_SERVER_KEY}")

        manifest = _manifest("federation", name, common, top_files, top_secrets)
        _write_file(staging / _MANIFEST, manifest, private=False)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ProvisionResult(
        out_dir=target,
        server_dir=target / _SERVER_DIR,
        trainer_dirs=tuple(target / t for t in trainer_names),
        manifest_path=target / _MANIFEST,
        ca_fingerprint=ca_fp,
        created=created,
    )


def load_trainer_bundle(directory: Path, passphrase: str) -> TrainerBundle:
    """Load and check one trainer's directory made by :func:`provision_federation`.

    Parameters
    ----------
    directory:
        A ``trainer-<i>`` directory (with its own ``manifest.json``).
    passphrase:
        The federation passphrase.

    Returns
    -------
    TrainerBundle
        With the CKKS secret context unsealed.

    Raises
    ------
    DecryptionFailed
        Wrong passphrase, or the sealed secret (or the manifest fields bound
        to it: federation, trainer name, CKKS fingerprint) was changed.
    CryptoError
        Missing or malformed manifest, a public file that does not match it
        (``"bundle file X does not match the manifest"``), an authentication
        key that is not a P-384 OpenSSH key or does not match its public key.
    """
    root = Path(directory).expanduser().absolute()
    manifest = _read_manifest(root, "trainer")
    _verify_files(root, manifest, required=(_CA_CERT, _AUTH_PUB))
    _require_secret_files(root, manifest, (_CKKS_SECRET, _AUTH_KEY))
    name = manifest["name"]
    if not re.fullmatch(r"trainer-[0-9]{1,4}", name):
        raise CryptoError(f"bundle manifest in {root} names an unknown trainer")
    public = _load_auth_public((root / _AUTH_PUB).read_bytes(), _AUTH_PUB)
    private = _load_auth_private((root / _AUTH_KEY).read_bytes())
    if _ssh_public(private.public_key()) != _ssh_public(public):
        raise CryptoError(f"bundle file {_AUTH_KEY} does not match {_AUTH_PUB}")
    secret = open_with_label(
        (root / _CKKS_SECRET).read_bytes(),
        passphrase,
        label=_secret_label(manifest["federation"], name, manifest["ckks_fingerprint"]),
    )
    return TrainerBundle(
        directory=root,
        name=name,
        federation=manifest["federation"],
        ckks_fingerprint=manifest["ckks_fingerprint"],
        ckks_secret=secret,
        auth_private_key_path=root / _AUTH_KEY,
        auth_public_key_path=root / _AUTH_PUB,
        ca_cert_path=root / _CA_CERT,
    )


def load_server_bundle(directory: Path) -> ServerBundle:
    """Load and check the ``server`` directory made by :func:`provision_federation`.

    Parameters
    ----------
    directory:
        The ``server`` directory (with its own ``manifest.json``).

    Returns
    -------
    ServerBundle
        Public CKKS context, TLS paths and authorised SuperNode keys.

    Raises
    ------
    CryptoError
        Missing or malformed manifest, a file that does not match it
        (``"bundle file X does not match the manifest"``), a server
        certificate that is not signed by ``ca.pem`` or has expired, a TLS key
        that does not match it, or a SuperNode key that is not P-384.
    """
    root = Path(directory).expanduser().absolute()
    manifest = _read_manifest(root, "server")
    trainers = manifest["trainers"]
    key_files = tuple(f"{_SUPERNODE_KEYS}/trainer-{i}.pub" for i in range(trainers))
    _verify_files(root, manifest, required=(_CKKS_PUBLIC, _CA_CERT, _SERVER_CERT, *key_files))
    _require_secret_files(root, manifest, (_SERVER_KEY,))
    _check_server_tls(root)
    keys = tuple((root / f).read_bytes() for f in key_files)
    for f, k in zip(key_files, keys, strict=True):
        _load_auth_public(k, f)
    return ServerBundle(
        directory=root,
        federation=manifest["federation"],
        trainers=trainers,
        ckks_fingerprint=manifest["ckks_fingerprint"],
        ckks_public=(root / _CKKS_PUBLIC).read_bytes(),
        ca_cert_path=root / _CA_CERT,
        server_cert_path=root / _SERVER_CERT,
        server_key_path=root / _SERVER_KEY,
        supernode_public_keys=keys,
        supernode_public_key_paths=tuple(root / f for f in key_files),
    )


# -------------------------------------------------------------- provisioning helpers


def _check_trainers(trainers: int) -> int:
    if isinstance(trainers, bool) or not isinstance(trainers, int):
        raise CryptoError("trainers must be an integer")
    if not 1 <= trainers <= _MAX_TRAINERS:
        raise CryptoError(f"trainers must be between 1 and {_MAX_TRAINERS}, got {trainers}")
    return trainers


def _check_federation(federation: str) -> str:
    if not isinstance(federation, str) or not _FEDERATION_NAME.match(federation):
        raise CryptoError(
            "federation name must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return federation


def _check_fingerprint(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise CryptoError("fingerprint must be 1-256 printable ASCII characters without spaces")
    return fingerprint


def _host_list(hosts: Sequence[str]) -> list[str]:
    if isinstance(hosts, str | bytes):
        raise CryptoError("hosts must be a sequence of names, not a single string")
    return list(hosts)


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise CryptoError(f"{target} exists and is not a directory (or is a symbolic link)")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise CryptoError(
            f"{target} is not empty; refusing to overwrite it (use overwrite=True / --force "
            "to replace an earlier fedguard key directory)"
        )
    if not _is_key_directory(target):
        raise CryptoError(
            f"{target} is not a fedguard key directory (no valid {_MANIFEST}); "
            "refusing to delete it even with overwrite"
        )


def _is_key_directory(path: Path) -> bool:
    try:
        with (path / _MANIFEST).open("rb") as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
        data = json.loads(raw) if len(raw) <= _MAX_MANIFEST_BYTES else None
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("format") == _BUNDLE_FORMAT
        and data.get("role") == "federation"
    )


def _move_into_place(staging: Path, target: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
        return
    if target.is_dir():
        target.rmdir()
    staging.rename(target)


def _secret_label(federation: str, trainer: str, fingerprint: str) -> bytes:
    # Binds the sealed CKKS secret to its manifest entries: editing the
    # fingerprint or moving the file to another trainer or federation fails.
    return b"fedguard/keys/ckks-secret/v1" + fields(
        (b"federation", federation.encode()),
        (b"trainer", trainer.encode()),
        (b"fingerprint", fingerprint.encode()),
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(
    role: str,
    name: str,
    common: Mapping[str, object],
    files: Mapping[str, str],
    secret_files: Iterable[str],
) -> bytes:
    doc = {
        "format": _BUNDLE_FORMAT,
        "version": _BUNDLE_VERSION,
        "role": role,
        "name": name,
        **common,
        "files": {path: {"sha256": digest} for path, digest in sorted(files.items())},
        # Names only: secrets get no hash in a file that travels in the clear.
        "secret_files": sorted(secret_files),
    }
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


def _write_bundle(
    directory: Path,
    role: str,
    name: str,
    common: Mapping[str, object],
    files: Mapping[str, bytes],
    private: Mapping[str, bytes],
) -> None:
    for rel, data in private.items():
        _write_file(directory / rel, data, private=True)
    for rel, data in files.items():
        _write_file(directory / rel, data, private=False)
    digests = {rel: _sha256(data) for rel, data in files.items()}
    _write_file(
        directory / _MANIFEST, _manifest(role, name, common, digests, private), private=False
    )


def _write_file(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    # Created with its final mode and O_EXCL: a private file is never readable
    # by others, not even for an instant, and nothing is followed or reused.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # umask may have cleared bits of a public file
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read_manifest(root: Path, role: str) -> dict[str, Any]:
    path = root / _MANIFEST
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
    except OSError:
        raise CryptoError(
            f"{root} has no readable {_MANIFEST}; is it a fedguard key directory?"
        ) from None
    try:
        doc = json.loads(raw) if len(raw) <= _MAX_MANIFEST_BYTES else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise CryptoError(f"bundle manifest {path} is malformed")
    if doc.get("format") != _BUNDLE_FORMAT:
        raise CryptoError(f"bundle manifest {path} is not a fedguard key manifest")
    if doc.get("version") != _BUNDLE_VERSION:
        raise CryptoError(f"bundle manifest {path} has unsupported version {doc.get('version')!r}")
    if doc.get("role") != role:
        raise CryptoError(f"{root} is not a {role} directory (manifest role {doc.get('role')!r})")
    trainers = doc.get("trainers")
    ok = (
        isinstance(doc.get("name"), str)
        and isinstance(doc.get("federation"), str)
        and _FEDERATION_NAME.match(doc["federation"]) is not None
        and isinstance(doc.get("ckks_fingerprint"), str)
        and _FINGERPRINT.match(doc["ckks_fingerprint"]) is not None
        and isinstance(trainers, int)
        and not isinstance(trainers, bool)
        and 1 <= trainers <= _MAX_TRAINERS
        and isinstance(doc.get("files"), dict)
        and isinstance(doc.get("secret_files"), list)
    )
    if ok:
        for rel, entry in doc["files"].items():
            ok = ok and _safe_rel(rel) and isinstance(entry, dict)
            ok = ok and isinstance(entry.get("sha256"), str)
        ok = ok and all(isinstance(rel, str) and _safe_rel(rel) for rel in doc["secret_files"])
    if not ok:
        raise CryptoError(f"bundle manifest {path} is malformed")
    return doc


def _safe_rel(rel: str) -> bool:
    return (
        isinstance(rel, str)
        and _MANIFEST_PATH.match(rel) is not None
        and ".." not in rel.split("/")
    )


def _verify_files(root: Path, manifest: Mapping[str, Any], *, required: Iterable[str]) -> None:
    files: Mapping[str, Mapping[str, str]] = manifest["files"]
    for rel in required:
        if rel not in files:
            raise CryptoError(f"bundle file {rel} is not listed in the manifest")
    for rel, entry in files.items():
        try:
            digest = _sha256_file(root / rel)
        except OSError:
            raise CryptoError(f"bundle file {rel} is missing or unreadable") from None
        if not secrets.compare_digest(digest, entry["sha256"]):
            raise CryptoError(f"bundle file {rel} does not match the manifest")


def _require_secret_files(root: Path, manifest: Mapping[str, Any], names: Iterable[str]) -> None:
    for rel in names:
        if rel not in manifest["secret_files"] or not (root / rel).is_file():
            raise CryptoError(f"bundle file {rel} is missing")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ssh_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _load_auth_public(data: bytes, name: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CryptoError(f"bundle file {name} is not a P-384 OpenSSH public key")
    return key


def _load_auth_private(data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CryptoError(f"bundle file {_AUTH_KEY} is not a P-384 OpenSSH private key")
    return key


def _check_server_tls(root: Path) -> None:
    try:
        cert = x509.load_pem_x509_certificate((root / _SERVER_CERT).read_bytes())
        ca = x509.load_pem_x509_certificate((root / _CA_CERT).read_bytes())
    except ValueError:
        raise CryptoError(
            f"bundle file {_SERVER_CERT} or {_CA_CERT} is not a PEM certificate"
        ) from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        issued = False
    else:
        issued = True
    if not issued:
        raise CryptoError(f"bundle file {_SERVER_CERT} is not signed by {_CA_CERT}")
    expiry = cert.not_valid_after_utc
    if expiry <= _dt.datetime.now(_dt.UTC):
        raise CryptoError(
            f"bundle file {_SERVER_CERT} expired on {expiry.date().isoformat()}; "
            "provision the federation again"
        )
    try:
        key = serialization.load_pem_private_key((root / _SERVER_KEY).read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if key is None:
        raise CryptoError(f"bundle file {_SERVER_KEY} is not an unencrypted PEM private key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise CryptoError(f"bundle file {_SERVER_KEY} does not match {_SERVER_CERT}")
