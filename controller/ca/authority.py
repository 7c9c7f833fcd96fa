"""The CA's key material and what it signs. Time is passed in, so every function is deterministic.

Two sources, as Istio's: a self-signed root generated on first start (ECDSA P-256, 10 years, stored
0600), or plugged-in material in Istio's `cacerts` layout (`ca-cert.pem` + `ca-key.pem`, with
`cert-chain.pem` and `root-cert.pem` when the signing cert is an intermediate of an external root).
The trust bundle may hold several roots (root rotation: old and new side by side).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.spiffe import SpiffeId
from common.keys import key_pem, new_key, pem

ROOT_VALIDITY = timedelta(days=3650)
# Backdating absorbs clock skew between nodes (Istio backdates workload certs too).
BACKDATE = timedelta(minutes=5)
DEFAULT_LEAF_TTL = timedelta(hours=24)  # Istio's default workload cert TTL
MAX_LEAF_TTL = timedelta(days=90)  # Istio's max_workload_cert_ttl
MIN_LEAF_TTL = timedelta(seconds=5)  # short TTLs are for tests of rotation

__all__ = [  # key helpers are re-exported: the CA is where callers look for them
    "CaMaterial",
    "CaMaterialError",
    "generate_root",
    "key_pem",
    "load_or_create",
    "load_plugged",
    "new_key",
    "pem",
    "publish_bundle",
    "sign_leaf",
]

ROOT_CERT = "root-cert.pem"
CA_CERT, CA_KEY, CERT_CHAIN = "ca-cert.pem", "ca-key.pem", "cert-chain.pem"


class CaMaterialError(ValueError):
    """Key material is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class CaMaterial:
    signing_cert: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # the signing cert, then its issuers (as cert-chain.pem)
    roots: tuple[x509.Certificate, ...]  # the trust bundle

    def chain_pem(self) -> list[str]:
        return [pem(c) for c in self.chain]

    def bundle_pem(self) -> list[str]:
        return [pem(c) for c in self.roots]


def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, non-zero, < 20 bytes (RFC 5280 §4.1.2.2)


def generate_root(
    trust_domain: str, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "ambientmesh root CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def sign_leaf(
    material: CaMaterial,
    public_key: ec.EllipticCurvePublicKey,
    identity: SpiffeId,
    ttl: timedelta,
    now: datetime,
) -> x509.Certificate:
    """An X509-SVID: empty subject, exactly one (critical) URI SAN, not a CA, client+server auth."""
    issuer_ski = x509.SubjectKeyIdentifier.from_public_key(material.signing_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(material.signing_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,  # RFC 5280 §4.2.1.6: critical when the subject is empty
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .sign(material.signing_key, hashes.SHA256())
    )


def sign_crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    serials: list[int],
    now: datetime,
    valid: timedelta,
) -> str:
    """A PEM CRL of `issuer` revoking `serials` until `now + valid` (its nextUpdate)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - BACKDATE)
        .next_update(now + valid)
    )
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    signed = builder.sign(key, hashes.SHA256())
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def load_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (concatenated roots are fine); an empty file is an error."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise CaMaterialError(f"{path}: no such file") from None
    except ValueError as exc:
        raise CaMaterialError(f"{path}: not PEM certificates: {exc}") from None
    return certs


def _load_key(path: Path, cert: x509.Certificate) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CaMaterialError(f"{path}: cannot load the private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaMaterialError(f"{path}: the CA key must be ECDSA")
    if key.public_key() != cert.public_key():
        raise CaMaterialError(f"{path}: key does not match its certificate")
    return key


def load_plugged(directory: Path) -> CaMaterial:
    """Istio's plug-in CA layout: signing cert + key; chain and root of an external CA if any."""
    signing = load_certs(directory / CA_CERT)[0]
    key = _load_key(directory / CA_KEY, signing)
    chain_path, root_path = directory / CERT_CHAIN, directory / ROOT_CERT
    chain = load_certs(chain_path) if chain_path.exists() else [signing]
    roots = load_certs(root_path) if root_path.exists() else [signing]
    if chain[0] != signing:
        raise CaMaterialError(f"{chain_path}: must start with {CA_CERT}")
    return CaMaterial(signing, key, tuple(chain), tuple(roots))


def load_or_create(state: Path, trust_domain: str, now: datetime) -> CaMaterial:
    """The local CA: created once under `state` (0600 key), reused on every later start."""
    cert_path, key_path = state / CA_CERT, state / CA_KEY
    if not cert_path.exists():
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = generate_root(trust_domain, now)
        tmp = key_path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(key_pem(key))
        tmp.replace(key_path)
        cert_path.write_text(pem(cert))
        (state / ROOT_CERT).write_text(pem(cert))
    return load_plugged(state)


def publish_bundle(directory: Path, material: CaMaterial) -> None:
    """Write the trust bundle where proxies read it at start (Istio: istio-ca-root-cert)."""
    text = "".join(material.bundle_pem())
    path = directory / ROOT_CERT
    if not path.exists() or path.read_text() != text:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
