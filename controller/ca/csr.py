"""CSR checks (pure): the request must ask for exactly the identity it names, with a P-256 key.

Rules: valid PEM PKCS#10, self-signature valid, ECDSA P-256 public key, a SAN extension with exactly
one URI equal to the requested SPIFFE ID and no other names of any type.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from api.spiffe import SpiffeId, SpiffeIdError
from controller.ca.refusal import Reason, Refusal

MAX_CSR_BYTES = 8192  # a P-256 CSR is ~500 bytes; bounds parser work on hostile input


def parse_identity(requested: object, trust_domain: str) -> SpiffeId:
    if not isinstance(requested, str):
        raise Refusal(Reason.MALFORMED_REQUEST, "identity must be a string")
    try:
        identity = SpiffeId.parse(requested)
    except SpiffeIdError as exc:
        raise Refusal(Reason.INVALID_IDENTITY, str(exc)) from None
    if identity.trust_domain != trust_domain:
        raise Refusal(
            Reason.WRONG_TRUST_DOMAIN,
            f"{identity} is not in this CA's trust domain {trust_domain!r}",
        )
    return identity


def check_csr(csr_pem: object, identity: SpiffeId) -> ec.EllipticCurvePublicKey:
    """Return the CSR's public key if the CSR asks for exactly `identity`; else raise Refusal."""
    if not isinstance(csr_pem, str) or len(csr_pem) > MAX_CSR_BYTES:
        raise Refusal(Reason.CSR_MALFORMED, f"csr must be a PEM string under {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:  # as cryptography says
        raise Refusal(Reason.CSR_MALFORMED, f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise Refusal(Reason.CSR_BAD_SIGNATURE, "the CSR's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise Refusal(Reason.CSR_KEY_TYPE, "the key must be ECDSA P-256")
    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    except ValueError as exc:
        raise Refusal(Reason.CSR_MALFORMED, f"unreadable extensions: {exc}") from None
    uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    if len(names) != 1 or uris != [str(identity)]:
        shown = ", ".join(str(n.value) for n in names) or "none"
        raise Refusal(Reason.CSR_SAN, f"SANs must be exactly the URI {identity}; got {shown}")
    return key
