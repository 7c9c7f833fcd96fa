"""Client of the controller's CA (15012): sends a CSR for one identity, checks what comes back.

The controller is authenticated like any mesh peer: chain to the trust bundle during the TLS
handshake, then its SPIFFE ID must be the controller's. The returned leaf must carry exactly the
requested identity and our public key; anything else is an error and is never used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.spiffe import SpiffeId
from common import http1, tls
from ztunnel.identity import verify


class CaError(Exception):
    """No certificate this time; the message says why (retried with backoff)."""


@dataclass(frozen=True)
class Issued:
    chain_pem: list[str]
    bundle_pem: list[str]
    leaf: x509.Certificate


def build_csr(identity: SpiffeId, key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def controller_rejected(ssl_object: object, controller: SpiffeId) -> str | None:
    """Why the TLS peer is not the controller, or None when it is."""
    der = getattr(ssl_object, "getpeercert", lambda **_: None)(binary_form=True)
    if not der:
        return "no certificate presented"
    try:
        verify.verify_peer(
            der,
            trust_domain=controller.trust_domain,
            purpose=verify.Purpose.SERVER,
            now=datetime.now(UTC),
            expected={controller},
        )
    except verify.PeerRejected as exc:
        return str(exc)
    return None


class CaClient:
    def __init__(
        self,
        host: str,
        port: int,
        token: str | Callable[[], str],
        bundle_pem: Sequence[str],
        *,
        controller: SpiffeId,
        timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.token = token if callable(token) else lambda: token  # projected tokens rotate
        self.controller = controller
        self.timeout_s = timeout_s
        self.set_bundle(bundle_pem)

    def set_bundle(self, bundle_pem: Sequence[str]) -> None:
        self.bundle_pem = list(bundle_pem)
        self._tls = tls.client_context(self.bundle_pem)

    async def sign(self, identity: SpiffeId, key: ec.EllipticCurvePrivateKey, ttl_s: int) -> Issued:
        body = json.dumps(
            {"identity": str(identity), "csr": build_csr(identity, key), "ttlSeconds": ttl_s}
        ).encode()
        try:
            status, data, ssl_object = await http1.request(
                self.host,
                self.port,
                "POST",
                "/v1/certificates",
                body=body,
                tls=self._tls,
                headers={
                    "authorization": f"Bearer {self.token()}",
                    "content-type": "application/json",
                },
                timeout_s=self.timeout_s,
            )
        except http1.HttpError as exc:
            raise CaError(f"CA unreachable: {exc}") from None
        self._check_controller(ssl_object)
        try:
            reply = json.loads(data)
        except ValueError:
            raise CaError(f"CA answered {status} with a body that is not JSON") from None
        if status != 200:
            raise CaError(f"CA refused ({status} {reply.get('reason')}): {reply.get('message')}")
        return self._check_issued(reply, identity, key)

    def _check_controller(self, ssl_object: object) -> None:
        if reason := controller_rejected(ssl_object, self.controller):
            raise CaError(f"CA is not the controller: {reason}")

    @staticmethod
    def _check_issued(
        reply: dict[str, object], identity: SpiffeId, key: ec.EllipticCurvePrivateKey
    ) -> Issued:
        chain, bundle = reply.get("certChain"), reply.get("trustBundle")
        if not (isinstance(chain, list) and chain and isinstance(bundle, list) and bundle):
            raise CaError("CA reply lacks certChain or trustBundle")
        try:
            leaf = x509.load_pem_x509_certificate(str(chain[0]).encode())
        except ValueError as exc:
            raise CaError(f"CA returned a malformed certificate: {exc}") from None
        if leaf.public_key() != key.public_key():
            raise CaError("CA returned a certificate for another key")
        if verify.spiffe_id_of(leaf) != identity:
            raise CaError(f"CA returned a certificate for another identity than {identity}")
        return Issued([str(c) for c in chain], [str(b) for b in bundle], leaf)
