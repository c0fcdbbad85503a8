"""A federation's own certificate authority: a CA and the server certificates it signs.

``fedhub federation init`` makes one CA per federation (or uses one given to it) and signs
a certificate for every hub server (client, leafnode, route and gateway listeners) and for
every site's leaf server (its client port). Keys are ECDSA P-256, written ``0600``. An
existing key or certificate is kept, so regenerating configs never rotates them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.errors import ConfigError

__all__ = ["CertFiles", "ensure_ca", "ensure_server_cert", "write_secret"]

_CA_DAYS = 3650
_CERT_DAYS = 825


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Paths of a certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (``0600``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key")
    return key


def _name(common_name: str, federation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedhub {federation}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ensure_ca(folder: Path, federation: str) -> tuple[Path, Path]:
    """Return ``(ca.pem, ca-key.pem)`` in ``folder``, creating the CA on first use."""
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"{folder} holds half a CA (ca.pem or ca-key.pem is missing)")
    key = _new_key()
    name = _name(f"fedhub {federation} CA", federation)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
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
        .sign(key, hashes.SHA256())
    )
    write_secret(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def ensure_server_cert(
    folder: Path, name: str, hosts: Sequence[str], ca: tuple[Path, Path], federation: str
) -> CertFiles:
    """Return the certificate of server ``name`` in ``folder`` (signed by ``ca``).

    It names every address in ``hosts`` (DNS names or IP addresses) and serves both as a
    server and as a client certificate (routes and gateways dial each other). An existing
    certificate is kept; ``ca.pem`` is copied next to it.
    """
    cert_path, key_path, ca_copy = (
        folder / "server.pem",
        folder / "server-key.pem",
        folder / "ca.pem",
    )
    ca_cert_path, ca_key_path = ca
    ca_copy.parent.mkdir(parents=True, exist_ok=True)
    ca_copy.write_bytes(ca_cert_path.read_bytes())
    if cert_path.exists() and key_path.exists():
        return CertFiles(cert_path, key_path, ca_copy)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = _load_key(ca_key_path)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, federation))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_secret(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertFiles(cert_path, key_path, ca_copy)
