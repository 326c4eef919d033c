"""TLS certificates and SuperNode authentication keys for a Flower deployment.

Recipes, not knobs: every function below picks the algorithms, lifetimes and
extensions itself.

* The federation's certificate authority (:func:`make_ca`) signs one SuperLink
  server certificate (:func:`make_server_cert`). SuperNodes, the ``flwr`` CLI
  and the SuperLink's own SuperExec trust the CA certificate
  (``--root-certificates`` / ``--ssl-ca-certfile``).
* Keys are ECDSA on NIST P-256 with SHA-256 signatures: accepted by Python's
  ``ssl`` module (the SuperLink serves HTTPS through uvicorn), by gRPC and by
  OpenSSL-based clients, and much faster to make than RSA.
* SuperNode authentication keys (:func:`make_supernode_auth_keypair`) are ECDSA
  on P-384 in OpenSSH format, which is what Flower 1.42's
  ``--auth-supernode-private-key`` and ``flwr supernode register`` read.

Who holds what: the CA private key is needed only to sign; fedguard's
provisioning (:func:`crypto.provisioning.provision_federation`) discards it after
signing the server certificate. The server private key stays on the SuperLink
host; each SuperNode private key stays on its trainer's host. Private keys are
returned as unencrypted PEM / OpenSSH bytes: write them with mode ``0600``.

Errors: a bad host name, a CA certificate that does not match its key or is
not a CA raise :class:`~federation.errors.CryptoError`; messages never contain
key material.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.errors import CryptoError

__all__ = [
    "CA_VALIDITY_DAYS",
    "SERVER_CERT_VALIDITY_DAYS",
    "certificate_fingerprint",
    "make_ca",
    "make_server_cert",
    "make_supernode_auth_keypair",
    "normalise_hosts",
]

CA_VALIDITY_DAYS = 5 * 365
"""Lifetime of a federation CA certificate, in days."""

SERVER_CERT_VALIDITY_DAYS = 365
"""Lifetime of a SuperLink server certificate, in days."""

# Certificates start a few minutes in the past so that a peer whose clock runs
# slightly behind does not reject a certificate made a second ago.
_BACKDATE = _dt.timedelta(minutes=5)

_TLS_CURVE = ec.SECP256R1
_AUTH_CURVE = ec.SECP384R1  # Flower 1.42 SuperNode authentication
_ORGANISATION = "fedguard"
_MAX_COMMON_NAME = 64  # X.520 upper bound for commonName
_MAX_HOSTS = 64
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def make_ca(common_name: str) -> tuple[bytes, bytes]:
    """Create a self-signed certificate authority for one federation.

    Parameters
    ----------
    common_name:
        Subject common name, 1-64 printable characters (for example
        ``"fedguard demo CA"``).

    Returns
    -------
    tuple[bytes, bytes]
        ``(cert_pem, key_pem)``: the CA certificate (public, give it to every
        SuperNode and CLI user) and the CA private key as unencrypted PKCS#8
        PEM (secret: whoever holds it can impersonate the SuperLink).

    Raises
    ------
    CryptoError
        If ``common_name`` is empty, too long or not printable.

    Notes
    -----
    ECDSA P-256 / SHA-256, valid for :data:`CA_VALIDITY_DAYS` days, path
    length 0 (it can sign server certificates, not other CAs).
    """
    name = _check_common_name(common_name)
    key = ec.generate_private_key(_TLS_CURVE())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def make_server_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, hosts: Sequence[str]
) -> tuple[bytes, bytes]:
    """Issue a SuperLink TLS server certificate signed by the federation CA.

    Parameters
    ----------
    ca_cert_pem:
        The CA certificate from :func:`make_ca` (PEM).
    ca_key_pem:
        The matching CA private key (unencrypted PEM).
    hosts:
        Names clients use to reach the SuperLink: IPv4/IPv6 addresses become
        IP subject alternative names, everything else DNS names (lower-cased,
        no wildcards). Order is kept, duplicates dropped; 1-64 entries. The
        SuperLink's own SuperExec connects over loopback, so include
        ``127.0.0.1`` (provisioning always does).

    Returns
    -------
    tuple[bytes, bytes]
        ``(cert_pem, key_pem)``: the server certificate (public) and its
        private key as unencrypted PKCS#8 PEM (secret, keep on the SuperLink
        host with mode ``0600``).

    Raises
    ------
    CryptoError
        If a host name is invalid, the CA certificate or key cannot be parsed,
        they do not match, or the certificate is not a CA.

    Notes
    -----
    ECDSA P-256 / SHA-256, extended key usage ``serverAuth`` only, valid for
    :data:`SERVER_CERT_VALIDITY_DAYS` days (and never past the CA's expiry).
    """
    names = normalise_hosts(hosts)
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    key = ec.generate_private_key(_TLS_CURVE())
    now = _now()
    not_after = min(
        now + _dt.timedelta(days=SERVER_CERT_VALIDITY_DAYS), ca_cert.not_valid_after_utc
    )
    first_dns = next((h for h in names if not _is_ip(h)), "fedguard-superlink")
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in names
    ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, first_dns[:_MAX_COMMON_NAME]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def make_supernode_auth_keypair() -> tuple[bytes, bytes]:
    """Create one SuperNode authentication key pair (ECDSA P-384, OpenSSH format).

    Returns
    -------
    tuple[bytes, bytes]
        ``(private_openssh, public_openssh)``: the private key as an
        unencrypted ``-----BEGIN OPENSSH PRIVATE KEY-----`` block (secret, for
        ``flower-supernode --auth-supernode-private-key``, mode ``0600``) and
        the public key as one ``ecdsa-sha2-nistp384 AAAA...`` line without a
        trailing newline (for ``flwr supernode register``).
    """
    key = ec.generate_private_key(_AUTH_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 fingerprint of a PEM certificate, for comparison out of band.

    Parameters
    ----------
    cert_pem:
        One PEM certificate.

    Returns
    -------
    str
        ``"sha256:"`` followed by 64 lower-case hex digits of the DER encoding.

    Raises
    ------
    CryptoError
        If ``cert_pem`` is not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CryptoError("not a PEM certificate") from None
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def normalise_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise host names for a server certificate.

    Parameters
    ----------
    hosts:
        IP addresses or DNS names. A bare ``str`` is refused (it would be read
        character by character).

    Returns
    -------
    tuple[str, ...]
        Compressed IP addresses and lower-case DNS names, first occurrence
        order, without duplicates.

    Raises
    ------
    CryptoError
        If a name is neither an IP address nor a valid DNS name (wildcards are
        not allowed), or there are none or more than 64.
    """
    if isinstance(hosts, str | bytes):
        raise CryptoError("hosts must be a sequence of names, not a single string")
    seen: dict[str, None] = {}
    for raw in hosts:
        if not isinstance(raw, str):
            raise CryptoError(f"host must be a string, got {type(raw).__name__}")
        host = raw.strip()
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            host = host.lower().rstrip(".")
            if not _valid_dns_name(host):
                raise CryptoError(
                    f"invalid host {raw!r}: expected an IP address or a DNS name "
                    "(letters, digits, hyphens and dots; no wildcards)"
                ) from None
        seen.setdefault(host, None)
    if not seen:
        raise CryptoError("at least one host name is needed for a server certificate")
    if len(seen) > _MAX_HOSTS:
        raise CryptoError(f"too many hosts: {len(seen)} > {_MAX_HOSTS}")
    return tuple(seen)


# ----------------------------------------------------------------------------- helpers


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_common_name(common_name: str) -> str:
    if not isinstance(common_name, str):
        raise CryptoError("common name must be a string")
    name = common_name.strip()
    if not 1 <= len(name) <= _MAX_COMMON_NAME or not name.isprintable():
        raise CryptoError(
            f"common name must be 1-{_MAX_COMMON_NAME} printable characters, got {len(name)}"
        )
    return name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _valid_dns_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_DNS_LABEL.match(label) for label in host.split("."))


def _load_ca(
    ca_cert_pem: bytes, ca_key_pem: bytes
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        raise CryptoError("CA certificate is not a PEM certificate") from None
    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Never chain the original error: its text could quote key bytes.
        raise CryptoError("CA key is not an unencrypted PEM private key") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CryptoError("CA key must be an EC or RSA key")
    if ca_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CryptoError("CA certificate and CA key do not match")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CryptoError("CA certificate lacks basicConstraints or subjectKeyIdentifier") from None
    if not constraints.ca:
        raise CryptoError("CA certificate is not a certificate authority")
    return ca_cert, ca_key
