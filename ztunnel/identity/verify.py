"""Peer certificate checks for every TLS endpoint, run right after the handshake verified the chain.

Python's `ssl` verifies the chain to the trust bundle during the handshake but does not look at URI
SANs, so before a single byte is forwarded the caller runs `verify_peer` on the peer's leaf (DER).
Each check is one small function returning a named reason; `verify_peer` composes them in order,
like ztunnel's verifiers (trust domain, identity, expiry). Reasons are counted by callers.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from api.spiffe import SpiffeId, SpiffeIdError
from ztunnel.identity import revocation

# Clock skew tolerated on notBefore (ztunnel/rustls: none; Istio backdates leaves instead). Our CA
# backdates by the same amount, so a peer whose clock runs behind still accepts fresh certs.
CLOCK_SKEW = timedelta(minutes=5)


class Reason(enum.StrEnum):
    """Why a peer was rejected: a metric label and a log field."""

    MALFORMED = "malformed_certificate"
    ALPN = "alpn_not_h2"
    NO_CERTIFICATE = "no_certificate"
    NO_URI_SAN = "no_uri_san"
    MULTIPLE_URI_SANS = "multiple_uri_sans"
    INVALID_SPIFFE_ID = "invalid_spiffe_id"
    TRUST_DOMAIN = "trust_domain_mismatch"
    IDENTITY = "identity_mismatch"
    CA_AS_LEAF = "ca_certificate_as_leaf"
    KEY_USAGE = "key_usage"
    EXTENDED_KEY_USAGE = "extended_key_usage"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation_unknown"


class Purpose(enum.Enum):
    """What the peer is to us: the client of our server (inbound) or the server we dialed."""

    CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
    SERVER = ExtendedKeyUsageOID.SERVER_AUTH


class PeerRejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now >= cert.not_valid_after_utc:
        raise PeerRejected(Reason.EXPIRED, f"expired at {cert.not_valid_after_utc.isoformat()}")
    if now + CLOCK_SKEW < cert.not_valid_before_utc:
        raise PeerRejected(
            Reason.NOT_YET_VALID, f"valid from {cert.not_valid_before_utc.isoformat()}"
        )


def check_leaf_constraints(cert: x509.Certificate, purpose: Purpose) -> None:
    """SPIFFE X509-SVID §4: not a CA, digitalSignature, no cert/CRL signing; EKU fits purpose."""
    constraints = _ext(cert, x509.BasicConstraints)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise PeerRejected(Reason.CA_AS_LEAF, "leaf has basicConstraints cA=true")
    usage = _ext(cert, x509.KeyUsage)
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        raise PeerRejected(Reason.KEY_USAGE, "leaf lacks keyUsage digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise PeerRejected(Reason.CA_AS_LEAF, "leaf may sign certificates or CRLs")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and purpose.value not in eku:
        raise PeerRejected(Reason.EXTENDED_KEY_USAGE, f"EKU lacks {purpose.name.lower()}Auth")


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The one SPIFFE ID of a leaf (X509-SVID §2: exactly one URI SAN; never the subject CN)."""
    san = _ext(cert, x509.SubjectAlternativeName)
    uris = (
        san.get_values_for_type(x509.UniformResourceIdentifier)
        if isinstance(san, x509.SubjectAlternativeName)
        else []
    )
    if not uris:
        raise PeerRejected(Reason.NO_URI_SAN, "no URI SAN (DNS SANs and the subject do not count)")
    if len(uris) > 1:
        raise PeerRejected(Reason.MULTIPLE_URI_SANS, f"{len(uris)} URI SANs (SPIFFE: exactly one)")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise PeerRejected(Reason.INVALID_SPIFFE_ID, str(exc)) from None


def check_trust_domain(identity: SpiffeId, trust_domain: str) -> None:
    if identity.trust_domain != trust_domain:
        raise PeerRejected(
            Reason.TRUST_DOMAIN, f"{identity} is not in trust domain {trust_domain!r}"
        )


def check_identity(identity: SpiffeId, expected: Collection[SpiffeId] | None) -> None:
    if expected is not None and identity not in expected:
        want = ", ".join(sorted(str(e) for e in expected)) or "nothing"
        raise PeerRejected(Reason.IDENTITY, f"{identity} is not the expected {want}")


def verify_peer(
    der: bytes,
    *,
    trust_domain: str,
    purpose: Purpose,
    now: datetime,
    expected: Collection[SpiffeId] | None = None,
) -> SpiffeId:
    """All checks in order; returns the peer's identity or raises PeerRejected."""
    return verify_certificate(
        _load(der), trust_domain=trust_domain, purpose=purpose, now=now, expected=expected
    )


def _load(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise PeerRejected(Reason.MALFORMED, str(exc)) from None


def verify_certificate(
    cert: x509.Certificate,
    *,
    trust_domain: str,
    purpose: Purpose,
    now: datetime,
    expected: Collection[SpiffeId] | None = None,
) -> SpiffeId:
    check_validity(cert, now)
    check_leaf_constraints(cert, purpose)
    identity = spiffe_id_of(cert)
    check_trust_domain(identity, trust_domain)
    check_identity(identity, expected)
    return identity


def verify_transport(
    transport: Any, trust_domain: str, purpose: Purpose, expected: SpiffeId | None
) -> SpiffeId:
    """The checks on a TLS transport just after its handshake: ALPN must be h2 (I-8), the peer
    must have shown a certificate, `verify_certificate`, and the CRL (I-9), which keeps the
    connection in view to close it if a later CRL revokes its peer."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
        raise PeerRejected(Reason.ALPN, "ALPN must be h2")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerRejected(Reason.NO_CERTIFICATE, "no peer certificate")
    cert, now = _load(der), datetime.now(UTC)
    identity = verify_certificate(
        cert,
        trust_domain=trust_domain,
        purpose=purpose,
        now=now,
        expected={expected} if expected else None,
    )
    if refusal := revocation.current.check(cert, now).refusal:
        raise PeerRejected(Reason(refusal), f"serial {cert.serial_number:x} of {identity}")
    revocation.current.watch(transport, cert)  # a CRL may come later
    return identity


def peer_not_after(ssl_object: Any) -> datetime:
    """When the certificate the peer showed (or, resumed, had shown) expires."""
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def close_at_peer_expiry(transport: Any) -> None:
    """RELIABILITY F-7: TLS never re-validates an established session, so a connection ends when
    its peer's certificate does (the fail-closed choice; the peer reconnects with its fresh one)."""
    not_after = peer_not_after(transport.get_extra_info("ssl_object"))
    delay = (not_after - datetime.now(UTC)).total_seconds()
    asyncio.get_running_loop().call_later(max(delay, 0.0), transport.abort)
