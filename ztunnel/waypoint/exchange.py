"""What HTTP/1.1 and HTTP/2 share in the waypoint: one downstream connection's facts (`Flow`),
what the proxy provides to the protocol code (`Hooks`), and the pure request rules — which
requests are refused before policy (400), and what policy sees.

Refused with 400 before policy (RELIABILITY W-1, W-2, W-4): a header name with `_` (Envoy's
`headers_with_underscores_action: REJECT_REQUEST`: `x_user` and `x-user` are the same header to
some backends and different ones to policy), both Content-Length and Transfer-Encoding (request
smuggling: h11 would let Transfer-Encoding win, a backend might not), more than one Host, a
method that is not upper case (Istio), and a request target that does not normalize
(`paths.normalize`, with the mode the connection started under: MeshConfig
`pathNormalization`). Policy judges the normalized path; the upstream receives that one.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ztunnel.state.policy import Decision
from ztunnel.waypoint import paths
from ztunnel.waypoint.authz import Request
from ztunnel.waypoint.pipe import Pipe

DENIED_STATUS = 403
DENIED_BODY = b"RBAC: access denied"  # Envoy's RBAC filter body, which Istio users grep for
# Connection-specific headers (RFC 9110 §7.6.1): never forwarded; each hop frames its own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "trailer",
    }
)


@dataclass
class Flow:
    """One downstream connection through the waypoint: who sent it, where it was going."""

    src_ip: str
    src_principal: str | None
    dst_ip: str  # the original destination (a Service VIP or a pod IP)
    dst_port: int
    normalization: paths.Normalization = paths.DEFAULT
    trusted_proxies: int = 0  # X-Forwarded-For hops trusted for the client address
    requests: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class Exchange:
    """One request's record, for metrics."""

    method: str
    protocol: str  # "http" | "grpc"
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    request_bytes: int = 0
    response_bytes: int = 0


class Hooks(Protocol):
    def authorize(self, request: Request) -> Decision: ...

    async def upstream(self) -> Pipe:
        """A new connection to the destination (an endpoint, if it is a Service)."""
        ...

    def record(self, exchange: Exchange) -> None: ...

    def hold(
        self, request: Request, abort: Callable[[str], None]
    ) -> AbstractContextManager[Decision]:
        """For a flow that outlives its request (a WebSocket): registered while the `with`
        lasts, `abort(reason)` if policy changes to deny it; yields its judgement now."""
        ...


class Refused(ValueError):
    """A request refused before policy; the message is the reason (for the log)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def check_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Raise Refused for the headers refused before policy (see the module doc)."""
    hosts = 0
    names = set()
    for name, _ in headers:
        if "_" in name:
            raise Refused(f"header name with underscore: {name!r}")
        hosts += name == "host"
        names.add(name)
    if hosts > 1:
        raise Refused("more than one Host header")
    if {"content-length", "transfer-encoding"} <= names:
        raise Refused("both Content-Length and Transfer-Encoding")


def trusted_client(xff: str | None, peer: str, trusted_hops: int) -> str:
    """The client address Envoy's original IP detection yields with `use_remote_address` and
    `xff_num_trusted_hops` = `trusted_hops`: the address that many hops from the right of
    X-Forwarded-For, else (too few, or not an IP) the peer's. Left of it, anyone may write."""
    if trusted_hops <= 0 or not xff:
        return peer
    hops = [h.strip() for h in xff.split(",")]
    if len(hops) < trusted_hops:
        return peer
    candidate = hops[-trusted_hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer


def policy_request(
    flow: Flow,
    method: str,
    target: str,
    authority: str,
    headers: Iterable[tuple[str, str]],
    *,
    absolute: bool = True,
) -> Request:
    """What L7 policy sees of one request (names lower-case; repeats joined with ","), whose
    `target` and `host` are what the upstream receives. `absolute`: the absolute-form target
    is allowed (HTTP/1.1)."""
    if not method.isupper():
        raise Refused(f"method {method[:20]!r} is not upper case")
    try:
        normal = paths.normalize(method, target, flow.normalization, absolute=absolute)
    except paths.BadPath as exc:
        raise Refused(f"request target {target[:100]!r}: {exc}") from None
    pairs = list(headers)
    joined = dict(pairs)
    if len(joined) < len(pairs):  # a repeated header: its values, in order, joined
        joined = {}
        for name, value in pairs:
            joined[name] = f"{joined[name]},{value}" if name in joined else value
    return Request(
        src_ip=flow.src_ip,
        remote_ip=trusted_client(joined.get("x-forwarded-for"), flow.src_ip, flow.trusted_proxies),
        src_principal=flow.src_principal,
        dst_ip=flow.dst_ip,
        dst_port=flow.dst_port,
        method=method,
        path=normal.path,
        host=normal.authority or authority,
        headers=joined,
        target=normal.forward,
    )


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end headers: hop-by-hop ones, and those `Connection` names, removed."""
    kept, named = [], []
    for name, value in headers:
        if name not in HOP_BY_HOP:
            kept.append((name, value))
        elif name == "connection":
            named += [token.strip().lower() for token in value.split(",")]
    return [(n, v) for n, v in kept if n not in named] if named else kept


def protocol_of(headers: Iterable[tuple[str, str]]) -> str:
    """Istio's `request_protocol`: grpc for a gRPC content type, else http."""
    for name, value in headers:
        if name == "content-type" and value.startswith("application/grpc"):
            return "grpc"
    return "http"
