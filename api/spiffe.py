"""SPIFFE IDs, parsed strictly (SPIFFE-ID spec §2) into Istio's workload form.

A workload identity is exactly `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, the
form Istio issues and ztunnel's `Identity::from_str` accepts (exactly those four path segments).
Everything else is rejected with a reason: other schemes, percent-encoding, `.`/`..` segments,
empty segments, query, fragment, port or userinfo in the authority, over-long IDs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
# SPIFFE-ID §2.3: "SPIFFE implementations MUST support SPIFFE URIs up to 2048 bytes in length".
MAX_ID_BYTES = 2048
# SPIFFE-ID §2.1: trust domain chars are lowercase letters, digits, '.', '-', '_'.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
# SPIFFE-ID §2.2: path segment chars are letters, digits, '.', '-', '_'.
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_TRUST_DOMAIN = 255


class SpiffeIdError(ValueError):
    """Not a valid workload SPIFFE ID; the message says why."""


def check_trust_domain(trust_domain: str) -> str | None:
    if not trust_domain:
        return "trust domain is empty"
    if len(trust_domain) > MAX_TRUST_DOMAIN:
        return "trust domain is longer than 255 characters"
    if not _TRUST_DOMAIN.match(trust_domain):
        return (
            f"trust domain {trust_domain!r} may hold only lowercase letters, digits, '.', '-', '_' "
            "(no port, no userinfo)"
        )
    return None


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """Istio's principal form, as written in AuthorizationPolicy: `td/ns/x/sa/y`."""
        return str(self)[len(SCHEME) :]

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        if len(value.encode()) > MAX_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
        if not value.startswith(SCHEME):
            raise SpiffeIdError(f"{value[:80]!r} does not start with {SCHEME!r}")
        authority, slash, path = value[len(SCHEME) :].partition("/")
        if reason := check_trust_domain(authority):
            raise SpiffeIdError(reason)
        segments = path.split("/") if slash else []
        for segment in segments:
            if not _SEGMENT.match(segment) or segment in (".", ".."):
                raise SpiffeIdError(
                    f"path segment {segment!r} of {value[:120]!r} is empty, '.', '..' or holds "
                    "characters other than letters, digits, '.', '-', '_'"
                )
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise SpiffeIdError(f"{value[:120]!r} is not of the form {SCHEME}<td>/ns/<ns>/sa/<sa>")
        return cls(authority, segments[1], segments[3])


# The controller's own identity: proxies accept the CA only when it presents this SVID.
CONTROLLER_NAMESPACE = "ambientmesh-system"
CONTROLLER_SERVICE_ACCOUNT = "ambientmesh-controller"


def controller_identity(trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
