"""A test-only PKI: roots and leaves with exactly the flaw a test needs. Keys never leave memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.ca import authority

NOW = datetime(2026, 6, 1, tzinfo=UTC)
BOTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def root(
    now: datetime = NOW, name: str = "test root"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert, key = authority.generate_root("test", now)
    if name != "test root":  # a different subject, for multi-root tests
        cert = _sign(
            key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            ca=True,
            ku_sign=True,
            sans=None,
            eku=None,
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=365),
        )
    return cert, key


def leaf(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    uris: tuple[str, ...] = ("spiffe://cluster.local/ns/demo/sa/client",),
    dns: tuple[str, ...] = (),
    ca: bool = False,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    eku: tuple[x509.ObjectIdentifier, ...] | None = BOTH,
    not_before: datetime = NOW - timedelta(minutes=1),
    not_after: datetime = NOW + timedelta(hours=1),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or authority.new_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    cert = _sign(
        key,
        x509.Name([]),
        issuer_key,
        issuer.subject,
        ca=ca,
        ku_sign=key_cert_sign,
        sans=sans or None,
        eku=eku,
        not_before=not_before,
        not_after=not_after,
        digital_signature=digital_signature,
    )
    return cert, key


def live_leaf(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, uri: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf valid for the next hour by the real clock: OpenSSL checks validity against it,
    not against NOW, in real handshakes."""
    now = datetime.now(UTC)
    return leaf(
        issuer,
        issuer_key,
        uris=(uri,),
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    )


def _sign(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    *,
    ca: bool,
    ku_sign: bool,
    sans: list[x509.GeneralName] | None,
    eku: tuple[x509.ObjectIdentifier, ...] | None,
    not_before: datetime,
    not_after: datetime,
    digital_signature: bool = True,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature, False, False, False, False, ku_sign, ku_sign, False, False
            ),
            critical=True,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def intermediate(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    name: str,
    now: datetime = NOW,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate signed by `issuer` (plugged-in intermediate tests)."""
    key = authority.new_key()
    cert = _sign(
        key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        issuer_key,
        issuer.subject,
        ca=True,
        ku_sign=True,
        sans=None,
        eku=None,
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=30),
    )
    return cert, key


def crl(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    serials: list[int],
    now: datetime = NOW,
    next_update: timedelta = timedelta(days=7),
) -> str:
    """A PEM CRL of `issuer` revoking `serials` (Istio's `ca-crl.pem`)."""
    return authority.sign_crl(issuer, issuer_key, serials, now, next_update)
