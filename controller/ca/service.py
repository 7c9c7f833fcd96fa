"""The signing service: one request in, a certificate chain or a named refusal out.

Wire format (HTTP/1.1 + JSON over TLS on the controller's port 15012; see ARCHITECTURE.md):
  POST /v1/certificates   Authorization: Bearer <node or pod token>
  {"identity": "spiffe://td/ns/N/sa/S", "csr": "<PEM>", "ttlSeconds": 86400}
  200 {"certChain": ["<leaf PEM>", "<issuer PEM>", ...], "trustBundle": ["<root PEM>", ...]}
  4xx {"reason": "<Reason>", "message": "..."}
Every refusal increments `ambientmesh_ca_refusals_total{reason}` and is logged once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from api.objects import Obj
from controller.ca import authority, csr, nodeauth
from controller.ca.authority import CaMaterial
from controller.ca.refusal import Reason, Refusal

log = logging.getLogger("controller.ca")


class CaMetrics:
    """Istio's citadel_* names where they exist, plus refusals by reason."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.csr = Counter("citadel_server_csr", "CSRs received", registry=registry)
        self.issued = Counter(
            "citadel_server_success_cert_issuance", "Certificates issued", registry=registry
        )
        self.refused = Counter(
            "ambientmesh_ca_refusals", "Requests refused", ["reason"], registry=registry
        )
        for reason in Reason:
            self.refused.labels(reason=reason.value)
        self.root_expiry = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time at which the earliest root expires",
            registry=registry,
        )


class CaService:
    def __init__(
        self,
        material: CaMaterial,
        trust_domain: str,
        tokens: nodeauth.Authenticator,
        pods: Callable[[], Iterable[Obj]],
        metrics: CaMetrics,
        *,
        max_ttl: timedelta = authority.MAX_LEAF_TTL,
        clock: Callable[[], datetime],
    ) -> None:
        self.material = material
        self.trust_domain = trust_domain
        self.tokens = tokens
        self.pods = pods
        self.metrics = metrics
        self.max_ttl = max_ttl
        self.clock = clock
        metrics.root_expiry.set(min(r.not_valid_after_utc.timestamp() for r in material.roots))

    def sign(self, authorization: str | None, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        self.metrics.csr.inc()
        try:
            result = self._sign(authorization, body)
        except Refusal as refusal:
            self.metrics.refused.labels(reason=refusal.reason.value).inc()
            log.warning("refused certificate request: %s: %s", refusal.reason, refusal.message)
            return refusal.status, {"reason": refusal.reason.value, "message": refusal.message}
        self.metrics.issued.inc()
        return HTTPStatus.OK, result

    def _sign(self, authorization: str | None, body: bytes) -> dict[str, Any]:
        caller = self.tokens.authenticate(authorization)
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise Refusal(Reason.MALFORMED_REQUEST, f"body is not JSON: {exc}") from None
        if not isinstance(request, dict):
            raise Refusal(Reason.MALFORMED_REQUEST, "body must be a JSON object")
        identity = csr.parse_identity(request.get("identity"), self.trust_domain)
        public_key = csr.check_csr(request.get("csr"), identity)
        ttl = self._ttl(request.get("ttlSeconds"))
        nodeauth.authorize(self.pods(), caller, identity)
        leaf = authority.sign_leaf(self.material, public_key, identity, ttl, self.clock())
        log.info(
            "issued %s to %s (serial %x, ttl %s)",
            identity,
            f"node {caller.node}" if caller.node else f"pod {caller.pod_uid}",
            leaf.serial_number,
            ttl,
        )
        return {
            "certChain": [authority.pem(leaf), *self.material.chain_pem()],
            "trustBundle": self.material.bundle_pem(),
        }

    def _ttl(self, seconds: object) -> timedelta:
        if seconds is None:
            return min(authority.DEFAULT_LEAF_TTL, self.max_ttl)
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise Refusal(Reason.TTL, "ttlSeconds must be an integer")
        ttl = timedelta(seconds=seconds)
        if ttl < authority.MIN_LEAF_TTL:
            raise Refusal(Reason.TTL, f"ttlSeconds must be at least {authority.MIN_LEAF_TTL}")
        return min(ttl, self.max_ttl)  # capped, as Istio caps at max_workload_cert_ttl
