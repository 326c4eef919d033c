"""Properties of crypto.tls: CA, SuperLink certificate, SuperNode auth keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from crypto import at_rest, keys
from crypto.tls import (
    certificate_fingerprint,
    make_ca,
    make_server_cert,
    make_supernode_auth_keypair,
    normalise_hosts,
)
from federation.errors import CryptoError

HOSTS = ["127.0.0.1", "localhost", "SuperLink.Example.org.", "::1", "10.0.0.5"]


@pytest.fixture(scope="module")
def chain() -> tuple[bytes, bytes, bytes, bytes]:
    ca_pem, ca_key = make_ca("fedguard test CA")
    cert_pem, key_pem = make_server_cert(ca_pem, ca_key, HOSTS)
    return ca_pem, ca_key, cert_pem, key_pem


def _verifier(ca_pem: bytes, name: x509.verification.Subject) -> x509.verification.ServerVerifier:
    store = Store([x509.load_pem_x509_certificate(ca_pem)])
    return PolicyBuilder().store(store).build_server_verifier(name)


def test_ca_is_a_self_signed_authority(chain: tuple[bytes, bytes, bytes, bytes]) -> None:
    ca = x509.load_pem_x509_certificate(chain[0])
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    key = serialization.load_pem_private_key(chain[1], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == ca.public_key()


@pytest.mark.parametrize(
    "name",
    [
        DNSName("localhost"),
        DNSName("superlink.example.org"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
        IPAddress(ipaddress.ip_address("::1")),
        IPAddress(ipaddress.ip_address("10.0.0.5")),
    ],
)
def test_server_cert_verifies_against_the_ca(
    chain: tuple[bytes, bytes, bytes, bytes], name: x509.verification.Subject
) -> None:
    leaf = x509.load_pem_x509_certificate(chain[2])
    path = _verifier(chain[0], name).verify(leaf, [])
    assert path[-1] == x509.load_pem_x509_certificate(chain[0])


def test_server_cert_contents(chain: tuple[bytes, bytes, bytes, bytes]) -> None:
    leaf = x509.load_pem_x509_certificate(chain[2])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "10.0.0.5",
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)
    assert leaf.not_valid_before_utc <= dt.datetime.now(dt.UTC)
    key = serialization.load_pem_private_key(chain[3], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == leaf.public_key()


def test_other_names_and_other_cas_do_not_verify(
    chain: tuple[bytes, bytes, bytes, bytes],
) -> None:
    leaf = x509.load_pem_x509_certificate(chain[2])
    with pytest.raises(VerificationError):
        _verifier(chain[0], DNSName("evil.example.org")).verify(leaf, [])
    other_ca, _ = make_ca("another CA")
    with pytest.raises(VerificationError):
        _verifier(other_ca, DNSName("localhost")).verify(leaf, [])


def test_ca_inputs_are_checked(chain: tuple[bytes, bytes, bytes, bytes]) -> None:
    ca_pem, ca_key, cert_pem, key_pem = chain
    _, other_key = make_ca("another CA")
    with pytest.raises(CryptoError, match="do not match"):
        make_server_cert(ca_pem, other_key, ["localhost"])
    with pytest.raises(CryptoError, match="not a certificate authority"):
        make_server_cert(cert_pem, key_pem, ["localhost"])
    with pytest.raises(CryptoError, match="not a PEM certificate"):
        make_server_cert(b"junk", ca_key, ["localhost"])
    with pytest.raises(CryptoError, match="not an unencrypted PEM private key") as info:
        make_server_cert(ca_pem, ca_key[:60] + ca_key[61:], ["localhost"])
    assert info.value.__cause__ is None
    assert ca_key.decode()[30:90] not in str(info.value)
    with pytest.raises(CryptoError, match="common name"):
        make_ca("")


@pytest.mark.parametrize(
    "hosts",
    [[], ["*.example.org"], ["bad host"], ["-lead.example"], ["a" * 64 + ".org"], "localhost"],
)
def test_bad_hosts_are_refused(chain: tuple[bytes, bytes, bytes, bytes], hosts: object) -> None:
    with pytest.raises(CryptoError):
        make_server_cert(chain[0], chain[1], hosts)  # type: ignore[arg-type]


def test_hosts_are_normalised() -> None:
    assert normalise_hosts(["LOCALHOST", "localhost.", " 127.0.0.1 ", "::0:1", "::1"]) == (
        "localhost",
        "127.0.0.1",
        "::1",
    )


def test_fingerprint(chain: tuple[bytes, bytes, bytes, bytes]) -> None:
    fp = certificate_fingerprint(chain[0])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert fp != certificate_fingerprint(chain[2])
    with pytest.raises(CryptoError):
        certificate_fingerprint(b"not a cert")


def test_supernode_auth_keypair_is_p384_openssh() -> None:
    private_bytes, public_bytes = make_supernode_auth_keypair()
    assert private_bytes.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public_bytes.startswith(b"ecdsa-sha2-nistp384 ") and b"\n" not in public_bytes
    private = serialization.load_ssh_private_key(private_bytes, password=None)
    public = serialization.load_ssh_public_key(public_bytes)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private.public_key() == public
    assert make_supernode_auth_keypair()[1] != public_bytes


# ------------------------------------------------------------- a real Flower SuperLink


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _handshake(port: int, cafile: Path, server_hostname: str) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
            cert = conn.getpeercert()
            assert cert is not None
            return dict(cert)


SUPERLINK = Path(sys.executable).parent / "flower-superlink"


def test_flower_superlink_serves_the_provisioned_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(at_rest, "_SCRYPT_LOG2_N", 14)
    result = keys.provision_federation(
        tmp_path / "fed",
        1,
        "a long enough passphrase",
        ckks_secret=b"secret",
        ckks_public=b"public",
        fingerprint="test",
    )
    server = keys.load_server_bundle(result.server_dir)
    port = _free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{SUPERLINK.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = tmp_path / "superlink.log"
    # `--isolation process` keeps the SuperLink from starting a SuperExec child,
    # so the one process started here is the only one to stop.
    command = [
        str(SUPERLINK),
        "--ssl-ca-certfile", str(server.ca_cert_path),
        "--ssl-certfile", str(server.server_cert_path),
        "--ssl-keyfile", str(server.server_key_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--isolation", "process",
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                cert = _handshake(port, server.ca_cert_path, "localhost")
                break
            except (ConnectionRefusedError, TimeoutError, ssl.SSLEOFError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("SuperLink did not serve TLS:\n" + log_path.read_text()[-3000:])
                time.sleep(0.2)
        assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]  # type: ignore[operator]
        _handshake(port, server.ca_cert_path, "127.0.0.1")
        stranger = tmp_path / "other-ca.pem"
        stranger.write_bytes(make_ca("stranger")[0])
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, stranger, "localhost")
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, server.ca_cert_path, "evil.example.org")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    shutil.rmtree(home, ignore_errors=True)
