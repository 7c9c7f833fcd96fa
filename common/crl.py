"""A CA's certificate revocation list (RELIABILITY I-9), parsed and trusted only if one of the
given CA certificates is its issuer and signed it. The controller checks the CRL it publishes
with this; every proxy checks what it receives with it again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MAX_CRL_BYTES = 1024 * 1024  # ~30 000 revoked serials


class CrlError(ValueError):
    """A CRL that cannot be used; the message says why."""


@dataclass(frozen=True)
class Crl:
    issuer: x509.Name
    revoked: frozenset[int]  # serial numbers
    next_update: datetime | None


def parse(pem: str, issuers: Iterable[x509.Certificate]) -> Crl:
    """The CRL if one of `issuers` signed it (issuer name and signature); else CrlError."""
    if len(pem) > MAX_CRL_BYTES:
        raise CrlError(f"CRL of {len(pem)} bytes (limit {MAX_CRL_BYTES})")
    try:
        crl = x509.load_pem_x509_crl(pem.encode())
    except ValueError as exc:
        raise CrlError(f"not a PEM CRL: {exc}") from None
    for issuer in issuers:
        key = issuer.public_key()
        if (
            issuer.subject == crl.issuer
            and isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
            and crl.is_signature_valid(key)
        ):
            revoked = frozenset(entry.serial_number for entry in crl)
            return Crl(crl.issuer, revoked, crl.next_update_utc)
    raise CrlError(f"CRL of {crl.issuer.rfc4514_string()} is signed by no trusted CA")
